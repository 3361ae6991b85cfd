"""Rewards for reward-feedback training (paper §3.4): one protocol, four public rewards, a weighted sum.

    reward = load_reward("hpsv2", "HPS_v2.1_compressed.pt")           # open_clip ViT-H-14
    reward = load_reward("pickscore", "PickScore_v1/", processor_path="CLIP-ViT-H-14-laion2B/")
    reward = load_reward("clip", "clip-vit-large-patch14/")   # cosine; scale=100: torchmetrics range
    reward = load_reward("aesthetic", "sac+logos+ava1-l14-linearMSE.pth", clip_path="clip-vit-large-patch14/")
    scores = reward.score(images, texts)            # images (B, 3, H, W) in [0, 1] → (B,), differentiable
    objective = WeightedRewards.from_rewards({"hpsv2": r_h, "pickscore": r_p})   # λ = 0.25 each
    objective.optimize(device)      # speed options (RewardSpeed): bf16 towers, text cache, ... on CUDA
    out = objective(images, texts, users); out.total.backward(); log(out.log_values())

Everything loads from local paths only. Other rewards (the personalized reward model) plug in by
subclassing `Reward` and, to be reachable by name, `register_reward(name, loader)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from icg.rewards.aesthetic import AestheticHead, AestheticReward, load_aesthetic
from icg.rewards.base import (
    ImageSpec,
    Reward,
    RewardBreakdown,
    RewardCheckpointError,
    RewardLoss,
    RewardTerm,
    Users,
    WeightedRewards,
    check_inputs,
    negative_reward,
    preprocess,
    refl_loss,
)
from icg.rewards.clip_score import CLIPEncoder, CLIPSimilarityReward, load_clip_encoder, load_clip_similarity
from icg.rewards.fast import RewardSpeed
from icg.rewards.hpsv2 import HPSv2Reward, load_hpsv2
from icg.rewards.personalized import PersonalizedRewardModel, load_personalized_reward
from icg.rewards.pickscore import PickScoreReward, load_pickscore

RewardLoader = Callable[..., Reward]  # (path, **kw) → Reward

_LOADERS: dict[str, RewardLoader] = {
    "hpsv2": load_hpsv2,
    "pickscore": load_pickscore,
    "clip": load_clip_similarity,
    "aesthetic": load_aesthetic,
    "personalized": load_personalized_reward,
}


def available_rewards() -> list[str]:
    return sorted(_LOADERS)


def register_reward(name: str, loader: RewardLoader, *, overwrite: bool = False) -> None:
    """Make `load_reward(name, path, **kw)` call `loader(path, **kw)`."""
    if name in _LOADERS and not overwrite:
        raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
    _LOADERS[name] = loader


def load_reward(name: str, path: str | Path, **kwargs: object) -> Reward:
    """Load a reward by name from a local path; keyword arguments go to that reward's loader."""
    if name not in _LOADERS:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
    return _LOADERS[name](path, **kwargs)


__all__ = [
    "AestheticHead",
    "AestheticReward",
    "CLIPEncoder",
    "CLIPSimilarityReward",
    "HPSv2Reward",
    "PersonalizedRewardModel",
    "ImageSpec",
    "PickScoreReward",
    "Reward",
    "RewardBreakdown",
    "RewardCheckpointError",
    "RewardLoader",
    "RewardLoss",
    "RewardSpeed",
    "RewardTerm",
    "Users",
    "WeightedRewards",
    "available_rewards",
    "check_inputs",
    "load_aesthetic",
    "load_clip_encoder",
    "load_clip_similarity",
    "load_hpsv2",
    "load_pickscore",
    "load_reward",
    "negative_reward",
    "preprocess",
    "refl_loss",
    "register_reward",
]
