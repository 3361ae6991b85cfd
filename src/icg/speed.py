"""Inference speed options for a cover pipeline on a GPU (on by default on CUDA, `--no-speed` turns them off).

What each buys and why it is safe:
- `channels_last`: cuDNN's tensor-core convolutions read NHWC; the UNet and VAE are mostly convolutions.
- `fuse_qkv`: one (C → 3C) matmul instead of three in every *self*-attention layer (diffusers'
  `Attention.fuse_projections` + `FusedAttnProcessor2_0`). Cross-attention layers keep ICG's dual-path
  processors (diffusers' `fuse_qkv_projections` would replace them), so the personal path is untouched.
- `compile`: `torch.compile` of the UNet (or Flux transformer) and of the VAE decoder. Mode "max-autotune-
  no-cudagraphs" is never the default (minutes of autotuning); the default "reduce-overhead" adds CUDA
  graphs, which pay at batch 1 where launch overhead dominates (outputs of a graph are reused buffers: the
  pipeline copies the decoded images out before it returns). Shapes are static: each new (batch, size)
  compiles once (the first call of a shape costs tens of seconds; `bench/pipeline_gpu.py` reports it).
Images stay equal to the eager path within rounding (tests at tiny sizes; the GPU benchmark reports max |Δ|
and SSIM against the eager covers).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from icg.backbones import backbone_for

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = True
    fuse_qkv: bool = True
    compile: bool = True
    compile_mode: str = "reduce-overhead"  # CUDA graphs: launch overhead is most of a batch-1 step
    compile_backend: str = "inductor"  # "aot_eager" traces without code generation (tests)

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")


def default_speed_options(device: torch.device | str) -> SpeedOptions | None:
    """The options `icg generate/serve/batch` apply by default: all of them on CUDA, none on the CPU
    (compiling there costs more than the short CPU runs of the mini preset gain)."""
    return SpeedOptions() if torch.device(device).type == "cuda" else None


def self_attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """diffusers `Attention` modules that attend to their own input (no cross-attention context)."""
    from diffusers.models.attention_processor import Attention

    return [m for m in model.modules() if isinstance(m, Attention) and not m.is_cross_attention]


def fuse_self_attention(model: torch.nn.Module) -> int:
    """Fuse Q, K, V of every self-attention layer of a UNet (or VAE) into one projection; returns how many.

    Only layers running diffusers' plain `AttnProcessor2_0` are fused (a layer with another processor, e.g.
    an adapter's, keeps it)."""
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for attn in self_attention_layers(model):
        if type(attn.processor) is not AttnProcessor2_0 or getattr(attn, "fused_projections", False):
            continue
        attn.fuse_projections()
        attn.set_processor(FusedAttnProcessor2_0())
        fused += 1
    return fused


def apply_speed_options(pipe, options: SpeedOptions | None):
    """Apply `options` to `pipe` in place (its denoiser and VAE); None leaves it as it is. Returns `pipe`."""
    if options is None:
        return pipe
    backbone = backbone_for(pipe)
    denoiser, is_unet = backbone.denoiser, backbone.kind == "sd15"
    if options.channels_last:
        if is_unet:
            denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.fuse_qkv and is_unet:
        n = fuse_self_attention(denoiser) + fuse_self_attention(pipe.vae)
        logger.info("fused Q/K/V of %d self-attention layers", n)
    if options.compile:
        mode = None if options.compile_mode == "default" else options.compile_mode
        kwargs = {"backend": options.compile_backend, "dynamic": False}
        if options.compile_backend == "inductor":
            import torch._inductor.config as inductor_config

            inductor_config.conv_1x1_as_mm = True  # 1×1 convolutions as matmuls (diffusers' speed guide)
            kwargs["mode"] = mode
        denoiser.compile(**kwargs)  # nn.Module.compile: the same module object, its forward compiled
        pipe.vae.decoder.compile(**kwargs)
    return pipe
