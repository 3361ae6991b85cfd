"""`icg.fit.EpochRun`, the loop the resumable trainers share: what it adds beyond the mini trainers' needs.

(Checkpoint round trips, refusals and the time budget are in tests/training/test_loop.py, through the names
`icg.training.loop` re-exports.)"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from icg import fit

LOG = logging.getLogger("icg.test_fit")


def _toy_run(
    out: Path, epochs: int, *, global_rng: bool, stop_after: int | None = None
) -> tuple[torch.nn.Linear, list]:
    """A Linear fitted one SGD step per epoch on draws from torch's global RNG; `global_rng` False seeds each
    epoch itself, as the user encoder does. `stop_after` dies after that epoch's checkpoint."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = fit.load_checkpoint(out / "checkpoint.pt", "fp", "toy/1", "toy", "settings")
    run = fit.EpochRun(LOG, out, epochs, time.perf_counter(), None, global_rng=global_rng)
    history = run.restore(state, {"model": model, "optimizer": optimizer}, {})
    for epoch in run:
        if not global_rng:
            torch.manual_seed(1000 + epoch)
        loss = model(torch.randn(8, 3)).sub(1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"epoch": epoch + 1, "loss": loss.item()})
        run.lap()
        run.save(out / "checkpoint.pt", "toy/1", "fp", epoch + 1)
        if epoch + 1 == stop_after:
            break
    return model, history


@pytest.mark.parametrize("global_rng", [True, False])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, global_rng: bool) -> None:
    straight, straight_history = _toy_run(tmp_path / "a", 5, global_rng=global_rng)
    _toy_run(tmp_path / "b", 5, global_rng=global_rng, stop_after=2)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2
    # the global RNG is in the checkpoint only when the trainer draws from it across epochs
    assert ("torch_rng" in saved) == global_rng
    resumed, resumed_history = _toy_run(tmp_path / "b", 5, global_rng=global_rng)
    assert resumed_history == straight_history
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)


def test_until_ends_the_loop_before_the_time_budget_is_read(caplog: pytest.LogCaptureFixture) -> None:
    history: list[int] = []
    run = fit.EpochRun(LOG, Path("."), 10, time.perf_counter(), None, until=lambda: len(history) >= 3)
    for epoch in run:
        history.append(epoch)
    assert history == [0, 1, 2]

    def epochs_run(until=None) -> list[int]:
        """Epochs of a run that started "long ago": one, then its spent budget stops it."""
        run, done = fit.EpochRun(LOG, Path("."), 10, -1e9, 1.0, until=until), []
        for epoch in run:
            run.lap()
            done.append(epoch)
        return done

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert epochs_run() == [0]
    assert "time budget 1.0 min reached at epoch 1/10" in caplog.text
    caplog.clear()
    asked: list[int] = []

    def stop_after_one_epoch() -> bool:
        asked.append(1)
        return len(asked) > 1

    # early stopping is asked first: the run ends for that reason, and no budget warning says otherwise
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert epochs_run(until=stop_after_one_epoch) == [0]
        assert epochs_run(until=lambda: True) == []  # a resumed run that had already stopped early
    assert caplog.text == ""


def test_a_checkpoint_written_before_seconds_were_kept_resumes_from_zero(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    state = fit.epoch_checkpoint("fmt/1", "fp", 4, {"model": model}, {}, [{"epoch": 4}], 12.5)
    del state["seconds"]  # the reward model's checkpoints before `fit` had none
    run = fit.EpochRun(LOG, tmp_path, 6, time.perf_counter(), None)
    assert run.restore(state, {"model": torch.nn.Linear(2, 2)}, {}) == [{"epoch": 4}]
    assert (run.start, run.seconds_before) == (4, 0.0)
    assert list(run) == [4, 5]
