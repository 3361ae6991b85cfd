"""Plumbing the mini trainers share: run options, thread count, fingerprints, resume, schedule, time budget.

Moved here from `mini_clip`, `mini_vae`, `mini_unet` and `mini_context` (the adapter and reward-model trainers
use the pieces that fit them unchanged), so one copy of each piece decides how every trained folder resumes.
Nothing here names a trainer: checkpoint formats, dict keys, log texts that differ and error wording that
names the run's inputs are arguments, so each trainer's files and messages are the same as before the move.
The trainers' own loggers are passed in where a message is logged: tests and users filter on their names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icg.atomic import atomic_path
from icg.data.covers.render import items_genres
from icg.data.splits import ItemSplit, split_items
from icg.errors import DataError
from icg.json_config import JsonConfig  # noqa: F401  (trainer configs have always found it here)


# -------------------------------------------------------------------------------------------- configs
def check_positive_ints(config: object, names: Iterable[str]) -> None:
    """Each field in `names` must be an int >= 1 (not a bool)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ------------------------------------------------------------------------------------------ run options
def check_run_options(max_minutes: float | None = None, **counts: int | None) -> None:
    """`max_minutes` must be None or > 0; each of `counts` (threads, max_steps, …) None or a positive int."""
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set for the block (None: left as is), restored afterwards.

    Bit-identical resume needs the same count in every call of a run; on a shared machine 1 thread is
    often several times faster than 2 busy-waiting ones.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


# ----------------------------------------------------------------------------------------- checkpoints
def load_checkpoint(
    path: Path, fingerprint: str, fmt: str, what: str, inputs: str, *, resume: bool = True
) -> dict | None:
    """`torch.load` a trainer's checkpoint.pt and check its format string and fingerprint; None when
    `resume` is False or there is no file (a fresh run).

    `what` names the model in the wrong-format message ("mini-CLIP"); `inputs` lists what the fingerprint
    covers in the mismatch message ("items or config").
    """
    if not (resume and path.is_file()):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise DataError(f"cannot read checkpoint ({exc}); delete it or pass resume=False", path=path) from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise DataError(f"not a {what} checkpoint; delete it or pass resume=False", path=path)
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path} belongs to a run with other {inputs}; use another out_dir or resume=False")
    return state


def restore(
    state: Mapping[str, Any] | None,
    modules: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
    log: logging.Logger,
    out: Path,
    epochs: int,
) -> tuple[int, list, float]:
    """Load `modules` (state-dict key → object with load_state_dict), `generators` (key → Generator) and
    torch's global RNG from a checkpoint, in that order; → (start epoch, history, seconds before).

    With no checkpoint (`state` None) nothing is loaded: → (0, [], 0.0), a fresh run."""
    if state is None:
        return 0, [], 0.0
    for name, obj in modules.items():
        obj.load_state_dict(state[name])
    for name, generator in generators.items():
        generator.set_state(state[name])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming %s from epoch %d of %d", out, state["epoch"], epochs)
    return state["epoch"], list(state["history"]), state["seconds"]


def epoch_checkpoint(
    fmt: str,
    fingerprint: str,
    epoch: int,
    modules: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
    history: list,
    seconds: float,
    **extra: object,
) -> dict[str, object]:
    """The checkpoint dict, keys in this order: format, fingerprint, epoch, each module's state_dict, each
    generator's state, torch_rng, history, `extra`, seconds (what `restore` reads back)."""
    state: dict[str, object] = {"format": fmt, "fingerprint": fingerprint, "epoch": epoch}
    state |= {name: obj.state_dict() for name, obj in modules.items()}
    state |= {name: generator.get_state() for name, generator in generators.items()}
    return state | {"torch_rng": torch.get_rng_state(), "history": history, **extra, "seconds": seconds}


