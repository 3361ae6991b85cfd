"""Fidelity to the reference cover: per-image SSIM, and "LPIPS-miniCLIP", a stand-in for LPIPS.

LPIPS proper compares unit-normalised AlexNet/VGG activations through learned per-channel weights. Neither
those backbones nor the weights exist offline, so the mini preset measures the same kind of distance on the
mini CLIP's vision tower: every hidden state (B, 1 + P, D) after the embeddings is unit-normalised per token
over channels, the squared difference is averaged over tokens and channels-summed, and the layers are
averaged with equal weights (LPIPS' "lin=False" baseline form). It is named LPIPS-miniCLIP everywhere, lies
on another scale than LPIPS, and is comparable only with itself (same CLIP weights).

Both functions take (B, 3, H, W) images, uint8 or float in [0, 1], and return one value per image pair, so
callers can run paired statistics (the reward-hacking guard does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure
from transformers import CLIPModel

from icg.measures.clip_pixels import ClipPixels, check_images, to_unit_float

LPIPS_NAME = "LPIPS-miniCLIP"


def paired_images(images: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in float [0, 1]; references resized (bicubic, antialiased) to the images' size."""
    check_images(images, "images")
    check_images(references, "references")
    if len(images) != len(references):
        raise ValueError(f"got {len(images)} images but {len(references)} references; need one each")
    x, y = to_unit_float(images), to_unit_float(references).to(images.device)
    if y.shape[-2:] != x.shape[-2:]:
        y = F.interpolate(y, size=tuple(x.shape[-2:]), mode="bicubic", antialias=True, align_corners=False)
    return x, y.clamp(0.0, 1.0)


@torch.no_grad()
def ssim_per_image(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """SSIM (torchmetrics, Gaussian 11×11, data range 1) of each image to its reference → (B,)."""
    x, y = paired_images(images, references)
    return structural_similarity_index_measure(x, y, data_range=1.0, reduction="none").float()


class ClipPerceptualDistance(ClipPixels):
    """LPIPS-miniCLIP: (images, references) → (B,) distances, 0 for identical images, larger = less alike."""

    name = LPIPS_NAME

    def keep(self, clip_model: CLIPModel) -> None:
        self.vision = clip_model.vision_model.eval().requires_grad_(False)

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        pixels = self.pixels(x).to(next(self.vision.parameters()).dtype)
        hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        return [F.normalize(h.float(), dim=-1) for h in hidden[1:]]  # each (B, 1 + P, D), unit per token

    @torch.no_grad()
    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        x, y = paired_images(images, references)
        both = self._layers(torch.cat([x, y]))
        per_layer = [(a - b).pow(2).sum(-1).mean(-1) for a, b in (h.chunk(2) for h in both)]  # each (B,)
        return torch.stack(per_layer).mean(0)  # (B,)
