"""The trainers' shared plumbing: schedule, fingerprint and checkpoint helpers must equal the code they
replaced (trained folders resume against them); plus the run-option, budget and metrics helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from icg.data.covers.render import items_genres
from icg.data.splits import split_items
from icg.errors import DataError
from icg.training import loop


@dataclasses.dataclass(frozen=True)
class _Config:
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    max_items: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


def _old_factor(step: int, warmup_fraction: float, total_steps: int) -> float:
    """The LambdaLR factor as mini_clip/mini_vae/mini_context wrote it before the move."""
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))


def _items(n: int = 12) -> pd.DataFrame:
    rows = [(str(i + 1), f"Title {i}", ("Drama", "Comedy")[: 1 + i % 2], 1990 + i) for i in range(n)]
    return pd.DataFrame(rows, columns=["item_id", "title", "genres", "year"])


@pytest.mark.parametrize(("fraction", "total"), [(0.05, 240), (0.0, 7), (0.1, 3), (0.5, 25), (0.05, 1)])
def test_schedule_equals_the_old_formula_bit_for_bit(fraction: float, total: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    config = _Config(lr=2e-3, warmup_fraction=fraction)
    optimizer, scheduler = loop.adamw_warmup_cosine(model.parameters(), config, total, betas=(0.9, 0.98))
    for step in range(total + 3):  # a little past the end: the factor stays at 0
        expected = _old_factor(step, fraction, total)
        assert loop.warmup_cosine(step, loop.warmup_steps(fraction, total), total) == expected
        assert scheduler.get_last_lr() == [2e-3 * expected] * 2
        optimizer.step()
        scheduler.step()
    # a plain function as the lambda: the scheduler's state_dict keeps None for it, as checkpoints always had
    assert scheduler.state_dict()["lr_lambdas"] == [None, None]
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-8


def test_decay_groups_keep_the_parameter_order() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = loop.decay_groups(model.parameters(), 0.3)
    params = list(model.parameters())
    assert decay["params"] == [p for p in params if p.ndim >= 2] and decay["weight_decay"] == 0.3
    assert no_decay["params"] == [p for p in params if p.ndim < 2] and no_decay["weight_decay"] == 0.0


def test_items_fingerprint_equals_the_old_formula() -> None:
    items, config = _items(), _Config()
    payload = [list(map(str, items["item_id"])), list(map(str, items["title"])), items_genres(items)]
    old = hashlib.sha256(json.dumps([payload, dataclasses.asdict(config)]).encode()).hexdigest()
    old_extra = hashlib.sha256(json.dumps([payload, dataclasses.asdict(config), "abc"]).encode()).hexdigest()
    assert loop.items_fingerprint(items, config) == old
    assert loop.items_fingerprint(items, config, "abc") == old_extra != old


def test_run_items_take_the_first_rows_and_check_the_batch() -> None:
    items, split = loop.run_items(_items(20).iloc[2:], _Config(max_items=12))
    assert list(items.index) == list(range(12)) and items["item_id"].iloc[0] == "3"
    expected = split_items(12, 0, 0.1, 0.1)
    assert all((getattr(split, k) == getattr(expected, k)).all() for k in ("train", "val", "test"))
    with pytest.raises(ValueError, match="8 training items are fewer than batch_size 9"):
        loop.run_items(_items(), _Config(), min_train=9)


def test_checkpoint_round_trip_and_refusals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(2, 2)
    sampler = torch.Generator().manual_seed(5)
    modules, generators = {"model": model}, {"sampler_rng": sampler}
    state = loop.epoch_checkpoint("fmt/1", "fp", 3, modules, generators, [{"epoch": 3}], 1.5, extra=7)
    keys = [
        "format",
        "fingerprint",
        "epoch",
        "model",
        "sampler_rng",
        "torch_rng",
        "history",
        "extra",
        "seconds",
    ]
    assert list(state) == keys
    path = tmp_path / "checkpoint.pt"
    loop.torch_save_atomic(path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    expected = torch.rand(3, generator=sampler)
    other = torch.nn.Linear(2, 2)
    fresh = torch.Generator().manual_seed(99)
    loaded = loop.load_checkpoint(path, "fp", "fmt/1", "mini-X", "items or config")
    log = logging.getLogger("icg.test_loop")
    with caplog.at_level(logging.INFO, logger="icg.test_loop"):
        assert loop.restore(loaded, {"model": other}, {"sampler_rng": fresh}, log, tmp_path, 10) == (
            3,
            [{"epoch": 3}],
            1.5,
        )
    assert "resuming" in caplog.text and "from epoch 3 of 10" in caplog.text
    assert torch.equal(other.weight, model.weight) and torch.equal(torch.rand(3, generator=fresh), expected)

    with pytest.raises(ValueError, match="belongs to a run with other items or config"):
        loop.load_checkpoint(path, "other", "fmt/1", "mini-X", "items or config")
    with pytest.raises(DataError, match="not a mini-X checkpoint"):
        loop.load_checkpoint(path, "fp", "fmt/2", "mini-X", "items or config")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        loop.load_checkpoint(path, "fp", "fmt/1", "mini-X", "items or config")


def test_run_options_and_threads() -> None:
    loop.check_run_options(None, threads=None, max_steps=3)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        loop.check_run_options(0)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive integer or None"):
            loop.check_run_options(None, threads=bad)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), loop.torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_time_budget(caplog: pytest.LogCaptureFixture) -> None:
    started = -1e9  # "long ago"
    assert not loop.time_is_up(started, [], 1.0)  # nothing has run yet: always one epoch
    assert not loop.time_is_up(started, [1.0], None)
    assert loop.time_is_up(started, [1.0], 1.0)
    log = logging.getLogger("icg.test_loop")
    with caplog.at_level(logging.WARNING, logger="icg.test_loop"):
        assert loop.stop_for_time(log, started, [1.0], 1.0, 2, 5)
        assert loop.stop_for_time(log, started, [1.0], 1.0, 4)
    assert "reached at epoch 2/5; resumable" in caplog.text and "reached at epoch 4; resumable" in caplog.text


def test_finished_metrics_and_metric_fields(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    assert loop.finished_metrics(metrics, "fp") is None
    metrics.write_text(json.dumps({"completed": True, "fingerprint": "fp"}))
    assert loop.finished_metrics(metrics, "fp") == {"completed": True, "fingerprint": "fp"}
    assert loop.finished_metrics(metrics, "fp", check=False) is None
    assert loop.finished_metrics(metrics, "other") is None
    assert loop.epoch_counts([], 3) == {"epochs": 3, "epochs_completed": 0, "completed": False}
    assert loop.epoch_counts([{"epoch": 3}], 3)["completed"]
    items, split = loop.run_items(_items(), _Config())
    assert list(loop.split_sizes(items, split).values()) == [12, 8, 2, 2]
    timing = loop.run_seconds(0.0, 5.0, (0.5, 0.5, 0.5), threads_key="threads")
    assert list(timing) == ["seconds", "seconds_this_call", "threads", "load_average_start_end"]


def test_replace_folder_swaps_in_a_complete_folder(tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "old.txt").write_text("old")

    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "new.txt").write_text("new")

    loop.replace_folder(folder, write)
    assert [p.name for p in tmp_path.iterdir()] == ["unet"] and [p.name for p in folder.iterdir()] == [
        "new.txt"
    ]


@pytest.mark.parametrize("name", ["mini_clip.MiniClipConfig", "mini_vae.MiniVaeConfig",
                                  "mini_unet.MiniUnetConfig", "mini_context.MiniContextConfig"])  # fmt: skip
def test_the_mini_configs_refuse_a_bad_schedule_or_max_items(name: str) -> None:
    module, _, cls = name.partition(".")
    config = getattr(importlib.import_module(f"icg.training.{module}"), cls)
    config(max_items=6)
    for bad in (5, True):
        with pytest.raises(ValueError, match=f"max_items must be None or >= 6, got {bad}"):
            config(max_items=bad)
    for field, bad in (("lr", 0.0), ("grad_clip", 0.0), ("weight_decay", -0.1), ("warmup_fraction", 1.0)):
        with pytest.raises(ValueError, match="lr and grad_clip must be > 0"):
            config(**{field: bad})
