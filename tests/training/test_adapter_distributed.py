"""Multi-process adapter training is ONE data-parallel training: 2 CPU processes (torchrun, gloo) with batch
2 each give the adapter of 1 process with batch 4, and rank 0 alone writes the run's files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import icg
from icg.presets import tiny_preset
from icg.testing import tiny_clip_model

WORKER = Path(__file__).with_name("ddp_adapter_worker.py")
STEPS = 2


def _worker():
    spec = importlib.util.spec_from_file_location("ddp_adapter_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parts(root: Path) -> dict[str, str]:
    """The tiny preset, a tiny CLIP folder (the CLIP reward) and a tiny personalized reward folder."""
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel

    tiny_preset(root / "tiny")
    clip, processor = tiny_clip_model()
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reward = PersonalizedRewardModel(
            PersonalizedRewardConfig(hidden_size=16, num_heads=2), clip, processor
        )
    reward.save_pretrained(root / "reward")
    return {"spec": str(root / "tiny"), "clip": str(root / "clip"), "reward": str(root / "reward")}


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tmp_path):
    parts = _parts(tmp_path)
    job = {**parts, "steps": STEPS}
    (tmp_path / "ddp.json").write_text(json.dumps({**job, "out": str(tmp_path / "ddp"), "batch_size": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(icg.__file__).parents[1])}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launch, str(WORKER), str(tmp_path / "ddp.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    previous = torch.get_num_threads()
    try:
        one = _worker().run({**job, "out": str(tmp_path / "one"), "batch_size": 4})
    finally:
        torch.set_num_threads(previous)
    assert one["num_processes"] == 1

    ddp = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert ddp["completed"] and ddp["num_processes"] == 2
    # the logged losses are the global batch's: the mean over both processes
    for a, b in zip(ddp["history"], one["history"], strict=True):
        assert a["loss/total"] == pytest.approx(b["loss/total"], rel=1e-4, abs=1e-6)
    got, want = (load_file(str(tmp_path / run / "adapter/adapter.safetensors")) for run in ("ddp", "one"))
    assert got.keys() == want.keys()
    start = load_file(str(Path(parts["spec"]) / "adapter/adapter.safetensors"))
    assert any(not torch.equal(want[k], start[k]) for k in want)  # the adapter did train
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    # rank 0 alone wrote: one file per checkpoint / sample step, no staging or temporary leftovers
    names = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*"))
    assert [n for n in names if n.startswith("checkpoints/") and n.count("/") == 1] == [
        "checkpoints/step-1", "checkpoints/step-2"]  # fmt: skip
    assert [n for n in names if n.startswith("samples/")] == [f"samples/step-{s:06d}.png" for s in range(3)]
    assert not [n for n in names if n.endswith(".tmp") or ".partial" in n]


def test_a_launch_that_gave_one_process_says_so(monkeypatch, caplog):
    """`accelerate launch` with a MULTI_CPU config, no mpirun: MASTER_ADDR set, no WORLD_SIZE, 1 process."""
    from icg.training.adapter import warn_if_alone

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING", logger="icg.training.adapter"):
        warn_if_alone(1)
    assert "only process" in caplog.text and "torchrun" in caplog.text
    caplog.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")
    warn_if_alone(2)
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("WORLD_SIZE")
    warn_if_alone(1)
    assert caplog.text == ""
