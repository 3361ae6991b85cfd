"""Plumbing the mini trainers share: config checks, items and fingerprints, schedule, metrics.

Moved here from `mini_clip`, `mini_vae`, `mini_unet` and `mini_context` (the adapter and reward-model trainers
use the pieces that fit them unchanged), so one copy of each piece decides how every trained folder resumes.
The epoch loop itself (resume, time budget, atomic checkpoints, thread count) is `icg.fit`, below every
trainer so that the user encoder runs it too; its names are re-exported here, where they always were.
Nothing here names a trainer: checkpoint formats, dict keys, log texts that differ and error wording that
names the run's inputs are arguments, so each trainer's files and messages are the same as before the move.
The trainers' own loggers are passed in where a message is logged: tests and users filter on their names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icg.data.covers.render import items_genres
from icg.data.splits import ItemSplit, split_items
from icg.fit import (  # noqa: F401  (re-exported: the mini trainers and callers have always found them here)
    EpochRun,
    check_run_options,
    epoch_checkpoint,
    epoch_counts,
    load_checkpoint,
    restore,
    stop_for_time,
    time_is_up,
    torch_save_atomic,
    torch_threads,
)
from icg.json_config import JsonConfig  # noqa: F401  (trainer configs have always found it here)


# -------------------------------------------------------------------------------------------- configs
def check_positive_ints(config: object, names: Iterable[str]) -> None:
    """Each field in `names` must be an int >= 1 (not a bool)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_schedule(config: Any) -> None:
    """`adamw_warmup_cosine`'s fields: lr and grad_clip > 0, weight_decay >= 0, warmup_fraction in [0, 1)."""
    if (
        config.lr <= 0
        or config.weight_decay < 0
        or not 0 <= config.warmup_fraction < 1
        or config.grad_clip <= 0
    ):
        raise ValueError("lr and grad_clip must be > 0, weight_decay >= 0, warmup_fraction in [0, 1)")


def check_max_items(config: Any) -> None:
    """`run_items`' `max_items`: None (every item) or at least 6, so each split gets an item."""
    if config.max_items is not None and config.max_items < 6:
        raise ValueError(f"max_items must be None or >= 6, got {config.max_items}")


# --------------------------------------------------------------------------------------- items, identity
def run_items(
    items: pd.DataFrame, config: Any, min_train: int | None = None
) -> tuple[pd.DataFrame, ItemSplit]:
    """The config's first `max_items` rows (renumbered from 0) and their seeded item split.

    `config` has max_items, seed, val_fraction and test_fraction; `min_train` (a batch size) refuses a
    split with fewer training items.
    """
    items = items if config.max_items is None else items.iloc[: config.max_items]
    items = items.reset_index(drop=True)
    split = split_items(len(items), config.seed, config.val_fraction, config.test_fraction)
    if min_train is not None and len(split.train) < min_train:
        raise ValueError(f"{len(split.train)} training items are fewer than batch_size {min_train}")
    return items, split


def items_fingerprint(items: pd.DataFrame, config: Any, *extra: str) -> str:
    """sha256 of the items' ids, titles and genres, the config's fields and `extra` digests (frozen inputs).

    The JSON list is [items, config, *extra]: with no extra it is the two-element list older runs hashed.
    """
    payload = [list(map(str, items["item_id"])), list(map(str, items["title"])), items_genres(items)]
    return hashlib.sha256(json.dumps([payload, dataclasses.asdict(config), *extra]).encode()).hexdigest()


def finished_metrics(metrics_file: Path, fingerprint: str, check: bool = True) -> dict | None:
    """The run's metrics when `metrics_file` says it completed with this fingerprint, else None.

    `check` False (resume=False, or the saved weights are missing) skips the file: None without reading it.
    """
    if not (check and metrics_file.is_file()):
        return None
    done = json.loads(metrics_file.read_text(encoding="utf-8"))
    if done.get("completed") and done.get("fingerprint") == fingerprint:
        return done
    return None


# ------------------------------------------------------------------------------------------ folders
def replace_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """`write` a sibling staging folder (`save_pretrained`), then swap it in: never a half-written folder."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


# ------------------------------------------------------------------------------------------ optimisation
def decay_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, object]]:
    """AdamW groups: `weight_decay` on ≥ 2-D weights, none on 1-D ones (biases, norms, the temperature)."""
    params = list(params)
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def warmup_steps(warmup_fraction: float, total_steps: int) -> int:
    """Linear-warmup length of `adamw_warmup_cosine`: at least one step."""
    return max(1, round(warmup_fraction * total_steps))


def warmup_cosine(step: int, warmup: int, total_steps: int) -> float:
    """LR factor: (step + 1) / warmup during the warmup, then cosine from 1 to 0 at `total_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))


def adamw_warmup_cosine(
    params: Iterable[torch.nn.Parameter], config: Any, total_steps: int, **adamw: Any
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `decay_groups` and a per-batch LambdaLR of `warmup_cosine`; `config` has lr, weight_decay
    and warmup_fraction, `adamw` holds further AdamW arguments (betas, eps)."""
    optimizer = torch.optim.AdamW(decay_groups(params, config.weight_decay), lr=config.lr, **adamw)
    warmup = warmup_steps(config.warmup_fraction, total_steps)

    def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict stores None for it, as before
        return warmup_cosine(step, warmup, total_steps)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """One update: zero the gradients, backward, clip their total norm to `grad_clip`, step, step the LR."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()


# ----------------------------------------------------------------------------------------------- metrics
def split_sizes(items: pd.DataFrame, split: ItemSplit) -> dict[str, int]:
    """metrics.json's n_items, n_train, n_val and n_test."""
    return {
        "n_items": len(items),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
    }


def run_seconds(
    started: float, seconds_before: float, load_start: Sequence[float], threads_key: str = "torch_threads"
) -> dict[str, object]:
    """metrics.json's timing: seconds over all calls, this call's, the thread count (under `threads_key`) and
    the 1-minute load average at the start and end of the call (`os.getloadavg()` taken at `started`)."""
    return {
        "seconds": round(seconds_before + time.perf_counter() - started, 1),
        "seconds_this_call": round(time.perf_counter() - started, 1),
        threads_key: torch.get_num_threads(),
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
