"""The batch job's stages and resume logic without Ray (the `local` executor runs the same stage classes)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from icg.batch.inputs import load_items
from icg.batch.job import BatchConfig, run_batch
from icg.batch.stages import generation_pipeline, item_image
from icg.errors import DataError, ICGError
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser

ITEMS, K = 3, 2


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(tiny_dir, out, **changes) -> BatchConfig:
    base = {"out": str(out), "preset": str(tiny_dir), "segments": K, "max_items": ITEMS, "max_users": 30,
            "num_inference_steps": 2, "executor": "local", "generation_batch_size": 4,
            "progress": False}  # fmt: skip
    return BatchConfig(**{**base, **changes})


def test_covers_from_embeddings_reproduces_the_pipeline(tiny_spec) -> None:
    torch.manual_seed(0)
    pipe = load_cover_pipeline(tiny_spec)
    row = load_items("ml-100k", max_items=1).iloc[0]
    item = CoverItem(
        row["title"], item_image(row["item_id"], "", row["render_title"], row["genres"], row["year"])
    )
    users = [CoverUser(user_id="1"), CoverUser(user_id="7")]
    steps, seed = 2, 11
    expected = pipe([item], users, num_inference_steps=steps, seed=seed, output_type="pt",
                    max_prompt_tokens=tiny_spec.explicit_prompt_tokens)  # fmt: skip
    prompts, context = pipe.context_encoder.encode_items(
        [item.image], [item.title], max_new_tokens=tiny_spec.explicit_prompt_tokens
    )
    gen = generation_pipeline(
        tiny_spec, torch.device("cpu"), torch.float32
    )  # no MLLM in the generation actors
    assert gen.context_encoder is None
    got = gen.covers_from_embeddings(
        prompts * 2, context.repeat(2, 1, 1), pipe.encode_users(users), [seed, seed + 1], steps, 7.0
    )
    torch.testing.assert_close(got, expected.images, atol=1e-5, rtol=1e-5)
    assert [m["seed"] for m in expected.metadata] == [seed, seed + 1]


def test_local_job_writes_covers_manifest_and_skips_complete_covers(tiny_dir, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_batch(config(tiny_dir, out))
    assert (result.generated, result.skipped) == (ITEMS * K, 0)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == ITEMS * K and not manifest.duplicated(["item_id", "segment"]).any()
    assert set(manifest["segment"]) == set(range(K)) and manifest["item_id"].nunique() == ITEMS
    for row in manifest.itertuples():
        file = out / row.path
        assert row.checksum == sha256(file) and row.path == f"covers/{row.item_id}/segment-{row.segment}.png"
        assert json.loads(file.with_suffix(".json").read_text())["checksum"] == row.checksum
        assert Image.open(file).size == (64, 64) and row.preset == "tiny" and row.prompt
    assert manifest["seed"].nunique() == ITEMS * K  # one deterministic seed per (item, segment)
    assert len(pd.read_parquet(out / "segments" / "users.parquet")) == 30
    assert not list((out / "manifest" / "parts").glob("*"))  # merged into manifest.parquet

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("covers/*/*.png")}
    again = run_batch(config(tiny_dir, out))
    assert (again.generated, again.skipped) == (0, ITEMS * K)
    assert {p: p.stat().st_mtime_ns for p in out.glob("covers/*/*.png")} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), manifest)

    # damage: a cover deleted, one corrupted, a temp file and a stale duplicate part left by a killed run
    first, second = manifest["path"].iloc[0], manifest["path"].iloc[3]
    (out / first).unlink()
    (out / second).write_bytes(b"not a png")
    (out / "covers" / "1" / ".segment-0.png.abc.tmp").write_bytes(b"half")
    (out / "manifest" / "parts").mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(out / "manifest" / "parts" / "part-stale.parquet")
    keep = out / manifest["path"].iloc[1]
    stamp = keep.stat().st_mtime_ns
    repaired = run_batch(config(tiny_dir, out))
    assert (repaired.generated, repaired.skipped) == (2, ITEMS * K - 2)
    assert keep.stat().st_mtime_ns == stamp and not list(out.rglob("*.tmp"))
    final = pd.read_parquet(out / "manifest.parquet")
    assert len(final) == ITEMS * K and not final.duplicated(["item_id", "segment"]).any()
    assert all(r.checksum == sha256(out / r.path) for r in final.itertuples())

    with pytest.raises(ICGError, match="another job.*num_inference_steps"):
        run_batch(config(tiny_dir, out, num_inference_steps=3))


def test_user_scale_reaches_the_covers_and_is_part_of_the_job(tiny_dir, tmp_path) -> None:
    covers = {}
    for scale in (0.0, 1.0):
        out = tmp_path / f"scale{scale}"
        assert run_batch(config(tiny_dir, out, max_items=1, user_scale=scale)).generated == K
        files = [out / path for path in pd.read_parquet(out / "manifest.parquet")["path"]]
        assert {json.loads(f.with_suffix(".json").read_text())["user_scale"] for f in files} == {scale}
        covers[scale] = [f.read_bytes() for f in files]  # the same seeds at both scales
    assert all(a != b for a, b in zip(covers[0.0], covers[1.0], strict=True))
    with pytest.raises(ICGError, match="another job.*user_scale"):
        run_batch(config(tiny_dir, tmp_path / "scale0.0", max_items=1))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ICGError, match="user-scale"):
            config(tiny_dir, out, user_scale=bad)


def test_table_items_and_webp_covers(tiny_dir, tmp_path) -> None:
    for n, colour in enumerate(((200, 30, 30), (20, 40, 220))):
        Image.new("RGB", (48, 64), colour).save(tmp_path / f"ref{n}.png")
    table = tmp_path / "items.csv"
    table.write_text("title,image_path\nRed Planet,ref0.png\nBlue Moon,ref1.png\n", encoding="utf-8")
    items = load_items(str(table))
    assert items["item_id"].tolist() == ["0", "1"] and items["image_path"].str.endswith("ref0.png").iloc[0]
    out = tmp_path / "out"
    result = run_batch(config(tiny_dir, out, items=str(table), segments=1, image_format="webp"))
    assert result.generated == 2
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["path"].tolist() == ["covers/0/segment-0.webp", "covers/1/segment-0.webp"]
    assert Image.open(out / manifest["path"].iloc[0]).format == "WEBP"

    table.write_text("title,image_path\nGone,missing.png\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing.png"):
        load_items(str(table))
    with pytest.raises(ICGError, match="format"):
        config(tiny_dir, out, image_format="gif")


def test_the_same_job_runs_on_a_flux_preset(tmp_path) -> None:
    from icg.presets import tiny_flux_preset

    folder = tmp_path / "tiny-flux"
    tiny_flux_preset(folder)
    out = tmp_path / "out"
    result = run_batch(config(folder, out, max_items=2))
    assert (result.generated, result.skipped) == (2 * K, 0)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 2 * K and set(manifest["preset"]) == {"tiny-flux"}
    assert all(Image.open(out / p).size == (32, 32) for p in manifest["path"])
