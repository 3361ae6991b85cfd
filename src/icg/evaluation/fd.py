"""Fréchet distance on the features of a stand-in backbone: "FD-miniCLIP", never "FID".

FID proper is the Fréchet distance of Inception-v3 pool features. The mini preset has no Inception weights
offline, so the same distance is measured on the mini CLIP's image embeddings (`get_image_features`), through
torchmetrics' `FrechetInceptionDistance(feature=<nn.Module>)`: the metric keeps its running sums and its
matrix square root, only the feature extractor changes. The number is on another scale than FID and is only
comparable with other FD-miniCLIP figures from the same CLIP weights and the same sample sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from transformers import CLIPModel

from icg.data.pixels import IMAGE_MEAN, IMAGE_STD
from icg.modules import has_values

FD_NAME = "FD-miniCLIP"


class ClipPixels(nn.Module):
    """Plain images → the CLIP vision tower's normalised input: the shared front of the mini-CLIP metrics.

    Frozen, always in evaluation mode (as torchmetrics' own Inception wrapper)."""

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

    def train(self, mode: bool = True) -> ClipPixels:
        return super().train(False)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] → (B, 3, S, S) float32, resized and CLIP-normalised."""
        x = to_unit_float(images.to(self.mean.device))  # host covers are welcome: moved beside the CLIP
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std


class ClipImageFeatures(ClipPixels):
    """(B, 3, H, W) uint8 or float in [0, 1] → (B, P) CLIP image embeddings (not L2-normalized).

    The feature-extractor contract of torchmetrics' FID with a custom module: the metric hands the batch over
    unchanged (its `normalize` flag only converts for the built-in Inception), and reads the feature width
    from `num_features` instead of running a dummy image. Resizing to the vision tower's size and the CLIP
    mean/std normalization happen here, so callers pass plain images.
    """

    def __init__(
        self,
        clip_model: CLIPModel,
        image_mean: Sequence[float] = IMAGE_MEAN,
        image_std: Sequence[float] = IMAGE_STD,
    ) -> None:
        super().__init__(clip_model, image_mean, image_std)
        self.clip = clip_model.eval().requires_grad_(False)
        self.num_features = int(clip_model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=self.pixels(images).to(self.clip.dtype))
        # transformers 5 returns a model output whose pooler_output is the projection; older ones a tensor
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return features.float()  # (B, P)


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


def frechet_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    clip_model: CLIPModel | ClipImageFeatures,
    *,
    batch_size: int = 64,
    image_mean: Sequence[float] = IMAGE_MEAN,
    image_std: Sequence[float] = IMAGE_STD,
) -> float:
    """FD-miniCLIP between two (N, 3, H, W) image sets (uint8, or float in [0, 1]); each needs N >= 2.

    `clip_model` is a `CLIPModel` (wrapped with `image_mean`/`image_std`) or an already built
    `ClipImageFeatures`. With fewer samples than feature dimensions the covariances are rank-deficient and the
    estimate carries a positive small-sample bias: compare only figures measured at the same sample sizes.
    """
    check_images(real, "real")
    check_images(fake, "fake")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"{FD_NAME} needs at least 2 images per set, got {len(real)} and {len(fake)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    features = (
        clip_model
        if isinstance(clip_model, ClipImageFeatures)
        else ClipImageFeatures(clip_model, image_mean, image_std)
    )
    return float(fd_metric(real, fake, features, batch_size).compute())


def fd_metric(
    real: torch.Tensor, fake: torch.Tensor, features: ClipImageFeatures, batch_size: int
) -> FrechetInceptionDistance:
    """torchmetrics' FID metric over `features`, on the features' device, updated with both image sets (the
    device half of `frechet_distance`; `.compute()` solves the Fréchet distance)."""
    device = next(features.parameters()).device
    # the metric's running sums live beside the features they add up (they are created on the CPU)
    metric = FrechetInceptionDistance(feature=features, normalize=True).to(device)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch_size):
                metric.update(to_unit_float(images[start : start + batch_size].to(device)), real=is_real)
    return metric
