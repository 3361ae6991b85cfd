"""Load a CoverPipeline from a PresetSpec with the libraries' own `from_pretrained` / `from_single_file`.

One path for every preset: the tiny preset's random components are saved like real checkpoints and loaded
back here, exactly as SD1.5 + Qwen2.5-VL would be. `HF_HUB_OFFLINE=1` (or a local path) never touches the
network; a hub id is only resolved when the environment allows it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from icg.adapter.attention import install_dual_path_adapter
from icg.adapter.checkpoint import load_adapter
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
from icg.context import ContextEncoder
from icg.errors import ICGError
from icg.pipeline import CoverPipeline
from icg.presets import PresetSpec
from icg.single_file import load_single_file_backbone

if TYPE_CHECKING:
    from icg.pipeline_flux import FluxCoverPipeline

logger = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


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


def load_encoders(spec: PresetSpec, torch_dtype: torch.dtype = torch.float32, with_context: bool = True):
    """(context encoder or None, user encoder or None) of `spec`: the backbone-independent half of a pipeline.

    `with_context=False` skips the MLLM (a batch job's generation workers get P_exp and C_ref from the
    context stage), unless the preset has no adapter: an untrained projector is sized from the MLLM."""
    context_encoder = None
    if with_context or spec.adapter is None:
        context_encoder = ContextEncoder.from_pretrained(
            spec.context_encoder, num_meta_tokens=spec.num_meta_tokens, torch_dtype=torch_dtype
        )
    user_encoder = None
    if spec.user_encoder is not None:
        from icg.users import TwoTowerModel

        user_encoder = TwoTowerModel.from_pretrained(spec.user_encoder)
    return context_encoder, user_encoder


def untrained_projector(spec: PresetSpec, context_encoder, user_encoder, width: int) -> PersonalizedProjector:
    """A fresh projector sized for `spec`'s encoders and a backbone whose c_p width is `width`."""
    logger.warning("preset '%s' has no adapter: using an untrained one (covers ignore item/user)", spec.name)
    return PersonalizedProjector(
        ProjectorConfig(
            context_dim=context_encoder.hidden_size,
            num_meta_tokens=spec.num_meta_tokens,
            user_dim=user_encoder.config.output_dim if user_encoder is not None else None,
            cross_attention_dim=width,
            num_context_tokens=spec.num_context_tokens,
            num_user_tokens=spec.num_user_tokens if user_encoder is not None else 0,
        )
    )


def load_conditioning(
    spec: PresetSpec,
    torch_dtype: torch.dtype,
    with_context_encoder: bool,
    load: Callable[[], tuple[object, PersonalizedProjector | None]],
    install: Callable[[], object],
    width: int,
) -> tuple[ContextEncoder | None, object | None, PersonalizedProjector]:
    """(context encoder, user encoder, projector) for a loaded backbone, whichever it is: the adapter
    (`load()`) before the MLLM, so a wrong adapter fails in seconds, not after minutes; without one, an
    untrained dual path (`install()`) and a projector of c_p width `width`."""
    projector = None
    if spec.adapter is not None:
        try:
            _, projector = load()
        except ValueError as exc:
            raise ICGError(
                f"{spec.adapter}: cannot load the adapter into the backbone {spec.base_model}: {exc}"
            ) from exc
        if projector is None:
            raise ICGError(f"{spec.adapter}: adapter checkpoint has no projector")
    context_encoder, user_encoder = load_encoders(spec, torch_dtype, with_context_encoder)
    if spec.adapter is None:
        install()
        projector = untrained_projector(spec, context_encoder, user_encoder, width)
    return context_encoder, user_encoder, projector


def load_cover_pipeline(
    spec: PresetSpec,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    with_context_encoder: bool = True,
) -> CoverPipeline | FluxCoverPipeline:
    """Every component of `spec`, loaded once, on `device` (a FluxCoverPipeline for a flux backbone).

    `with_context_encoder=False`: no MLLM (see `load_encoders`); the pipeline then generates only through
    `covers_from_embeddings`."""
    if spec.backbone == "flux":
        from icg.loading_flux import load_flux_cover_pipeline

        return load_flux_cover_pipeline(spec, device, torch_dtype, with_context_encoder)
    if spec.backbone != "sd15":
        raise ICGError(f"preset '{spec.name}': backbone '{spec.backbone}' is not supported (sd15 or flux)")
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
