"""A tiny study shared by the rating tests: 3 methods x 4 covers of 32x32 px, distinctive method names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from icg.rating.study import Study, make_study

METHODS = ("methodalpha", "methodbeta", "methodgamma")
N_PER_METHOD = 4


def _cover(method_index: int, item: int) -> Image.Image:
    """A non-blank cover: a gradient tinted per method, with a bar whose position encodes the item."""
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[..., method_index] = ramp[None, :].astype(np.uint8)  # (32, 32)
    pixels[..., (method_index + 1) % 3] = ramp[:, None].astype(np.uint8)
    pixels[4 + 6 * item : 8 + 6 * item, 4:28] = 255
    return Image.fromarray(pixels)


@pytest.fixture
def study(tmp_path) -> Study:
    images = {m: [_cover(i, k) for k in range(N_PER_METHOD)] for i, m in enumerate(METHODS)}
    items = {m: [f"item{k}" for k in range(N_PER_METHOD)] for m in METHODS}
    captions = {m: [f"Movie number {k}" for k in range(N_PER_METHOD)] for m in METHODS}
    return make_study(tmp_path / "study", images, items=items, captions=captions, name="unit", seed=7)