def torch_save_atomic(path: Path, obj: object) -> None:
    """`torch.save` through a temporary file renamed onto `path`: never a half-written checkpoint or cache."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


# --------------------------------------------------------------------------------------- time and metrics
def time_is_up(started: float, durations: Sequence[float], max_minutes: float | None) -> bool:
    """True when another unit of work as long as the longest so far would overrun `max_minutes` since
    `started` (`time.perf_counter`); never before one unit has run, so every call makes progress."""
    elapsed = time.perf_counter() - started
    return max_minutes is not None and bool(durations) and elapsed + max(durations) > 60 * max_minutes


def stop_for_time(
    log: logging.Logger,
    started: float,
    epoch_seconds: Sequence[float],
    max_minutes: float | None,
    epoch: int,
    epochs: int | None = None,
) -> bool:
    """`time_is_up` between epochs, with the warning ("at epoch 3/10", or "at epoch 3" without `epochs`)."""
    if not time_is_up(started, epoch_seconds, max_minutes):
        return False
    if epochs is None:
        log.warning("time budget %.1f min reached at epoch %d; resumable", max_minutes, epoch)
    else:
        log.warning("time budget %.1f min reached at epoch %d/%d; resumable", max_minutes, epoch, epochs)
    return True


class EpochRun:
    """An epoch loop's bookkeeping, written once for the mini trainers: resume from the checkpoint
    (`restore`), hand out the epochs the time budget has room for (`stop_for_time`), time each one and save
    the checkpoint after it (`epoch_checkpoint`).

    `started` is this call's `time.perf_counter()` at its start. `epochs_in_log` False words the budget
    warning without the total ("at epoch 3"), as the context trainer always has."""

    def __init__(
        self, log: logging.Logger, out: Path, epochs: int, started: float, max_minutes: float | None,
        *, epochs_in_log: bool = True,
    ) -> None:  # fmt: skip
        self.log, self.out, self.epochs = log, out, epochs
        self.started, self.max_minutes, self.epochs_in_log = started, max_minutes, epochs_in_log
        self.start, self.history, self.seconds_before = 0, [], 0.0
        self.modules: Mapping[str, Any] = {}
        self.generators: Mapping[str, torch.Generator] = {}
        self.durations: list[float] = []
        self._tick = started

    def restore(
        self,
        state: Mapping[str, Any] | None,
        modules: Mapping[str, Any],
        generators: Mapping[str, torch.Generator],
    ) -> list:
        """Load `modules` and `generators` from the checkpoint `state` (None: a fresh run) and keep them for
        `save`; → the run's history (epoch records, restored, then appended to by the trainer)."""
        self.modules, self.generators = modules, generators
        self.start, self.history, self.seconds_before = restore(
            state, modules, generators, self.log, self.out, self.epochs
        )
        return self.history

    def __iter__(self) -> Iterator[int]:
        """The epochs (0-based) to run in this call; none once another would overrun the budget."""
        total = self.epochs if self.epochs_in_log else None
        for epoch in range(self.start, self.epochs):
            if stop_for_time(self.log, self.started, self.durations, self.max_minutes, epoch, total):
                return
            self._tick = time.perf_counter()
            yield epoch

    def elapsed(self) -> float:
        """Seconds since the current epoch began."""
        return time.perf_counter() - self._tick

    def lap(self) -> float:
        """The current epoch's seconds so far, recorded as its duration (what the budget check reads)."""
        self.durations.append(self.elapsed())
        return self.durations[-1]

    def seconds(self) -> float:
        """The run's seconds over every call so far (the checkpoint's "seconds")."""
        return self.seconds_before + time.perf_counter() - self.started

    def save(self, path: Path, fmt: str, fingerprint: str, epoch: int, **extra: object) -> None:
        """Write the checkpoint after `epoch` (1-based) atomically: modules, generators, RNG, history."""
        state = epoch_checkpoint(
            fmt, fingerprint, epoch, self.modules, self.generators, self.history, self.seconds(), **extra
        )
        torch_save_atomic(path, state)


def epoch_counts(history: Sequence[Mapping[str, Any]], epochs: int) -> dict[str, object]:
    """metrics.json's epochs, epochs_completed and completed (from the last history record's "epoch")."""
    done = history[-1]["epoch"] if history else 0
    return {"epochs": epochs, "epochs_completed": done, "completed": done == epochs}


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
