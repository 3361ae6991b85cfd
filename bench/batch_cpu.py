"""Benchmark (CPU): covers/s of `icg batch` beside plain loops calling CoverPipeline, same weights, same run.

Workload: the first `--items` ml-100k items × `--segments` user segments (k-means over all ml-100k users'
U_pre from the preset's user encoder), `--steps` DDIM steps, guidance 7, 64² covers written as PNG.

Methods (each writes every cover to its own folder):
- loop/pair: `pipe([item], [user], seed=...)` once per (item, segment), the segment stood for by its medoid
  user (the user nearest the centroid: the pipeline takes users, not embeddings). The MLLM runs K times per
  item: what a naive script does.
- loop/item: `pipe([item], K medoid users)` once per item: the MLLM once per item, K covers per call.
- batch/local: `run_batch(executor="local")`: the job's stages in this process, one batch after another.
- batch/ray: `run_batch(executor="ray")` on a local Ray (`ray.init(num_cpus=2)`, timed on its own): the
  context actor and the generation actor run side by side, one torch thread each.
- batch/ray-2gen: the same with `generation_workers=2` (the second generation actor gets the context
  actor's CPU once the context stage is done).
Loop timings leave out the pipeline load; batch timings are the whole `run_batch` call (inputs, segments,
resume scan, model loads in the workers, manifest), since that is what a user waits for. "steady" is the
rate after the first cover file is written (file mtimes; the covers written in the same burst as the first
one are left out): throughput once the models are loaded and the first batch is through.

    .venv/bin/python bench/batch_cpu.py [--items 24] [--segments 4] [--steps 15] [--threads 1]
        [--methods loop/pair,loop/item,batch/local,batch/ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icg.batch.inputs import load_items, load_users  # noqa: E402
from icg.batch.job import BatchConfig, run_batch  # noqa: E402
from icg.batch.segments import build_segments  # noqa: E402
from icg.batch.stages import item_image  # noqa: E402
from icg.batch.writer import pair_seed  # noqa: E402
from icg.loading import adapter_hash, load_cover_pipeline  # noqa: E402
from icg.pipeline import CoverItem, CoverUser  # noqa: E402
from icg.presets import get_preset  # noqa: E402

METHODS = ("loop/pair", "loop/item", "batch/local", "batch/ray", "batch/ray-2gen")


def machine_line(threads: int) -> str:
    """CPU model, cores visible, torch threads, versions and the load average right now."""
    import ray

    cpu = "?"
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()} | {cpu} | {cores} cores visible | torch threads {threads} | "
        f"Python {platform.python_version()} | torch {torch.__version__} | ray {ray.__version__} | "
        f"load avg {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    torch.set_num_threads(args.threads)
    spec = get_preset(args.preset)
    steps = args.steps or spec.num_inference_steps
    print(f"machine: {machine_line(args.threads)}")
    print(f"workload: preset {spec.name}, {args.items} items × {args.segments} segments, {steps} steps")

    work = Path(tempfile.mkdtemp(prefix="icg-batch-bench-"))
    items = load_items("ml-100k", max_items=args.items)
    users = load_users("ml-100k")
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    segments = build_segments(
        pipe.user_encoder, adapter_hash(spec.user_encoder), users, args.segments, 0, work / "segments"
    )
    medoids = segments.assignments.loc[segments.assignments.groupby("segment")["distance"].idxmin()]
    medoid_users = [CoverUser(user_id=u) for u in medoids.sort_values("segment")["user_id"]]
    cover_items = [
        CoverItem(r.title, item_image(r.item_id, r.image_path, r.render_title, r.genres, r.year), r.item_id)
        for r in items.itertuples()
    ]
    n_covers = len(items) * segments.k
    common = {"num_inference_steps": steps, "guidance_scale": spec.guidance_scale,
              "max_prompt_tokens": spec.explicit_prompt_tokens}  # fmt: skip
    results: dict[str, dict[str, float | str]] = {}

    def record(name: str, seconds: float, folder: Path, note: str) -> None:
        stamps = sorted(p.stat().st_mtime for p in folder.rglob("*.png"))
        assert len(stamps) == n_covers, f"{name}: {len(stamps)} covers written, expected {n_covers}"
        first_burst = sum(t <= stamps[0] + 0.05 for t in stamps)  # covers written with the first one
        steady = (len(stamps) - first_burst) / max(stamps[-1] - stamps[0], 1e-9)
        results[name] = {"covers": n_covers, "seconds": seconds, "covers_per_s": n_covers / seconds,
                         "steady_covers_per_s": steady, "note": note}  # fmt: skip
        print(
            f"  {name}: {seconds:.1f} s, {n_covers / seconds:.2f} covers/s, steady {steady:.2f}", flush=True
        )

    if "loop/pair" in methods:
        folder, start = work / "loop-pair", time.perf_counter()
        folder.mkdir()
        for item in cover_items:
            for s, user in enumerate(medoid_users):
                seed = pair_seed(0, item.item_id, s)
                pipe([item], [user], seed=seed, **common).images[0].save(folder / f"{item.item_id}-{s}.png")
        record(
            "loop/pair", time.perf_counter() - start, folder, "pipe() per (item, segment); MLLM K× per item"
        )
    if "loop/item" in methods:
        folder, start = work / "loop-item", time.perf_counter()
        folder.mkdir()
        for item in cover_items:
            for s, image in enumerate(pipe([item], medoid_users, seed=0, **common).images):
                image.save(folder / f"{item.item_id}-{s}.png")
        record(
            "loop/item", time.perf_counter() - start, folder, "pipe() per item, K users; MLLM once per item"
        )
    del pipe

    base = {"preset": args.preset, "segments": args.segments, "max_items": args.items,
            "num_inference_steps": steps, "threads": args.threads, "progress": False}  # fmt: skip
    if "batch/local" in methods:
        result = run_batch(BatchConfig(out=str(work / "local"), executor="local", **base))
        assert result.generated == n_covers
        record("batch/local", result.seconds, work / "local", "same stages, one process, no Ray")
    ray_runs = {"batch/ray": 1, "batch/ray-2gen": 2}
    if any(m in methods for m in ray_runs):
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - start
        for name, workers in ray_runs.items():
            if name in methods:
                folder = work / name.replace("/", "-")
                config = BatchConfig(out=str(folder), executor="ray", generation_workers=workers, **base)
                result = run_batch(config)
                assert result.generated == n_covers
                note = f"{workers} generation actor(s); ray.init ({init:.1f} s) not included"
                record(name, result.seconds, folder, note)
        ray.shutdown()

    print("\n| method | covers | seconds | covers/s | steady covers/s | note |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['covers']} | {r['seconds']:.1f} | {r['covers_per_s']:.2f} | "
            f"{r['steady_covers_per_s']:.2f} | {r['note']} |"
        )
    print(f"\noutputs under {work}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_line(args.threads), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
