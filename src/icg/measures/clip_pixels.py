"""Plain (B, 3, H, W) images, uint8 or float in [0, 1]: checks, conversion, the CLIP vision tower's input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from icg.data.pixels import IMAGE_MEAN, IMAGE_STD
from icg.modules import has_values


class ClipPixels(nn.Module):
    """Plain images → the CLIP vision tower's normalised input: the shared front of the mini-CLIP metrics.

    Frozen, always in evaluation mode (as torchmetrics' own Inception wrapper). A metric on top overrides only
    `keep`, so the constructor (CLIP, mean, std) is written once."""

    def __init__(
        self,
        clip_model: CLIPModel,
        image_mean: Sequence[float] = IMAGE_MEAN,
        image_std: Sequence[float] = IMAGE_STD,
    ) -> None:
        super().__init__()
        self.image_size = int(clip_model.config.vision_config.image_size)
        # built at load time on the CPU, buffers: `.to(device)` moves them with the CLIP
        self.register_buffer("mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1))
        self.keep(clip_model)

    def keep(self, clip_model: CLIPModel) -> None:
        """Hold the part of the CLIP the metric runs (frozen); the pixel front alone holds none."""

    def train(self, mode: bool = True) -> ClipPixels:
        return super().train(False)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] → (B, 3, S, S) float32, resized and CLIP-normalised."""
        x = to_unit_float(images.to(self.mean.device))  # host covers are welcome: moved beside the CLIP
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """(N, 3, H, W), uint8 or floating point in [0, 1]; a ValueError says what is wrong otherwise."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, 3, H, W) tensor, got {shape}")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point in [0, 1], got {images.dtype}")
    if (
        images.numel()
        and has_values(images)
        and (float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3)
    ):
        raise ValueError(
            f"float {name} must lie in [0, 1], got [{float(images.min()):.3f}, {float(images.max()):.3f}]"
        )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 → float / 255; float images are clamped to [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0.0, 1.0)
