"""Cover pixels: uint8 (3, H, W) tensors to PIL images, and CLIP's normalization constants."""

from __future__ import annotations

import torch
from PIL import Image

# OpenAI CLIP's normalization: the mini model's processor stays a drop-in for a real CLIP processor (and code
# that normalizes with CLIP's constants by hand gets the same pixels).
IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def to_pil(cover: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 → RGB PIL image (what a user hands the processor)."""
    return Image.fromarray(cover.permute(1, 2, 0).contiguous().numpy(), "RGB")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float pixel values with IMAGE_MEAN/IMAGE_STD (as CLIPImageProcessor computes)."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
