"""Shared parts: differentiable preprocessing geometry, loss helpers, the weighted combiner, the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

import icg.rewards as rewards_pkg
from icg.rewards import (
    ImageSpec,
    Reward,
    RewardLoss,
    RewardTerm,
    Users,
    WeightedRewards,
    load_reward,
    negative_reward,
    preprocess,
    refl_loss,
    register_reward,
)

ZERO_ONE = ImageSpec(size=(32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation


def test_preprocess_at_native_size_only_normalises() -> None:
    x = torch.rand(2, 3, 32, 32)
    spec = ImageSpec(size=(32, 32))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(preprocess(x, spec), (x - mean) / std, atol=0, rtol=0)


def test_pad_mode_keeps_the_whole_image_centred_on_black() -> None:
    """HPS's ResizeMaxSize: longest side to 32, aspect kept, zero padding split, extra on the far side."""
    x = torch.ones(1, 3, 64, 32)  # tall: → (32, 16), padded 8 left / 8 right
    out = preprocess(x, ImageSpec(size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), mode="pad"))
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out[..., :, 8:24], torch.ones(1, 3, 32, 16))
    assert out[..., :, :8].abs().max() == 0 and out[..., :, 24:].abs().max() == 0
    odd = preprocess(
        torch.ones(1, 3, 32, 19), ImageSpec(size=(32, 32), mode="pad", mean=(0,) * 3, std=(1,) * 3)
    )
    assert (odd[0, 0, 0] > 0.5).nonzero().flatten().tolist() == list(range(6, 25))  # 13 → 6 left, 7 right


def test_crop_mode_resizes_the_short_side_then_takes_the_centre() -> None:
    rows = torch.arange(41, dtype=torch.float32).div(41).view(1, 1, 41, 1).expand(1, 3, 41, 32)
    out = preprocess(rows.contiguous(), ZERO_ONE)  # short side already 32: 9 extra rows, crop rows 4..35
    torch.testing.assert_close(out, rows[..., 4:36, :])
    grey = preprocess(torch.full((1, 3, 96, 64), 0.5), ZERO_ONE)  # (96, 64) → (48, 32) → crop
    torch.testing.assert_close(grey, torch.full((1, 3, 32, 32), 0.5))
    with pytest.raises(ValueError, match="smaller than the crop"):
        preprocess(torch.rand(1, 3, 32, 32), ImageSpec(size=(32, 32), resize=16))


def test_preprocess_is_differentiable_through_resize() -> None:
    x = torch.rand(1, 3, 50, 70, requires_grad=True)
    for mode in ("crop", "pad"):
        x.grad = None
        preprocess(x, ImageSpec(size=(32, 32), mode=mode)).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_loss_helpers() -> None:
    r = torch.tensor([0.2, 1.0, 3.0], requires_grad=True)
    torch.testing.assert_close(negative_reward(r), torch.tensor(-4.2 / 3))
    torch.testing.assert_close(negative_reward(r, scale=0.01), torch.tensor(-0.042 / 3))
    torch.testing.assert_close(RewardLoss(margin=1.0)(r), torch.tensor(1 - 4.2 / 3))
    hinge = refl_loss(r, margin=2.0, scale=0.5)  # relu(2 − r) = (1.8, 1.0, 0)
    torch.testing.assert_close(hinge, torch.tensor(0.5 * 2.8 / 3))
    hinge.backward()
    torch.testing.assert_close(r.grad, torch.tensor([-0.5 / 3, -0.5 / 3, 0.0]))  # above the margin: no pull
    with pytest.raises(ValueError, match="kind must be"):
        RewardLoss("square")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        RewardLoss(scale=float("nan"))


class Brightness(Reward):
    """Toy reward: mean pixel value (+ text length · 0.01 so text routing is observable); counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the reward a device
        self.calls = 0

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        self.calls += 1
        return images.mean(dim=(1, 2, 3)) + 0.01 * torch.tensor([len(t) for t in texts])


def test_weighted_rewards_sum_switches_and_routing() -> None:
    a, b, c = Brightness(), Brightness(), Brightness()
    terms = {
        "a": RewardTerm(a, weight=0.25),
        "b": RewardTerm(b, weight=0.5, loss=RewardLoss("hinge", scale=2.0, margin=1.0)),
        "c": RewardTerm(c, enabled=False),
    }
    objective = WeightedRewards(terms)
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = objective(images, {"a": ["x", "xyz"], "b": ["", ""]})
    r_a = images.mean(dim=(1, 2, 3)) + torch.tensor([0.01, 0.03])
    r_b = images.mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.scores["a"], r_a)
    torch.testing.assert_close(out.total, 0.25 * -r_a.mean() + 0.5 * 2.0 * (1.0 - r_b).clamp(min=0).mean())
    assert c.calls == 0 and set(out.losses) == {"a", "b"}  # a disabled term is not evaluated
    out.total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    objective.set_enabled("c", True)
    objective.set_enabled("a", False)
    out = objective(images, ["p", "q"])
    assert set(out.scores) == {"b", "c"} and c.calls == 1
    with pytest.raises(ValueError, match="no entry for reward 'c'"):
        objective(images, {"b": ["p", "q"]})
    with pytest.raises(ValueError, match="unknown reward term 'z'"):
        objective.set_enabled("z", True)
    for name in ("b", "c"):
        objective.set_enabled(name, False)
    with pytest.raises(ValueError, match="all reward terms are disabled"):
        objective(images, ["p", "q"])


def test_weighted_rewards_validation_and_defaults() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WeightedRewards({})
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        WeightedRewards({"a": RewardTerm(Brightness(), weight=-1.0)})
    with pytest.raises(ValueError, match="must be an icg.rewards Reward"):
        WeightedRewards({"a": RewardTerm(torch.nn.Identity())})  # type: ignore[arg-type]
    objective = WeightedRewards.from_rewards({"a": Brightness(), "b": Brightness()})
    assert objective.weights == {"a": 0.25, "b": 0.25}  # paper §3.4.2
    assert list(dict(objective.named_modules())) == [
        "",
        "rewards",
        "rewards.a",
        "rewards.b",
    ]  # .to() moves them


def test_registry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown reward 'imagereward'; available: aesthetic, clip, hpsv2"):
        load_reward("imagereward", tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("hpsv2", lambda path, **kw: Brightness())
    seen: list[tuple[Path, dict]] = []

    def loader(path: Path, **kw: object) -> Reward:
        seen.append((path, kw))
        return Brightness()

    register_reward("toy", loader)
    try:
        assert isinstance(load_reward("toy", tmp_path, alpha=1), Brightness)
        assert seen == [(tmp_path, {"alpha": 1})]
        assert "toy" in rewards_pkg.available_rewards()
    finally:
        rewards_pkg._LOADERS.pop("toy")
