"""`icg batch`: covers for a catalogue — items × user segments — on Ray Data, resumable after a kill.

    items ──map_batches(ContextStage, actor pool)──▶ item + P_exp + C_ref        (once per item)
          ──flat_map(expand_segments)──────────────▶ (item, segment) rows still to make
          ──map_batches(GenerateStage, actor pool, GPUs when present)──▶ encoded covers
          ──map_batches(write_batch)───────────────▶ files + manifest parts ──▶ manifest.parquet (driver)

`ray.init()` starts a local Ray on this machine; `address=` joins a running cluster (the output folder must
then be on storage every node sees). The `local` executor runs the same stages in this process, one batch
after another: for machines without Ray and for comparisons.

Before anything runs, the output folder is checked: `job.json` records what the covers depend on (preset,
steps, guidance, seed, format, segments), and a rerun with other settings is refused rather than mixing
covers of two jobs. Complete covers are found (`icg.batch.manifest.complete_rows`) and only the missing
(item, segment) pairs are generated. One job per output folder at a time (an flock on `out/.lock`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icg.atomic import write_text_atomic
from icg.batch.inputs import is_table, load_items, load_users
from icg.batch.manifest import MANIFEST_NAME, clean_temp_files, complete_rows, merge_manifest, part_files
from icg.batch.segments import Segments, build_segments, segment_inputs, segments_fingerprint
from icg.batch.stages import FORMATS, ContextStage, GenerateStage
from icg.batch.writer import expand_segments, object_column, write_part
from icg.cover_record import RunInfo
from icg.errors import ICGError
from icg.json_config import JsonConfig

logger = logging.getLogger(__name__)

EXECUTORS = ("ray", "local")
DTYPES = ("float32", "float16", "bfloat16")
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "ICG_HOME")


@dataclass(frozen=True)
class BatchConfig(JsonConfig):
    """One batch job. Generation settings left None take the preset's defaults."""

    json_sort_keys = True  # its files were always written with sorted keys

    out: str
    items: str = "ml-100k"  # a dataset name or a .parquet/.csv table (title, image_path [, item_id])
    users: str | None = None  # a dataset name or a table (user_id [, profile]); default: the items' dataset
    dataset_path: str | None = None  # folder of a dataset that needs one (ml-1m, …)
    preset: str = "mini"
    segments: int = 8
    seed: int = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    adapter_scale: float | None = None
    user_scale: float = (
        1.0  # personalization strength: 0 = context only (the segment is ignored), 1 = as trained
    )
    image_format: str = "png"
    max_items: int | None = None
    max_users: int | None = None
    executor: str = "ray"
    address: str | None = None
    context_workers: int = 1
    generation_workers: int = 1
    context_batch_size: int = 8
    generation_batch_size: int = 4
    threads: int | None = 1  # torch threads per worker (None: leave torch's default)
    # GPUs per generation / context actor; None: 0.5 each when the cluster has GPUs (one of each shares a
    # card, so neither pool can starve the other), else 0
    gpus_per_worker: float | None = None
    context_gpus_per_worker: float | None = None
    torch_dtype: str = "float32"
    speed: bool | None = None  # icg.speed options in the generation actors; None: on a GPU only
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("segments", "context_workers", "generation_workers", "context_batch_size",
                    "generation_batch_size")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ICGError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("num_inference_steps", "max_items", "max_users", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ICGError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.guidance_scale is not None and not (
            np.isfinite(self.guidance_scale) and self.guidance_scale >= 0
        ):
            raise ICGError(f"guidance must be a finite number ≥ 0, got {self.guidance_scale}")
        if isinstance(self.user_scale, bool) or not (
            isinstance(self.user_scale, int | float) and np.isfinite(self.user_scale) and self.user_scale >= 0
        ):
            raise ICGError(f"user-scale must be a finite number ≥ 0, got {self.user_scale!r}")
        choices = (("format", self.image_format, FORMATS), ("executor", self.executor, EXECUTORS),
                   ("dtype", self.torch_dtype, DTYPES))  # fmt: skip
        for name, value, allowed in choices:
            if value not in allowed:
                raise ICGError(f"{name} must be one of {list(allowed)}, got '{value}'")
        for name in ("gpus_per_worker", "context_gpus_per_worker"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ICGError(f"{name.replace('_', '-')} must be ≥ 0, got {value}")


@dataclass(frozen=True)
class BatchResult:
    """What a run did: `generated` new covers, `skipped` complete ones, `manifest` the merged table."""

    manifest: Path
    items: int
    segments: int
    generated: int
    skipped: int
    seconds: float

    @property
    def covers_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def _folder_lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ICGError(f"{out}: another batch job is writing to this folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _job_identity(
    config: BatchConfig, spec, run: RunInfo, steps: int, guidance: float, seg_fingerprint: str
) -> dict:
    """What the covers depend on; a rerun into the same folder must match it."""
    return {
        "preset": run.preset,
        "base_model": spec.base_model,
        "context_encoder": spec.context_encoder,
        "adapter_hash": run.adapter_hash,
        "segments_fingerprint": seg_fingerprint,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "adapter_scale": config.adapter_scale,
        "user_scale": float(config.user_scale),
        "seed": config.seed,
        "image_format": config.image_format,
        "torch_dtype": config.torch_dtype,
        "explicit_prompt_tokens": run.max_prompt_tokens,  # key kept: folders resume
    }


def _check_identity(out: Path, identity: dict) -> None:
    """Refuse to add covers of other settings to a folder that holds covers (a folder without covers is
    free: a run that failed before its first cover does not lock its settings in)."""
    file = out / "job.json"
    has_covers = (out / "covers").is_dir() and next((out / "covers").glob("*/segment-*"), None) is not None
    if file.is_file() and has_covers:
        saved = json.loads(file.read_text(encoding="utf-8")).get("identity", {})
        saved.setdefault("user_scale", 1.0)  # folders written before the knob existed hold covers at 1
        differs = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if differs:
            detail = ", ".join(f"{k}: {saved.get(k)!r} → {identity.get(k)!r}" for k in differs)
            raise ICGError(f"{out} holds covers of another job ({detail}); use another --out")


def run_batch(config: BatchConfig) -> BatchResult:
    """Run (or resume) the job; returns counts and the manifest path. Logs progress with `logging`."""
    from icg.loading import adapter_hash
    from icg.presets import get_preset
    from icg.users import TwoTowerModel

    start = time.perf_counter()
    out = Path(config.out).expanduser().resolve()
    spec = get_preset(config.preset)
    if spec.user_encoder is None:
        raise ICGError(f"preset '{spec.name}' has no user encoder: segments need user embeddings")
    generation = spec.generation_config().replace(
        num_inference_steps=config.num_inference_steps or None, guidance_scale=config.guidance_scale
    )  # the preset's, with the job's overrides
    steps, guidance = generation.num_inference_steps, generation.guidance_scale
    dataset_path = Path(config.dataset_path) if config.dataset_path else None
    items = load_items(config.items, dataset_path, config.max_items)
    users_source = config.users or ("ml-100k" if is_table(config.items) else config.items)
    users = load_users(users_source, dataset_path, config.max_users)
    encoder_id = adapter_hash(spec.user_encoder) or spec.user_encoder
    seg_fingerprint = segments_fingerprint(encoder_id, *segment_inputs(users), config.segments, config.seed)
    run = RunInfo.from_spec(spec)  # every cover's record shares it
    identity = _job_identity(config, spec, run, steps, guidance, seg_fingerprint)

    with _folder_lock(out):
        _check_identity(out, identity)
        clean_temp_files(out)
        encoder = TwoTowerModel.from_pretrained(spec.user_encoder)
        segments = build_segments(encoder, encoder_id, users, config.segments, config.seed, out / "segments")
        write_text_atomic(
            out / "job.json",
            json.dumps({"identity": identity, "config": json.loads(config.to_json())}, indent=2),
        )
        scanned = part_files(out)
        done = complete_rows(out, config.image_format)
        done_keys = set(zip(done["item_id"], done["segment"], strict=True))
        pending = {
            item: [s for s in range(segments.k) if (item, s) not in done_keys] for item in items["item_id"]
        }
        todo = items.assign(segments=[pending[i] for i in items["item_id"]])
        todo = todo[todo["segments"].map(len) > 0].reset_index(drop=True)
        n_pending = int(todo["segments"].map(len).sum())
        skipped = len(items) * segments.k - n_pending
        logger.info(
            "batch: %d items × %d segments; %d covers complete, %d to generate",
            len(items), segments.k, skipped, n_pending,
        )  # fmt: skip
        frames: list[pd.DataFrame] = []
        if n_pending:
            stages = _stage_args(config, spec, run, segments, steps, guidance, str(out))
            execute = _run_ray if config.executor == "ray" else _run_local
            frames = execute(config, todo, stages, str(out))
        generated = sum(len(f) for f in frames)
        rows = merge_manifest(out, [done, *frames], items["item_id"].tolist(), scanned)
    have = set(zip(rows["item_id"], rows["segment"], strict=True))
    missing = [(i, s) for i in items["item_id"] for s in range(segments.k) if (i, s) not in have]
    if missing:
        raise ICGError(f"{out}: {len(missing)} covers are missing after the run, e.g. {missing[0]}; rerun")
    return BatchResult(
        out / MANIFEST_NAME, len(items), segments.k, generated, skipped, time.perf_counter() - start
    )


def _stage_args(
    config: BatchConfig, spec, run: RunInfo, segments: Segments, steps: int, guidance: float, out: str
) -> dict:
    """Constructor arguments of the context and generation stages (plain data: they go to Ray actors)."""
    return {
        "context": {
            "spec_json": spec.to_json(),
            "max_prompt_tokens": run.max_prompt_tokens,
            "threads": config.threads,
        },
        "generate": {
            "spec_json": spec.to_json(),
            "centroids": segments.centroids,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "adapter_scale": config.adapter_scale,
            "user_scale": float(config.user_scale),
            "out_dir": out,
            "fmt": config.image_format,
            "threads": config.threads,
            "torch_dtype": config.torch_dtype,
            "speed": config.speed,
            "run": run,
            "item_source": "table" if is_table(config.items) else "dataset",
        },
    }


def _run_local(config: BatchConfig, todo: pd.DataFrame, stages: dict, out: str) -> list[pd.DataFrame]:
    """The same stages in this process, one batch after another (no Ray)."""
    context_stage = ContextStage(**stages["context"])
    generate_stage = GenerateStage(**stages["generate"])
    frames = []
    for start in range(0, len(todo), config.context_batch_size):
        chunk = todo.iloc[start : start + config.context_batch_size]
        batch = {c: object_column(chunk[c].tolist()) for c in chunk.columns}
        items = context_stage(batch)
        rows = []
        for n, segs in enumerate(chunk["segments"]):
            row = {k: items[k][n] for k in ("item_id", "folder", "title", "explicit_prompt", "context")}
            rows += expand_segments({**row, "segments": segs}, config.seed)
        for first in range(0, len(rows), config.generation_batch_size):
            part = rows[first : first + config.generation_batch_size]
            gen_batch = {k: object_column([r[k] for r in part]) for k in part[0]}
            gen_batch["context"] = np.stack([r["context"] for r in part])  # (B, N, D)
            frames.append(write_part(generate_stage(gen_batch), out))
            if config.progress:
                logger.info("batch: %d covers written", sum(len(f) for f in frames))
    return frames


def _ray_init(config: BatchConfig):
    import ray

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(
            address=config.address,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
            log_to_driver=config.progress,
        )
    return ray


def _run_ray(config: BatchConfig, todo: pd.DataFrame, stages: dict, out: str) -> list[pd.DataFrame]:
    """items → context actors → (item, segment) rows → generation actors (write covers) → manifest parts."""
    ray = _ray_init(config)
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = config.progress
    default_gpus = 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    gpus = default_gpus if config.gpus_per_worker is None else config.gpus_per_worker
    context_gpus = default_gpus if config.context_gpus_per_worker is None else config.context_gpus_per_worker
    size = config.context_batch_size  # one input block per context batch, so the stages stream
    ds = ray.data.from_pandas([todo.iloc[i : i + size] for i in range(0, len(todo), size)])

    # light stages ask for no CPU: the two actor pools hold the cores, and a task that waits for a core
    # an actor holds would stall the stream (a 2-core machine has exactly one core per pool)
    # each actor runs where its resources are: on its (share of a) GPU when it asked for one, else on CPU
    def actor_stage(ds, stage: type, kwargs: dict, batch_size: int, workers: int, gpus: float):
        """A pool of 1..workers actors of `stage`, each on one core and `gpus` of a GPU (on the GPU when it
        asked for one, else on the CPU): the context and generation stages differ only in these numbers."""
        return ds.map_batches(
            stage,
            fn_constructor_kwargs={**kwargs, "device": "cuda" if gpus > 0 else "cpu"},
            batch_size=batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=1,
            num_gpus=gpus,
        )

    ds = actor_stage(
        ds, ContextStage, stages["context"], config.context_batch_size, config.context_workers, context_gpus
    )
    ds = ds.flat_map(expand_segments, fn_kwargs={"seed": config.seed}, num_cpus=0)
    ds = actor_stage(
        ds, GenerateStage, stages["generate"], config.generation_batch_size, config.generation_workers, gpus
    )
    ds = ds.map_batches(
        write_part, fn_kwargs={"out_dir": out}, batch_size=None, batch_format="pandas", num_cpus=0
    )
    return list(ds.iter_batches(batch_size=None, batch_format="pandas"))
