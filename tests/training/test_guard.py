"""Reward-hacking guard: the verdict rule, and a tiny run that hacks a reward its judges disagree with."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from icg.loading import load_cover_pipeline
from icg.rewards.base import Reward
from icg.training.adapter import AdapterTrainConfig, checkpoints, train_adapter
from icg.training.guard import TRAIN, GuardMonitor, GuardRule, Judge, SsimJudge, paired_t

pytest_plugins = ["tests.training.test_adapter_training"]  # the tiny preset `parts` and `data` fixtures


def test_paired_t():
    assert paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == math.inf  # the same shift everywhere
    assert paired_t([1.0, 2.0], [1.0, 2.0]) == 0.0
    t = paired_t([1.1, 2.3, 2.9, 4.2], [1.0, 2.0, 3.0, 4.0])
    assert 0 < t < 3
    with pytest.raises(ValueError, match="paired_t"):
        paired_t([1.0], [1.0])


def _monitor(**rule) -> GuardMonitor:
    return GuardMonitor(GuardRule(**rule), {"judge": True, "distance": False})


BASE = {TRAIN: [0.0, 0.1, 0.2, 0.3], "judge": [1.0, 1.1, 1.2, 1.3], "distance": [0.5, 0.5, 0.6, 0.6]}


def _shift(scores: dict, **by: float) -> dict:
    """Each score moved by `by[name]`, plus a zero-mean jitter (a real rerun is never bit-identical)."""
    return {
        k: [v + by.get(k, 0.0) + 0.01 * (-1) ** i for i, v in enumerate(vals)] for k, vals in scores.items()
    }


def test_flags_only_a_rising_reward_with_falling_judges():
    monitor = _monitor()
    assert not monitor.record(0, BASE)["flagged"]
    # the reward rises and the judges agree (judge up, distance down): fine
    assert not monitor.record(1, _shift(BASE, train_reward=1.0, judge=0.5, distance=-0.2))["flagged"]
    # the reward rises, the distance to the reference grows (a lower-is-better judge falls): flagged
    check = monitor.record(2, _shift(BASE, train_reward=1.0, distance=0.3))
    assert check["flagged"] and check["falling"] == ["distance"]
    # judges fall but the training reward did not rise: not reward hacking, just a bad run
    assert not monitor.record(3, _shift(BASE, judge=-1.0))["flagged"]
    # significant but negligible: a consistent drop of 1 % of the step-0 spread does not count
    tiny = _monitor(min_effect=0.1)
    tiny.record(0, BASE)
    nudged = {k: [v - 0.001 if k == "judge" else v + (1.0 if k == TRAIN else 0.0) for v in vals]
              for k, vals in BASE.items()}  # fmt: skip
    assert tiny.record(1, nudged)["falling"] == []
    # min_falling = 2 needs both judges down
    strict = _monitor(min_falling=2)
    strict.record(0, BASE)
    assert not strict.record(1, _shift(BASE, train_reward=1.0, judge=-1.0))["flagged"]
    assert strict.record(2, _shift(BASE, train_reward=1.0, judge=-1.0, distance=1.0))["flagged"]
    with pytest.raises(ValueError, match="lacks scores"):
        strict.record(3, {TRAIN: [0.0, 1.0]})


def test_stops_after_patience_flagged_checks_in_a_row_only_when_asked():
    hacked = _shift(BASE, train_reward=1.0, judge=-1.0)
    for stop, expected in ((False, False), (True, True)):
        monitor = _monitor(stop=stop, patience=2)
        monitor.record(0, BASE)
        monitor.record(1, hacked)
        assert not monitor.should_stop
        monitor.record(2, hacked)
        assert monitor.should_stop is expected
    monitor = _monitor(stop=True, patience=2)
    for step, scores in enumerate((BASE, hacked, BASE, hacked)):  # not in a row
        monitor.record(step, scores)
    assert not monitor.should_stop and monitor.summary()["flagged_steps"] == [1, 3]
    with pytest.raises(ValueError, match="patience"):
        GuardRule(patience=0)


class Brightness(Reward):
    """A reward the tiny adapter can raise quickly: the mean pixel value."""

    name = "brightness"
    needs_texts = False

    def _score(self, images, texts, users):
        return images.mean((1, 2, 3))


class Darkness(Judge):
    """A judge that disagrees with Brightness."""

    name = "darkness"

    def __call__(self, images, inputs):
        return 1.0 - images.mean((1, 2, 3))


class AlsoBrightness(Darkness):
    name = "also_brightness"

    def __call__(self, images, inputs):
        return images.mean((1, 2, 3))


FAST = dict(batch_size=2, num_inference_steps=3, stop_window=1, max_prompt_tokens=8, lambda_hps=0.0,
            lambda_pick=0.0, lambda_rec=0.0, lambda_per=1.0, checkpoint_every=100, sample_every=0, lr=5e-2,
            gradient_checkpointing=False, guard_every=2)  # fmt: skip


def test_guard_stops_a_run_that_hacks_its_reward(parts, data, tmp_path):
    pipe = load_cover_pipeline(parts["spec"])
    config = AdapterTrainConfig(steps=12, guard_stop=True, guard_patience=2, **FAST)
    metrics = train_adapter(
        pipe, {"personalized": Brightness()}, data, tmp_path / "run", config, progress=False,
        held_out=data, judges=[Darkness(), SsimJudge()],
    )  # fmt: skip
    guard = metrics["guard"]
    assert metrics["stopped_by_guard"] and not metrics["completed"], guard
    assert metrics["steps_completed"] < 12 and not (tmp_path / "run" / "adapter").exists()
    assert guard["checks"][0]["step"] == 0 and len(guard["flagged_steps"]) >= 2
    first, last = guard["checks"][0]["means"], guard["checks"][-1]["means"]
    assert last[TRAIN] > first[TRAIN] and last["darkness"] < first["darkness"]
    # the checks live in the checkpoint's trainer state, per sample, for an exact resume
    step, folder = checkpoints(tmp_path / "run")[-1]
    state = json.loads((folder / "trainer_state.json").read_text())
    assert step == metrics["steps_completed"] and len(state["guard"]) == len(guard["checks"])
    assert len(state["guard"][0]["scores"]["darkness"]) == len(data)
    # a run whose last step is the guard's stop is not complete either: no adapter/
    pipe = load_cover_pipeline(parts["spec"])
    exact = dataclasses.replace(config, steps=metrics["steps_completed"])
    options = {"held_out": data, "judges": [Darkness(), SsimJudge()], "progress": False}
    again = train_adapter(pipe, {"personalized": Brightness()}, data, tmp_path / "exact", exact, **options)
    assert (
        again["stopped_by_guard"] and not again["completed"] and not (tmp_path / "exact" / "adapter").exists()
    )


def test_guard_stays_quiet_when_the_judges_agree_and_resumes_its_checks(parts, data, tmp_path):
    pipe = load_cover_pipeline(parts["spec"])
    config = AdapterTrainConfig(steps=6, guard_stop=True, **FAST)
    run = dict(held_out=data, judges=[AlsoBrightness()], progress=False)
    first = train_adapter(
        pipe, {"personalized": Brightness()}, data, tmp_path / "run", config, max_steps=4, **run
    )
    assert len(first["guard"]["checks"]) == 3  # steps 0, 2, 4
    pipe = load_cover_pipeline(parts["spec"])
    metrics = train_adapter(pipe, {"personalized": Brightness()}, data, tmp_path / "run", config, **run)
    assert metrics["completed"] and not metrics["stopped_by_guard"]
    assert [c["step"] for c in metrics["guard"]["checks"]] == [0, 2, 4, 6]
    assert metrics["guard"]["flagged_steps"] == []
    assert "guard/also_brightness" in metrics["history"][1]


def test_guard_needs_held_out_samples_and_judges(parts, data, tmp_path):
    pipe = load_cover_pipeline(parts["spec"])
    config = AdapterTrainConfig(steps=1, **FAST)
    with pytest.raises(ValueError, match="held_out"):
        train_adapter(pipe, {"personalized": Brightness()}, data, tmp_path, config, judges=[Darkness()])
    with pytest.raises(ValueError, match="unique"):
        train_adapter(pipe, {"personalized": Brightness()}, data, tmp_path, config, held_out=data,
                      judges=[Darkness(), Darkness()])  # fmt: skip
    assert AdapterTrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="guard_stop"):
        AdapterTrainConfig(guard_stop="yes")
    assert torch.is_tensor(data.covers)


def test_preset_guard_uses_the_judge_reward_ssim_and_lpips_miniclip(parts, data, tmp_path):
    import dataclasses

    from icg.errors import ICGError
    from icg.training.adapter import train_adapter_from_preset
    from icg.training.guard import default_judges

    spec = dataclasses.replace(
        parts["spec"],
        clip=str(parts["clip"]),
        reward_model=str(parts["reward"]),
        reward_judge=str(parts["reward"]),
    )
    fast = {**FAST, "lr": 1e-3, "lambda_rec": 0.25, "max_prompt_tokens": 77}
    config = AdapterTrainConfig(steps=2, **fast)
    judges = default_judges(spec.reward_judge, spec.clip)
    assert [j.name for j in judges] == ["judge_personalized", "ssim", "LPIPS-miniCLIP"]
    held = data.subset(3, seed=1)
    assert len(held) == 3 and held.item_ids == data.item_ids
    metrics = train_adapter_from_preset(spec, data, tmp_path / "run", config, progress=False,
                                        held_out=held, judges=judges)  # fmt: skip
    checks = metrics["guard"]["checks"]
    assert [c["step"] for c in checks] == [0, 2] and set(checks[0]["means"]) == {
        TRAIN,
        *[j.name for j in judges],
    }
    assert 0 < checks[0]["means"]["ssim"] <= 1 and checks[0]["means"]["LPIPS-miniCLIP"] > 0
    with pytest.raises(ICGError, match="held-out samples"):
        train_adapter_from_preset(spec, data, tmp_path / "other", config)


def test_guard_markdown_lists_every_check():
    from icg.training.guard import guard_markdown

    monitor = _monitor(stop=True, patience=1)
    monitor.record(0, BASE)
    monitor.record(10, _shift(BASE, train_reward=1.0, judge=-1.0))
    text = guard_markdown(monitor.summary())
    assert "| judge ↑ | distance ↓ |" in text and "| 10 |" in text and "**yes** | judge |" in text
    assert "Stopped by the guard" in text
