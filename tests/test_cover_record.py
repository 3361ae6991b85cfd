"""One cover, three surfaces: `icg generate`'s sidecar, the service's cache entry and answer, and the batch
job's sidecar and manifest row carry the same `CoverRecord` (`icg.cover_record`), under the same keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from icg.batch.job import BatchConfig, run_batch
from icg.batch.writer import MANIFEST_COLUMNS
from icg.cli import main
from icg.cover_record import CORE_FIELDS, RunInfo, cover_record
from icg.data.movielens import load_ml100k
from icg.loading import load_cover_pipeline
from icg.presets import get_preset, tiny_preset
from icg.serve import create_app

USER_FIELDS = ("user_id", "profile")  # a batch cover is made for a segment, not a user


def core(surface: dict[str, Any], name: str) -> dict[str, Any]:
    """The record as `surface` says it; every core field must be there, under its own name."""
    missing = [k for k in CORE_FIELDS if k not in surface]
    assert not missing, f"{name} lacks core fields {missing}"
    return {k: surface[k] for k in CORE_FIELDS}


def test_a_record_has_every_core_field_and_takes_the_run_info() -> None:
    meta = {"item_id": "7", "title": "Heat", "explicit_prompt": "a poster", "prompt": "a poster, dark",
            "user_id": "3", "profile": None, "image_index": 1, "seed": 12, "num_inference_steps": 4,
            "guidance_scale": 7, "user_scale": 0.5, "scheduler": "DDIMScheduler"}  # fmt: skip
    run = RunInfo("tiny", {"adapter": "a/b"}, "0123456789abcdef", 20)
    record = cover_record(meta, run)
    fields = record.fields()
    assert tuple(fields) == CORE_FIELDS and "scheduler" not in fields
    assert fields["guidance_scale"] == 7.0 and isinstance(fields["guidance_scale"], float)
    assert (fields["preset"], fields["adapter_hash"]) == ("tiny", run.adapter_hash)
    assert fields["max_prompt_tokens"] == 20 and fields["user_id"] == "3" and fields["image_index"] == 1
    assert fields["item_source"] == "dataset"
    assert cover_record({**meta, "item_id": None}, run).item_source == "file"  # title + image
    fields["model_ids"]["adapter"] = "changed"  # a surface that edits its dict changes no record
    assert record.model_ids == run.model_ids == {"adapter": "a/b"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("record-presets") / "tiny"
    tiny_preset(folder)
    return folder


def _generate_sidecar(preset: Path, out: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    args = ["icg", "generate", "--preset", preset, "--out", out, "--steps", "1", "--seed", seed]
    monkeypatch.setattr(sys, "argv", [*map(str, args), "--item-id", "1", "--user-id", "1"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    (png,) = out.glob("*.png")
    return json.loads(png.with_suffix(".json").read_text())


def test_generate_serve_and_batch_say_the_same_record(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_preset(str(tiny_dir))  # as each surface reads it
    # the batch job: item 1 for one segment; its seed is the pair's, so the other two are given it
    out = tmp_path / "batch"
    run_batch(BatchConfig(out=str(out), preset=str(tiny_dir), segments=1, max_items=1, max_users=20,
                          num_inference_steps=1, executor="local", progress=False))  # fmt: skip
    (row,) = pd.read_parquet(out / "manifest.parquet").to_dict("records")
    batch = json.loads((out / row["path"]).with_suffix(".json").read_text())
    seed = int(row["seed"])

    generated = _generate_sidecar(tiny_dir, tmp_path / "generate", seed, monkeypatch)

    form = {"item_id": "1", "user_id": "1", "seed": str(seed), "steps": "1", "format": "json"}
    app = create_app(
        load_cover_pipeline(spec), spec=spec, dataset=load_ml100k(), cache_dir=tmp_path / "cache"
    )
    with TestClient(app) as client:
        answer = client.post("/v1/covers", data=form)
        assert answer.status_code == 200, answer.text
        answer = answer.json()
        assert client.get(f"/v1/covers/{answer['id']}/metadata").json() == {**answer, "cached": True}
    entry = app.state.cache.metadata(answer["id"])

    record = core(generated, "generate's sidecar")
    assert record["item_id"] == "1" and record["user_id"] == "1" and record["seed"] == seed
    assert record["adapter_hash"] and record["max_prompt_tokens"] and record["model_ids"]["adapter"]
    assert core(entry, "the service's cache entry") == record
    assert "model_ids" not in answer  # the server's model folders stay on the server
    assert core({**answer, "model_ids": record["model_ids"]}, "the service's answer") == record
    no_user = {**record, **dict.fromkeys(USER_FIELDS)}
    assert core(batch, "the batch sidecar") == no_user and batch["segment"] == 0
    shared = [c for c in MANIFEST_COLUMNS if c in CORE_FIELDS]
    assert {c: row[c] for c in shared} == {c: no_user[c] for c in shared}
