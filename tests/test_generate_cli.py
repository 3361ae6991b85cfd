"""`icg generate` end to end on the tiny preset: outputs, sidecars, bad input, nothing half-written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icg.cli import main
from icg.testing import materialize_tiny_preset


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_preset(tmp_path_factory.mktemp("presets") / "tiny")


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run `icg ARGS` in this process through the real entry point; return its exit code."""
    monkeypatch.setattr(sys, "argv", ["icg", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_generate_items_by_id_and_file_for_users_and_profiles(
    preset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cover = tmp_path / "cover.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(cover)
    out = tmp_path / "out"
    args = ["generate", "--preset", preset_dir, "--out", out, "--steps", "1", "--seed", "3"]
    args += ["--item-id", "1", "--title", "My Movie", "--image", cover]
    args += ["--user-id", "1", "--profile", "a 30-year-old female writer"]
    assert run_cli(args, monkeypatch) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 * 2  # (file item, dataset item) × (user 1, profile)
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in pngs]
    assert {s["title"] for s in sidecars} == {"My Movie", "Toy Story"}
    first = sidecars[0]
    for key in ("explicit_prompt", "seed", "num_inference_steps", "guidance_scale", "preset", "adapter_hash"):
        assert key in first
    assert first["model_ids"]["adapter"].endswith("adapter") and first["num_inference_steps"] == 1
    index = (out / "index.html").read_text()
    assert all(p.name in index for p in pngs) and "Toy Story" in index


def test_generate_takes_a_profile_that_only_states_a_taste(
    preset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold-start user may say what they like instead of who they are (issue 18)."""
    out = tmp_path / "out"
    args = ["generate", "--preset", preset_dir, "--out", out, "--steps", "1", "--item-id", "1"]
    assert run_cli([*args, "--profile", "a horror fan", "--profile", "loves romance"], monkeypatch) == 0
    assert len(sorted(out.glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--title", "X", "--image", "missing.png"], "missing.png"),
        (["--title", "X", "--image", "not-an-image.txt"], "not-an-image.txt: not an image"),
        (["--title", "  ", "--image", "ok.png"], "empty"),
        (["--title", "X"], "--image"),
        (["--item-id", "999999"], "unknown item id"),
        (["--item-id", "1", "--user-id", "no-such-user"], "unknown user id"),
        (["--item-id", "1", "--profile", ""], "--profile is empty"),
        (["--item-id", "1", "--user-id", "1", "--user-scale", "-1"], "--user-scale: must be in [0, 10]"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    preset_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-an-image.txt").write_text("hello")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    out = tmp_path / "out"
    code = run_cli(["generate", "--preset", preset_dir, "--out", out, "--steps", "1", *extra], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_dataset_items_carry_the_title_as_the_cover_prints_it():
    from icg.generate import dataset_item

    assert dataset_item("ml-100k", "12", size=64).title == "The Usual Suspects"


def test_generate_user_scale_reaches_the_cover_and_its_sidecar(
    preset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["generate", "--preset", preset_dir, "--steps", "1", "--item-id", "1"]
    assert run_cli([*base, "--out", tmp_path / "none"], monkeypatch) == 0
    assert (
        run_cli([*base, "--out", tmp_path / "off", "--user-id", "1", "--user-scale", "0"], monkeypatch) == 0
    )
    assert (
        run_cli([*base, "--out", tmp_path / "two", "--user-id", "1", "--user-scale", "2"], monkeypatch) == 0
    )
    (off,), (none,), (two,) = (sorted((tmp_path / d).glob("*.png")) for d in ("off", "none", "two"))
    assert json.loads(off.with_suffix(".json").read_text())["user_scale"] == 0.0
    assert json.loads(two.with_suffix(".json").read_text())["user_scale"] == 2.0
    same = np.asarray(Image.open(off)), np.asarray(Image.open(none))
    assert np.array_equal(*same) and not np.array_equal(np.asarray(Image.open(two)), same[0])
