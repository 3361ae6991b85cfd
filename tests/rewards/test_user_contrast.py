"""The user-contrast wrapper keeps only what depends on which user looks at which cover."""

from __future__ import annotations

import pytest
import torch

from icg.rewards.base import Reward
from icg.rewards.user_contrast import UserContrastReward

WEIGHTS = {"a": 1.0, "b": -2.0, "c": 0.5}


class ToyReward(Reward):
    """R(u, x) = appeal(x) + generosity(u) + interaction · w_u · brightness(x)."""

    name = "personalized"
    needs_texts = False

    def __init__(self, interaction: float) -> None:
        super().__init__()
        self.interaction = interaction

    def _score(self, images, texts, users):
        brightness = images.mean(dim=(1, 2, 3))
        appeal = 3 * images[:, 0].mean(dim=(1, 2))
        generosity = torch.tensor([len(u) * 0.1 + WEIGHTS[u[0]] for u in users])
        weights = torch.tensor([WEIGHTS[u[0]] for u in users])
        return appeal + generosity + self.interaction * weights * brightness


def test_scores_are_own_minus_the_mean_of_the_batchs_other_users():
    base = ToyReward(interaction=1.0)
    images, users = torch.rand(3, 3, 8, 8), ["a", "b", "c"]
    got = UserContrastReward(base).score(images, None, users, grad=False)
    full = torch.stack([base.score(images, None, [u] * 3, grad=False) for u in users])  # (user, image)
    expected = torch.stack([full[b, b] - (full[:, b].sum() - full[b, b]) / 2 for b in range(3)])
    torch.testing.assert_close(got, expected)


def test_appeal_alone_gives_no_gradient_an_interaction_does():
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    UserContrastReward(ToyReward(interaction=0.0)).score(images, None, ["a", "b", "c"]).sum().backward()
    assert images.grad.abs().max() < 1e-6  # appeal and generosity cancel: nothing to personalize
    images.grad = None
    UserContrastReward(ToyReward(interaction=1.0)).score(images, None, ["a", "b", "c"]).sum().backward()
    assert images.grad.abs().max() > 1e-4


def test_one_sample_has_no_other_user():
    with pytest.raises(ValueError, match="at least 2 samples"):
        UserContrastReward(ToyReward(1.0)).score(torch.rand(1, 3, 8, 8), None, ["a"])


def test_the_trainer_wraps_the_personalized_reward_when_asked():
    from icg.training.adapter import AdapterTrainConfig, build_objective

    off = {"lambda_hps": 0.0, "lambda_pick": 0.0, "lambda_rec": 0.0}
    base = ToyReward(1.0)
    plain = build_objective({"personalized": base}, AdapterTrainConfig(**off))
    contrast = build_objective({"personalized": base}, AdapterTrainConfig(**off, personal_contrast=True))
    assert plain.rewards["personalized"] is base
    assert isinstance(contrast.rewards["personalized"], UserContrastReward)
    with pytest.raises(ValueError, match="personal_contrast must be a bool"):
        AdapterTrainConfig(personal_contrast=1)


def test_swap_scores_own_cover_against_the_groups_other_covers():
    from icg.rewards.user_contrast import UserSwapReward

    base = ToyReward(interaction=1.0)
    images, users = torch.rand(4, 3, 8, 8), ["a", "b", "c", "a"]  # two groups of 2
    got = UserSwapReward(base, group=2).score(images, None, users, grad=False)
    swapped = base.score(images[[1, 0, 3, 2]], None, users, grad=False)
    torch.testing.assert_close(got, base.score(images, None, users, grad=False) - swapped)
    with pytest.raises(ValueError, match="groups of 2"):
        UserSwapReward(base, group=2).score(images[:3], None, users[:3])
    with pytest.raises(ValueError, match="at least 2"):
        UserSwapReward(base, group=1)
