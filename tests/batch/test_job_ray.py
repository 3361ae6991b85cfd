"""`icg batch` on Ray: a job killed with SIGKILL mid-run resumes without duplicates, gaps or regeneration.

One local Ray (2 CPUs) serves the session; the killed job runs as its own driver process joined to it with
--address, as a job on a cluster would, and the rerun runs in this process against the same Ray.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from icg.batch.job import BatchConfig, run_batch

ITEMS, K, STEPS = 5, 3, 10  # 10 steps at batch size 1: ~0.3 s per cover, a window to kill the job in


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_covers(out: Path) -> dict[Path, int]:
    """Cover files present (each has its sidecar: the writer writes the sidecar first) → mtime."""
    return {p: p.stat().st_mtime_ns for p in out.glob("covers/*/segment-*.png")}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_exactly_once(ray_address, tiny_dir, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--out", out, "--preset", tiny_dir, "--segments", K, "--max-items", ITEMS, "--max-users", 30,
            "--steps", STEPS, "--context-batch-size", ITEMS, "--generation-batch-size", 1,
            "--address", ray_address, "--quiet"]  # fmt: skip
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        job = subprocess.Popen(
            [sys.executable, "-m", "icg.batch.cli", *map(str, args)], stdout=sink, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while len(complete_covers(out)) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    time.sleep(2)  # Ray ends the dead driver's actors and tasks
    before = complete_covers(out)
    assert 0 < len(before) < ITEMS * K, f"kill did not land mid-run:\n{log.read_text()[-3000:]}"
    assert not (out / "manifest.parquet").exists()

    config = BatchConfig(out=str(out), preset=str(tiny_dir), segments=K, max_items=ITEMS, max_users=30,
                         num_inference_steps=STEPS, context_batch_size=ITEMS, generation_batch_size=2,
                         address=ray_address, progress=False)  # fmt: skip
    result = run_batch(config)
    assert result.skipped == len(before) and result.generated == ITEMS * K - len(before)
    assert {p: complete_covers(out)[p] for p in before} == before  # complete covers were not rewritten

    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == ITEMS * K and not manifest.duplicated(["item_id", "segment"]).any()
    assert all(sorted(group) == list(range(K)) for _, group in manifest.groupby("item_id")["segment"])
    assert all(row.checksum == sha256(out / row.path) for row in manifest.itertuples())
    assert len(complete_covers(out)) == ITEMS * K and not list(out.rglob("*.tmp"))
    assert not list((out / "manifest" / "parts").glob("*.parquet"))
