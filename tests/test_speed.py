"""icg.speed: the GPU speed options keep the covers of the eager path (tiny preset, CPU)."""

from __future__ import annotations

import pytest
import torch

from icg.adapter.attention import DualPathAttnProcessor
from icg.loading import load_cover_pipeline
from icg.presets import get_preset
from icg.speed import SpeedOptions, apply_speed_options, default_speed_options, fuse_self_attention


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _covers(pipe) -> torch.Tensor:
    context = torch.randn(2, 1, pipe.context_encoder.hidden_size, generator=torch.Generator().manual_seed(0))
    users = torch.randn(2, pipe.user_encoder.config.output_dim, generator=torch.Generator().manual_seed(1))
    return pipe.covers_from_embeddings(["a cat", "a dog"], context, users, [0, 1], 3, 7.0)


@pytest.mark.parametrize("compiled", [False, True])
def test_speed_options_keep_the_covers(compiled: bool) -> None:
    pipe = load_cover_pipeline(get_preset("tiny"))
    pipe.set_progress_bar_config(disable=True)
    eager = _covers(pipe)
    options = SpeedOptions(compile=compiled, compile_backend="aot_eager")  # aot_eager: the traced graph
    apply_speed_options(pipe, options)
    fast = _covers(pipe)
    assert (fast - eager).abs().max() * 255 <= 2.0  # the tolerance: max |Δ| ≤ 2/255 after decode
    layers = [a for a in pipe.unet.attn_processors.values() if isinstance(a, DualPathAttnProcessor)]
    assert layers, "cross-attention keeps the dual-path processors"


def test_only_plain_self_attention_is_fused() -> None:
    pipe = load_cover_pipeline(get_preset("tiny"))
    fused = fuse_self_attention(pipe.unet)
    assert fused > 0
    names = {type(p).__name__ for k, p in pipe.unet.attn_processors.items() if k.endswith("attn1.processor")}
    assert names == {"FusedAttnProcessor2_0"}
    assert fuse_self_attention(pipe.unet) == 0  # idempotent


def test_defaults_follow_the_device() -> None:
    assert default_speed_options("cpu") is None
    assert default_speed_options("cuda") == SpeedOptions()
    with pytest.raises(ValueError, match="compile_mode"):
        SpeedOptions(compile_mode="fastest")
