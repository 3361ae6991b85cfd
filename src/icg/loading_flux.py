"""Deprecated import path: Flux presets load through `icg.loading.load_cover_pipeline`, one loader for every
backbone (the Flux half is `icg.backbones.flux.FluxBackbone.load_components`)."""

from __future__ import annotations

import torch

from icg.backbones import FluxBackbone, backbone_kind
from icg.errors import ICGError
from icg.loading import load_cover_pipeline
from icg.pipeline_flux import FluxCoverPipeline
from icg.presets import PresetSpec

FLUX_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def load_flux_backbone(base_model: str, torch_dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """Deprecated: `FluxBackbone.load_components`."""
    return FluxBackbone.load_components(base_model, None, torch_dtype)


def load_flux_cover_pipeline(
    spec: PresetSpec,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    with_context_encoder: bool = True,
) -> FluxCoverPipeline:
    """Deprecated: `icg.loading.load_cover_pipeline` (which loads a flux `spec` the same way)."""
    if backbone_kind(spec) != "flux":
        raise ICGError(f"preset '{spec.name}' is not a flux preset")
    return load_cover_pipeline(spec, device, torch_dtype, with_context_encoder)
