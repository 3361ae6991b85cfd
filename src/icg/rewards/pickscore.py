"""PickScore_v1 (Kirstain et al., 2023): a transformers CLIP-H fine-tuned on Pick-a-Pic preferences.

Layout: a plain transformers `CLIPModel` folder (`yuvalkirstain/PickScore_v1`) and a `CLIPProcessor` folder
(the official code takes it from `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; pass `processor_path` when the
model folder holds no processor files). Score = logit_scale.exp() · cos(image, text), ≈ 20–23 for real
images (the official script then softmaxes over candidate images of one prompt; we return the logits).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from icg.rewards.base import RewardLoss, Users
from icg.rewards.clip_score import CLIPEncoder, CLIPEncoderReward, load_clip_encoder


class PickScoreReward(CLIPEncoderReward):
    """logit_scale.exp() · cos(CLIP image, CLIP text), batched, differentiable w.r.t. the images."""

    name = "pickscore"
    frozen = True
    # logits are 100× a cosine: 0.01 brings the gradient to the cosine scale of HPSv2 / CLIP (our choice).
    default_loss = RewardLoss("linear", scale=0.01)

    def __init__(self, encoder: CLIPEncoder) -> None:
        super().__init__()
        if encoder.tokenizer is None:
            raise ValueError("PickScore needs the processor's tokenizer; load the encoder with a tokenizer")
        self.encoder = encoder

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        img = self.encoder.image_features(images)  # (B, D)
        txt = self.encoder.text_features(texts)  # (B, D), no graph
        return self.encoder.logit_scale.float().exp() * (img * txt).sum(-1)  # (B,)


def load_pickscore(
    path: str | Path,
    *,
    processor_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> PickScoreReward:
    """PickScore from a local CLIPModel folder (+ a CLIPProcessor folder, default: the same folder)."""
    return PickScoreReward(load_clip_encoder(path, processor_path, dtype=dtype))
