"""LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor): an MLP over CLIP ViT-L/14.

Layout of the official head (`sac+logos+ava1-l14-linearMSE.pth`): a state dict of `MLP.layers` =
Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1),
Linear(64, 16), Linear(16, 1) — keys `layers.{0,2,4,6,7}.{weight,bias}`. Its input is the L2-normalised CLIP
ViT-L/14 image embedding (768); here that CLIP is a transformers `CLIPModel` folder
(`openai/clip-vit-large-patch14`, the same weights as OpenAI's `clip.load("ViT-L/14")`). Scores ≈ 1–10.
The head's widths are read from the file, so a tiny CLIP with a matching tiny head loads the same way; a
head whose input width differs from the CLIP's projection dim is a ValueError. Texts are not used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from icg.rewards.base import Reward, RewardCheckpointError, RewardLoss, Users, load_strict, read_state_file
from icg.rewards.clip_score import CLIPEncoder, load_clip_encoder

logger = logging.getLogger(__name__)

LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")
OFFICIAL_WIDTHS = (768, 1024, 128, 64, 16, 1)


class AestheticHead(nn.Module):
    """The official MLP, same module names so its state dict loads strictly; widths[0] = CLIP embed dim."""

    def __init__(self, widths: tuple[int, ...] = OFFICIAL_WIDTHS) -> None:
        super().__init__()
        if len(widths) != 6 or widths[-1] != 1:
            raise ValueError(f"aesthetic head widths must be 6 numbers ending in 1, got {widths}")
        w = widths
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.Dropout(0.2),
            nn.Linear(w[1], w[2]),
            nn.Dropout(0.2),
            nn.Linear(w[2], w[3]),
            nn.Dropout(0.1),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )

    @property
    def input_size(self) -> int:
        return self.layers[0].in_features

    def forward(self, embeds: Tensor) -> Tensor:
        return self.layers(embeds).squeeze(-1)  # (B, D) → (B,)


def head_widths(state: Mapping[str, Tensor], path: Path) -> tuple[int, ...]:
    """Layer widths from the official key layout; anything else is a RewardCheckpointError naming the file."""
    expected = {f"{k}.{p}" for k in LINEAR_KEYS for p in ("weight", "bias")}
    if set(state) != expected:
        raise RewardCheckpointError(
            f"{path}: not a LAION aesthetic head: expected keys {sorted(expected)}, got {sorted(state)[:10]}"
        )
    weights = [state[f"{k}.weight"] for k in LINEAR_KEYS]
    if any(w.ndim != 2 for w in weights):
        raise RewardCheckpointError(f"{path}: aesthetic head weights must be 2-D matrices")
    return (weights[0].shape[1], *(int(w.shape[0]) for w in weights))


class AestheticReward(Reward):
    """Predicted LAION aesthetic score (1–10) of each image; `texts` and `users` are accepted and ignored."""

    name = "aesthetic"
    frozen = True
    needs_texts = False
    default_loss = RewardLoss("linear", scale=0.1)  # scores span ~1–10: 0.1 brings them to a unit range

    def __init__(self, encoder: CLIPEncoder, head: AestheticHead) -> None:
        super().__init__()
        embed_dim = encoder.model.config.projection_dim
        if head.input_size != embed_dim:
            raise ValueError(
                f"the aesthetic head takes {head.input_size}-d embeddings but the CLIP projects to "
                f"{embed_dim}-d "
                "(the official head needs CLIP ViT-L/14, 768-d)"
            )
        self.encoder = encoder
        self.head = head.eval().requires_grad_(False).float()  # the official head runs in fp32

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        embeds = self.encoder.image_features(images)  # (B, D) unit vectors, fp32
        return self.head(embeds.to(self.head.layers[0].weight.dtype))  # (B,)

    def towers(self) -> list[nn.Module]:
        return [self.encoder.model]  # the head stays fp32

    def tower_slots(self) -> list[tuple[nn.Module, str, nn.Module]]:
        return [(self.encoder, "model", self.encoder.model)]

    def text_tensors(self) -> list[Tensor]:
        return self.encoder.text_tensors()  # never read here: parked whole when offloaded


def load_aesthetic(
    path: str | Path,
    clip_path: str | Path | None = None,
    *,
    processor_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    weights_only: bool = True,
) -> AestheticReward:
    """Aesthetic reward from the head file (`.pth` state dict or `.safetensors`) + a CLIP ViT-L/14 folder."""
    path = Path(path)
    if clip_path is None:
        raise ValueError("the aesthetic reward needs clip_path: a transformers CLIP ViT-L/14 folder")
    state = read_state_file(path, "LAION aesthetic head", weights_only=weights_only)
    if not isinstance(state, Mapping):
        raise RewardCheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    head = AestheticHead(head_widths(state, path))
    load_strict(head, state, path, "LAION aesthetic head")
    encoder = load_clip_encoder(clip_path, processor_path, with_tokenizer=False, dtype=dtype)
    logger.info("loaded aesthetic head %s over CLIP %s", path, clip_path)
    return AestheticReward(encoder, head)
