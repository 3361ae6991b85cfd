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
from torchmetrics.image.fid import FrechetInceptionDistance
from transformers import CLIPModel

from icg.data.pixels import IMAGE_MEAN, IMAGE_STD
from icg.measures.clip_pixels import ClipPixels, check_images, to_unit_float

FD_NAME = "FD-miniCLIP"


class ClipImageFeatures(ClipPixels):
    """(B, 3, H, W) uint8 or float in [0, 1] → (B, P) CLIP image embeddings (not L2-normalized).

    The feature-extractor contract of torchmetrics' FID with a custom module: the metric hands the batch over
    unchanged (its `normalize` flag only converts for the built-in Inception), and reads the feature width
    from `num_features` instead of running a dummy image. Resizing to the vision tower's size and the CLIP
    mean/std normalization happen here, so callers pass plain images.
    """

    def keep(self, clip_model: CLIPModel) -> None:
        self.clip = clip_model.eval().requires_grad_(False)
        self.num_features = int(clip_model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=self.pixels(images).to(self.clip.dtype))
        # transformers 5 returns a model output whose pooler_output is the projection; older ones a tensor
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return features.float()  # (B, P)


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
