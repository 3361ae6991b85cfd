"""A cover pipeline to and from one folder, diffusers style: `save_pretrained` / `from_pretrained`.

`save_pipeline_folder` writes a self-contained preset folder (what `icg.presets.get_preset(folder)` reads):

  backbone/          the frozen backbone as diffusers' own pipeline saves it (model_index.json, unet/ or
                     transformer/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/), without the adapter
  adapter/           the dual path + projector (`icg.adapter.checkpoint.save_adapter`)
  context_encoder/   the MLLM with its meta tokens (`ContextEncoder.save_pretrained`)
  user_encoder/      the two-tower user encoder, when the pipeline has one
  preset.json        a `PresetSpec` naming them, with the pipeline's `generation_config`

into a temporary sibling folder that is renamed into place (`icg.atomic.atomic_folder`).
`pipeline_from_spec` builds a pipeline of a given class from a `PresetSpec` (the body of
`icg.loading.load_cover_pipeline`), `pretrained_spec` turns a folder or preset name into one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from icg.adapter.checkpoint import save_adapter
from icg.atomic import atomic_folder
from icg.backbones import BACKBONE_CLASSES, backbone_kind
from icg.errors import ICGError
from icg.loading_common import load_conditioning
from icg.presets import COMPONENT_PATHS, PresetSpec, get_preset, load_preset_folder

__all__ = [
    "CONDITIONING_NAMES", "PresetFolderMixin", "pipeline_from_spec", "pretrained_spec",
    "save_pipeline_folder", "spec_backbone_kind",
]  # fmt: skip

CONDITIONING_NAMES = ("context_encoder", "projector", "user_encoder")  # the components that are not backbone


class PresetFolderMixin:
    """`from_pretrained` / `from_spec` / `save_pretrained` of a cover pipeline class, diffusers style.

    Listed before `DiffusionPipeline` in the bases, so these take the place of diffusers' own (which read one
    model_index.json): a cover pipeline is a preset folder, backbone and conditioning together.
    """

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        with_context_encoder: bool = True,
    ) -> Self:
        """The pipeline of a preset folder (one `save_pretrained` wrote, or any preset.json folder) or of a
        named preset: `icg.loading.load_cover_pipeline(get_preset(pretrained), ...)`. A component the folder
        lacks, or a preset of another backbone, is an ICGError."""
        return cls.from_spec(pretrained_spec(pretrained), device, torch_dtype, with_context_encoder)

    @classmethod
    def from_spec(
        cls,
        spec: PresetSpec,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        with_context_encoder: bool = True,
    ) -> Self:
        """Every component of `spec`, loaded once, on `device` (see `icg.loading.load_cover_pipeline`)."""
        return pipeline_from_spec(cls, spec, device, torch_dtype, with_context_encoder)

    def save_pretrained(self, folder: str | Path, name: str | None = None) -> Path:
        """Write this pipeline as a self-contained preset folder that `from_pretrained` (and `get_preset`)
        loads: backbone/ (diffusers layout), adapter/, context_encoder/, user_encoder/, preset.json with
        `generation_config`; written beside `folder` and renamed into place."""
        return save_pipeline_folder(self, folder, name)


def spec_backbone_kind(spec: PresetSpec) -> str:
    """`backbone_kind` of a preset, as an ICGError naming the preset when it is neither sd15 nor flux."""
    try:
        return backbone_kind(spec)
    except ValueError:
        raise ICGError(
            f"preset '{spec.name}': backbone '{spec.backbone}' is not supported (sd15 or flux)"
        ) from None


def pipeline_from_spec(
    cls: type,
    spec: PresetSpec,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    with_context_encoder: bool = True,
) -> Any:
    """Every component of `spec`, loaded once, as a `cls` (a cover pipeline class of `spec`'s backbone) on
    `device`, with the preset's `generation_config`."""
    kind = spec_backbone_kind(spec)
    if kind != cls.backbone_class.kind:
        raise ICGError(
            f"preset '{spec.name}' has a {kind} backbone, not {cls.backbone_class.kind}: load it with "
            "icg.loading.load_cover_pipeline, which picks the pipeline class"
        )
    if spec.base_model is None or spec.context_encoder is None:
        raise ICGError(f"preset '{spec.name}' names no base model or no context encoder")
    backbone = BACKBONE_CLASSES[kind]
    parts = backbone.load_components(spec.base_model, spec.base_config, torch_dtype)
    denoiser = parts[backbone.denoiser_name]
    context_encoder, user_encoder, projector = load_conditioning(
        spec, torch_dtype, with_context_encoder, lambda: backbone.load_adapter(spec.adapter, denoiser),
        lambda: backbone.install_adapter(denoiser), backbone.personal_width(denoiser),
    )  # fmt: skip
    pipe = cls(
        **parts,
        context_encoder=context_encoder,
        projector=projector.to(dtype=torch_dtype).eval(),
        user_encoder=user_encoder,
    )
    pipe.generation_config = spec.generation_config()  # the defaults of pipe(...)
    return pipe.to(device)


def pretrained_spec(pretrained: str | Path) -> PresetSpec:
    """The `PresetSpec` of a preset folder (a `Path`, or a string naming a folder) or of a named preset; a
    component that the folder's preset.json names but the folder lacks is an ICGError naming it."""
    if isinstance(pretrained, Path) and not pretrained.is_dir():
        raise ICGError(f"{pretrained}: no such preset folder")
    if not Path(pretrained).is_dir():
        return get_preset(str(pretrained))
    folder = Path(pretrained)
    spec = load_preset_folder(folder)
    for name in COMPONENT_PATHS:
        value = getattr(spec, name)
        # resolved paths are absolute; a bare name left relative is a component of this folder that is missing
        # (a hub id has an owner: "org/model")
        if value is not None and not Path(value).is_absolute() and "/" not in value:
            raise ICGError(f"{folder}: preset.json names {name} '{value}', but {folder / value} is missing")
    if spec.base_model is not None:
        _check_backbone_folder(Path(spec.base_model))
    return spec


def _check_backbone_folder(backbone: Path) -> None:
    """A diffusers folder's components (its model_index.json's non-null entries) are all there."""
    index = backbone / "model_index.json"
    if not index.is_file():
        return
    entries = json.loads(index.read_text(encoding="utf-8"))
    for name, entry in entries.items():
        if isinstance(entry, list) and None not in entry and not (backbone / name).is_dir():
            raise ICGError(f"{backbone}: model_index.json names the component {name}, but {name}/ is missing")


@contextlib.contextmanager
def _without_adapter_weights(denoiser: nn.Module) -> Iterator[None]:
    """`denoiser.state_dict()` without the installed dual-path processors' weights (they are saved in
    adapter/), so the saved backbone is the plain diffusers model."""
    prefixes = tuple(f"{name}." for name, p in denoiser.attn_processors.items() if isinstance(p, nn.Module))
    full = denoiser.state_dict

    def state_dict(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {k: v for k, v in full(*args, **kwargs).items() if not k.startswith(prefixes)}

    denoiser.state_dict = state_dict  # type: ignore[method-assign]
    try:
        yield
    finally:
        del denoiser.state_dict


def _save_backbone(pipe: Any, folder: Path) -> None:
    """The backbone as diffusers' own pipeline saves it, and exactly as `pipe` holds it: diffusers'
    StableDiffusionPipeline rewrites an old scheduler's or UNet's config when built, so every config is put
    back on `pipe` afterwards and, where it had been changed, saved over the rewritten one."""
    parts = {name: getattr(pipe, name) for name in pipe.components if name not in CONDITIONING_NAMES}
    configs = {name: part._internal_dict for name, part in parts.items() if hasattr(part, "_internal_dict")}
    changed = []
    try:
        diffusers_pipe = pipe.backbone_pipeline()
        with _without_adapter_weights(pipe.backbone.denoiser):
            diffusers_pipe.save_pretrained(folder)
    finally:
        for name, config in configs.items():
            if parts[name]._internal_dict is not config:
                parts[name]._internal_dict = config
                changed.append(name)
    for name in changed:
        parts[name].save_config(folder / name)


def save_pipeline_folder(pipe: Any, folder: str | Path, name: str | None = None) -> Path:
    """Write `pipe` as a self-contained preset folder (layout: this module's docstring); returns `folder`.

    `name` is preset.json's name (default: the folder's). What a pipeline does not hold (a preset's CLIP
    model, reward models) is not written."""
    if pipe.context_encoder is None:
        raise ICGError(
            "this pipeline was loaded without its context encoder (with_context_encoder=False), so it cannot "
            "be saved as a complete folder"
        )
    target = Path(folder)
    backbone = pipe.backbone
    kind = backbone.kind
    try:
        adapter = backbone.adapter_layers()
    except ValueError as exc:
        raise ICGError(
            f"cannot save the pipeline: its {backbone.denoiser_name} has no adapter ({exc})"
        ) from exc
    with atomic_folder(target) as staging:
        _save_backbone(pipe, staging / "backbone")
        save_adapter(staging / "adapter", adapter, pipe.projector, backbone=kind)
        pipe.context_encoder.save_pretrained(staging / "context_encoder")
        if pipe.user_encoder is not None:
            pipe.user_encoder.save_pretrained(staging / "user_encoder")
        projector = pipe.projector.config
        config = pipe.generation_config
        spec = PresetSpec(
            name=name or target.name,
            backbone=kind,
            base_model="backbone",
            context_encoder="context_encoder",
            user_encoder="user_encoder" if pipe.user_encoder is not None else None,
            adapter="adapter",
            num_meta_tokens=pipe.context_encoder.num_meta_tokens,
            num_context_tokens=projector.num_context_tokens,
            num_user_tokens=projector.num_user_tokens,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            explicit_prompt_tokens=config.max_prompt_tokens,
        )
        (staging / "preset.json").write_text(spec.to_json() + "\n", encoding="utf-8")
    return target
