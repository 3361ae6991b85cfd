"""The study folder: anonymized files, a manifest only the server reads, and refusal of unsafe manifests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from icg.errors import DataError
from icg.rating.study import load_study, make_study


def test_make_study_anonymizes_files(study):
    assert study.methods == ["methodalpha", "methodbeta", "methodgamma"]
    assert len(study.images) == 12 and len(study.by_id) == 12
    files = sorted(p.name for p in (study.root / "images").iterdir())
    assert len(files) == 12
    for image in study.images:
        assert re.fullmatch(r"[0-9a-f]{16}", image.id)
        assert image.file == f"images/{image.id}.png"
        assert all(m not in image.file for m in study.methods)
        with Image.open(study.root / image.file) as png:
            assert png.format == "PNG" and png.size == (256, 256)  # the default study size
            assert not png.text  # no metadata chunks that could name the method
    manifest = json.loads((study.root / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["name"] == "unit"
    # item/user/caption are kept per image, in the order given for each method
    alpha = {img.item: img.caption for img in study.images if img.method == "methodalpha"}
    assert alpha == {f"item{k}": f"Movie number {k}" for k in range(4)}


def test_reloaded_study_equals_made(study):
    again = load_study(study.root)
    assert again.images == study.images and again.seed == study.seed


def test_make_study_refuses_existing_folder(study):
    with pytest.raises(DataError, match="already exists"):
        make_study(study.root, {"x": [Image.new("RGB", (8, 8))]})


def test_make_study_checks_label_lengths(tmp_path):
    with pytest.raises(DataError, match=r"items\['a'\] has 1 entries for 2 images"):
        make_study(tmp_path / "s", {"a": [Image.new("RGB", (8, 8))] * 2}, items={"a": ["only-one"]})


def test_path_of_never_joins_ids(study):
    assert study.path_of("../../etc/passwd") is None
    assert study.path_of("images") is None
    some = study.images[0]
    assert study.path_of(some.id) == study.root / some.file


def _write_manifest(root, rows):
    (root / "manifest.json").write_text(json.dumps({"version": 1, "name": "t", "seed": 1, "images": rows}))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "NOT-HEX!", "file": "images/a.png", "method": "m"}, "bad id"),
        ({"id": "abcdef0123", "file": "../outside.png", "method": "m"}, "outside the study folder"),
        ({"id": "abcdef0123", "file": "/etc/passwd", "method": "m"}, "outside the study folder"),
        ({"id": "abcdef0123", "file": "images/missing.png", "method": "m"}, "missing"),
        ({"id": "abcdef0123", "file": "images/ours_icg.png", "method": "icg"}, "reveals the method"),
        ({"id": "abcdef0123", "file": "images/a.png", "method": ""}, "empty method"),
    ],
)
def test_load_study_rejects_bad_rows(tmp_path, row, message):
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "images" / "ours_icg.png")
    (tmp_path / "outside.png").write_bytes(b"x")
    _write_manifest(root, [row])
    with pytest.raises(DataError, match=message):
        load_study(root)


def test_load_study_rejects_duplicates_and_missing_manifest(tmp_path):
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no manifest"):
        load_study(root)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    row = {"id": "abcdef0123", "file": "images/a.png", "method": "m"}
    _write_manifest(root, [row, row])
    with pytest.raises(DataError, match="listed twice"):
        load_study(root)


def test_csv_manifest(tmp_path):
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    (root / "manifest.csv").write_text(
        "id,file,method,item,user,caption\nabcdef0123,images/a.png,m,7,3,Heat\n"
    )
    study = load_study(root)
    assert study.images[0].method == "m" and study.images[0].caption == "Heat" and study.seed == 0


def test_covers_are_one_size_and_written_in_shuffled_order(tmp_path, monkeypatch):
    """Issue 19, defect 1: sizes differ per method and files were written method by method."""
    import icg.rating.study as study_module

    written: list[str] = []
    real = study_module.atomic_path

    def recording(path):
        written.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(study_module, "atomic_path", recording)
    sizes = {"small": (16, 16), "mid": (40, 30), "large": (96, 96)}
    images = {m: [Image.new("RGB", size, (k * 20, 0, 0)) for k in range(8)] for m, size in sizes.items()}
    made = make_study(tmp_path / "s", images, size=48, raters=3)
    for image in made.images:
        with Image.open(made.root / image.file) as png:
            assert png.size == (48, 48) and png.format == "PNG"
    order = [made.by_id[name.removesuffix(".png")].method for name in written if name.endswith(".png")]
    assert order == [image.method for image in made.images]  # written in the manifest's shuffled order
    blocks = 1 + sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert blocks > 3  # not method by method (3 blocks); chance of a false failure < 1e-9
    assert len(made.invites) == 3 and len(set(made.invites.values())) == 3
