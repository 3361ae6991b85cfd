"""SSIM per image and LPIPS-miniCLIP: identities, ordering, shapes and clear errors."""

from __future__ import annotations

import pytest
import torch

from icg.measures.perceptual import LPIPS_NAME, ClipPerceptualDistance, ssim_per_image
from icg.testing import tiny_clip_model


@pytest.fixture(scope="module")
def distance() -> ClipPerceptualDistance:
    clip, _ = tiny_clip_model()
    return ClipPerceptualDistance(clip)


def _images(seed: int, n: int = 3, size: int = 48) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images_are_at_distance_zero_and_ssim_one(distance):
    x = _images(0)
    assert torch.allclose(distance(x, x), torch.zeros(3), atol=1e-6)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(3), atol=1e-5)
    # uint8 references of another size are converted and resized to the images' size
    ref = (x * 255).round().to(torch.uint8)
    assert distance(x, ref).shape == (3,) and ssim_per_image(x, ref).min() > 0.99


def test_a_small_change_is_closer_than_another_image(distance):
    x, other = _images(0), _images(1)
    near = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert (distance(x, near) < distance(x, other)).all()
    assert (ssim_per_image(x, near) > ssim_per_image(x, other)).all()
    assert distance.name == LPIPS_NAME == "LPIPS-miniCLIP"


def test_bad_input_is_named(distance):
    with pytest.raises(ValueError, match="references"):
        distance(_images(0), _images(0, n=2))
    with pytest.raises(ValueError, match="images must lie|in \\[0, 1\\]"):
        ssim_per_image(_images(0) * 3, _images(0))
    with pytest.raises(ValueError, match="references must be a \\(N, 3, H, W\\)"):
        ssim_per_image(_images(0), torch.zeros(3, 64, 64))
