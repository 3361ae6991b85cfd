"""Load a CoverPipeline from a PresetSpec with the libraries' own `from_pretrained` / `from_single_file`.

One path for every preset and backbone (the backbone half is `load_components` of `icg.backbones`): the tiny
preset's random components are saved like real checkpoints and loaded back here, exactly as SD1.5 +
Qwen2.5-VL would be. `HF_HUB_OFFLINE=1` (or a local path) never touches the network; a hub id is only
resolved when the environment allows it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from icg.backbones import SD15Backbone
from icg.backbones.base import SINGLE_FILE_SUFFIXES
from icg.pipeline import CoverPipeline
from icg.pipeline_flux import FluxCoverPipeline
from icg.pipeline_folder import spec_backbone_kind
from icg.presets import PresetSpec

__all__ = ["SINGLE_FILE_SUFFIXES", "adapter_hash", "load_backbone", "load_cover_pipeline"]


def load_backbone(base_model: str, base_config: str | None = None, torch_dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder, tokenizer, DDIM scheduler) from a diffusers folder/hub id or a single file
    with its config folder: `SD15Backbone.load_components` as a tuple."""
    parts = SD15Backbone.load_components(base_model, base_config, torch_dtype)
    return parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"]


def adapter_hash(path: str | Path | None) -> str | None:
    """A short content hash of the adapter weights, recorded in every sidecar."""
    if path is None:
        return None
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*")):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def load_cover_pipeline(
    spec: PresetSpec,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    with_context_encoder: bool = True,
) -> CoverPipeline | FluxCoverPipeline:
    """Every component of `spec`, loaded once, on `device` (a FluxCoverPipeline for a flux backbone).

    `with_context_encoder=False`: no MLLM (see `load_encoders`); the pipeline then generates only through
    `covers_from_embeddings`. `pipe.generation_config` is the preset's (`spec.generation_config()`)."""
    kind = spec_backbone_kind(spec)
    pipeline_class = FluxCoverPipeline if kind == "flux" else CoverPipeline
    return pipeline_class.from_spec(spec, device, torch_dtype, with_context_encoder)
