"""Load a FluxCoverPipeline from a PresetSpec (backbone "flux"); `load_cover_pipeline` dispatches here.

The backbone is a diffusers FLUX.1 folder or hub id (transformer/, vae/, text_encoder/, tokenizer/,
text_encoder_2/, tokenizer_2/, scheduler/), read with each class's own `from_pretrained`; the context encoder,
user encoder and projector load exactly as for SD1.5. Single-file FLUX checkpoints are not supported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from icg.adapter.flux import install_flux_dual_path_adapter, load_flux_adapter
from icg.errors import ICGError
from icg.loading_common import hub_offline, load_conditioning
from icg.pipeline_flux import FluxCoverPipeline
from icg.presets import PresetSpec

logger = logging.getLogger(__name__)

FLUX_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def load_flux_backbone(base_model: str, torch_dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """The FLUX.1 components of a diffusers folder or hub id, frozen, by name (FluxPipeline's names)."""
    if base_model.endswith((".safetensors", ".ckpt")) or Path(base_model).is_file():
        raise ICGError(
            f"{base_model}: single-file Flux checkpoints are not supported; give a diffusers folder"
        )
    common = {"local_files_only": hub_offline() or Path(base_model).exists()}
    typed = {"torch_dtype": torch_dtype, **common}
    try:
        parts = {
            "transformer": FluxTransformer2DModel.from_pretrained(
                base_model, subfolder="transformer", **typed
            ),
            "vae": AutoencoderKL.from_pretrained(base_model, subfolder="vae", **typed),
            "text_encoder": CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder", **typed),
            "tokenizer": CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer", **common),
            "text_encoder_2": T5EncoderModel.from_pretrained(base_model, subfolder="text_encoder_2", **typed),
            "tokenizer_2": T5Tokenizer.from_pretrained(base_model, subfolder="tokenizer_2", **common),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                base_model, subfolder="scheduler", **common
            ),
        }
    except (OSError, ValueError) as exc:
        raise ICGError(
            f"cannot load the Flux backbone from '{base_model}': {str(exc).splitlines()[0]}"
        ) from exc
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[name].requires_grad_(False).eval()
    return parts


def load_flux_cover_pipeline(
    spec: PresetSpec,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    with_context_encoder: bool = True,
) -> FluxCoverPipeline:
    """Every component of a flux `spec`, loaded once, on `device` (`with_context_encoder`: see
    `load_cover_pipeline`)."""
    if spec.base_model is None or spec.context_encoder is None:
        raise ICGError(f"preset '{spec.name}' names no base model or no context encoder")
    if spec.base_config is not None:
        raise ICGError(f"preset '{spec.name}': base_config (single-file backbones) is not supported for flux")
    parts = load_flux_backbone(spec.base_model, torch_dtype)
    transformer = parts["transformer"]
    context_encoder, user_encoder, projector = load_conditioning(
        spec, torch_dtype, with_context_encoder, lambda: load_flux_adapter(spec.adapter, transformer),
        lambda: install_flux_dual_path_adapter(transformer, init="zeros"),
        transformer.config.joint_attention_dim,
    )  # fmt: skip
    pipe = FluxCoverPipeline(
        **parts,
        context_encoder=context_encoder,
        projector=projector.to(dtype=torch_dtype).eval(),
        user_encoder=user_encoder,
    )
    return pipe.to(device)
