"""The epoch loop every resumable trainer runs through: resume, time budget, atomic checkpoints, thread count.

One copy decides how a trained folder resumes: `load_checkpoint` reads and checks `checkpoint.pt`,
`EpochRun` restores the modules and RNGs from it, hands out the epochs the time budget has room for and
writes the checkpoint after each one (temp file + rename, never half-written). The trainer keeps its epoch
body (the batches, the progress bar, the loss) and its log lines.

It lives at the package top, below every trainer (`icg.users` is a lower layer than `icg.training`, so the
user encoder could not import `icg.training.loop`), and imports nothing of ICG but `atomic` and `errors`.
`icg.training.loop` re-exports all of it, as it always exported these names.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from icg.atomic import atomic_path
from icg.errors import DataError


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
    *,
    global_rng: bool = True,
) -> tuple[int, list, float]:
    """Load `modules` (state-dict key → object with load_state_dict), `generators` (key → Generator) and,
    with `global_rng`, torch's global RNG from a checkpoint, in that order; → (start epoch, history,
    seconds before; 0.0 for a checkpoint that never counted them).

    With no checkpoint (`state` None) nothing is loaded: → (0, [], 0.0), a fresh run."""
    if state is None:
        return 0, [], 0.0
    for name, obj in modules.items():
        obj.load_state_dict(state[name])
    for name, generator in generators.items():
        generator.set_state(state[name])
    if global_rng:
        torch.set_rng_state(state["torch_rng"])
    log.info("resuming %s from epoch %d of %d", out, state["epoch"], epochs)
    return state["epoch"], list(state["history"]), state.get("seconds", 0.0)


def epoch_checkpoint(
    fmt: str,
    fingerprint: str,
    epoch: int,
    modules: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
    history: list,
    seconds: float,
    *,
    global_rng: bool = True,
    **extra: object,
) -> dict[str, object]:
    """The checkpoint dict, keys in this order: format, fingerprint, epoch, each module's state_dict, each
    generator's state, torch_rng (with `global_rng`), history, `extra`, seconds (what `restore` reads)."""
    state: dict[str, object] = {"format": fmt, "fingerprint": fingerprint, "epoch": epoch}
    state |= {name: obj.state_dict() for name, obj in modules.items()}
    state |= {name: generator.get_state() for name, generator in generators.items()}
    if global_rng:
        state["torch_rng"] = torch.get_rng_state()
    return state | {"history": history, **extra, "seconds": seconds}


def torch_save_atomic(path: Path, obj: object) -> None:
    """`torch.save` through a temporary file renamed onto `path`: never a half-written checkpoint or cache."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ------------------------------------------------------------------------------------------ time budget
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


# ---------------------------------------------------------------------------------------------- the loop
class EpochRun:
    """An epoch loop's bookkeeping, written once for every resumable trainer: resume from the checkpoint
    (`restore`), hand out the epochs that early stopping and the time budget leave (`__iter__`), time each
    one (`lap`) and save the checkpoint after it (`save`).

        run = EpochRun(logger, out, epochs, time.perf_counter(), max_minutes)
        history = run.restore(state, {"model": model, "optimizer": optimizer}, {"sampler_rng": sampler})
        for epoch in run:
            history.append({"epoch": epoch + 1, "loss": train_one_epoch()})
            logger.info("epoch %d (%.0fs)", epoch + 1, run.lap())
            run.save(out / "checkpoint.pt", FORMAT, fingerprint, epoch + 1)

    `started` is this call's `time.perf_counter()` at its start. `epochs_in_log` False words the budget
    warning without the total ("at epoch 3"). `global_rng` False keeps torch's global RNG out of the
    checkpoint, for trainers that seed every epoch themselves. `until` (early stopping) ends the loop when it
    returns True, checked before each epoch and before the time budget."""

    def __init__(
        self, log: logging.Logger, out: Path, epochs: int, started: float, max_minutes: float | None,
        *, epochs_in_log: bool = True, global_rng: bool = True, until: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self.log, self.out, self.epochs = log, out, epochs
        self.started, self.max_minutes, self.epochs_in_log = started, max_minutes, epochs_in_log
        self.global_rng, self.until = global_rng, until
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
            state, modules, generators, self.log, self.out, self.epochs, global_rng=self.global_rng
        )
        return self.history

    def __iter__(self) -> Iterator[int]:
        """The epochs (0-based) to run in this call; none once `until` says so or another would overrun
        the budget."""
        total = self.epochs if self.epochs_in_log else None
        for epoch in range(self.start, self.epochs):
            if self.until is not None and self.until():
                return
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
        """Write the checkpoint after `epoch` (1-based) atomically: modules, generators, RNG, history,
        `extra`."""
        state = epoch_checkpoint(
            fmt, fingerprint, epoch, self.modules, self.generators, self.history, self.seconds(),
            global_rng=self.global_rng, **extra,
        )  # fmt: skip
        torch_save_atomic(path, state)


def epoch_counts(history: Sequence[Mapping[str, Any]], epochs: int) -> dict[str, object]:
    """metrics.json's epochs, epochs_completed and completed (from the last history record's "epoch")."""
    done = history[-1]["epoch"] if history else 0
    return {"epochs": epochs, "epochs_completed": done, "completed": done == epochs}
