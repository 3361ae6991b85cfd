"""Load a CoverPipeline from a PresetSpec with the libraries' own `from_pretrained` / `from_single_file`.

One path for every preset: the tiny preset's random components are saved like real checkpoints and loaded
back here, exactly as SD1.5 + Qwen2.5-VL would be. `HF_HUB_OFFLINE=1` (or a local path) never touches the
network; a hub id is only resolved when the environment allows it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from icg.adapter.attention import install_dual_path_adapter
from icg.adapter.checkpoint import load_adapter
from icg.backbones import backbone_kind
from icg.errors import ICGError
from icg.loading_common import hub_offline, load_conditioning
from icg.pipeline import CoverPipeline
from icg.presets import PresetSpec
from icg.single_file import load_single_file_backbone

if TYPE_CHECKING:
    from icg.pipeline_flux import FluxCoverPipeline

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_backbone(base_model: str, base_config: str | None = None, torch_dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder, tokenizer, DDIM scheduler) from a diffusers folder/hub id or a single file.

    A single `.safetensors`/`.ckpt` file (how community SD1.5 checkpoints are shared, LDM key layout) needs
    `base_config`, a local diffusers folder with the component configs of the same architecture: the file
    holds weights only, and a hub config cannot be fetched here. See `icg.single_file` for what comes from
    the file and what from the folder; a file of another architecture is an ICGError naming what differs.
    """
    local_only = hub_offline() or Path(base_model).exists()
    if base_model.endswith(SINGLE_FILE_SUFFIXES) or Path(base_model).is_file():
        if not Path(base_model).is_file():
            raise ICGError(f"{base_model}: single-file checkpoint not found")
        if base_config is None:
            raise ICGError(
                f"{base_model}: a single-file checkpoint needs --base-config, a local diffusers folder "
                "with the configs of the same architecture (unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/)"
            )
        if not Path(base_config).is_dir():
            raise ICGError(f"{base_config}: --base-config must be a local diffusers folder (no hub access)")
        parts = load_single_file_backbone(base_model, base_config, torch_dtype)
        unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
        tokenizer, scheduler = parts["tokenizer"], parts["scheduler"]
    else:
        common = {"local_files_only": local_only}
        try:
            unet = UNet2DConditionModel.from_pretrained(
                base_model, subfolder="unet", torch_dtype=torch_dtype, **common
            )
            vae = AutoencoderKL.from_pretrained(
                base_model, subfolder="vae", torch_dtype=torch_dtype, **common
            )
            text_encoder = CLIPTextModel.from_pretrained(
                base_model, subfolder="text_encoder", torch_dtype=torch_dtype, **common
            )
            tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer", **common)
            scheduler = DDIMScheduler.from_pretrained(base_model, subfolder="scheduler", **common)
        except (OSError, ValueError) as exc:
            raise ICGError(
                f"cannot load the backbone from '{base_model}': {str(exc).splitlines()[0]}"
            ) from exc
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval()
    return unet, vae, text_encoder, tokenizer, scheduler


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
    `covers_from_embeddings`."""
    try:
        kind = backbone_kind(spec)
    except ValueError:
        raise ICGError(
            f"preset '{spec.name}': backbone '{spec.backbone}' is not supported (sd15 or flux)"
        ) from None
    if kind == "flux":
        from icg.loading_flux import load_flux_cover_pipeline

        return load_flux_cover_pipeline(spec, device, torch_dtype, with_context_encoder)
    if spec.base_model is None or spec.context_encoder is None:
        raise ICGError(f"preset '{spec.name}' names no base model or no context encoder")
    unet, vae, text_encoder, tokenizer, scheduler = load_backbone(
        spec.base_model, spec.base_config, torch_dtype
    )
    context_encoder, user_encoder, projector = load_conditioning(
        spec, torch_dtype, with_context_encoder, lambda: load_adapter(spec.adapter, unet),
        lambda: install_dual_path_adapter(unet, init="zeros"), unet.config.cross_attention_dim,
    )  # fmt: skip
    pipe = CoverPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        context_encoder=context_encoder,
        projector=projector.to(dtype=torch_dtype).eval(),
        user_encoder=user_encoder,
    )
    return pipe.to(device)
