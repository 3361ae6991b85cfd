"""Adapter checkpoints: our own (one safetensors file + one JSON config) and IP-Adapter-SD15 import.

Layout of a saved adapter folder:
  adapter.safetensors   adapter.{k}.to_k_p.weight / adapter.{k}.to_v_p.weight (k-th attn2 in
                        `unet.attn_processors` order) and projector.* (PersonalizedProjector state dict)
  adapter_config.json   AdapterCheckpointConfig: format version, backbone, widths per layer, projector sizes,
                        scale
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from icg.adapter.attention import (
    AdapterLayers,
    cross_attention_layers,
    install_dual_path_adapter,
    layer_widths,
)
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
from icg.atomic import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
BACKBONES = ("sd15", "flux")


@dataclass(frozen=True)
class AdapterCheckpointConfig:
    """What a checkpoint was trained for; checked against the backbone before any weight is loaded."""

    backbone: str
    cross_attention_dim: int
    layer_names: tuple[str, ...]
    hidden_sizes: tuple[int, ...]
    scale: float = 1.0
    projector: ProjectorConfig | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if len(self.layer_names) != len(self.hidden_sizes):
            raise ValueError(
                f"{len(self.layer_names)} layer names but {len(self.hidden_sizes)} hidden sizes "
                "in the adapter config"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_names"] = list(self.layer_names)
        data["hidden_sizes"] = list(self.hidden_sizes)
        data["projector"] = self.projector.to_dict() if self.projector is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterCheckpointConfig:
        data = dict(data)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"adapter config format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        projector = data.pop("projector", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter config fields {unknown}")
        return cls(
            **{
                **data,
                "layer_names": tuple(data["layer_names"]),
                "hidden_sizes": tuple(data["hidden_sizes"]),
            },
            projector=ProjectorConfig.from_dict(projector) if projector is not None else None,
        )


def save_adapter(
    directory: str | Path,
    adapter: AdapterLayers,
    projector: PersonalizedProjector | None = None,
    backbone: str = "sd15",
) -> Path:
    """Write adapter (+ projector) weights and their config into `directory`; returns the directory."""
    if len(adapter) == 0:
        raise ValueError("the adapter has no layers to save")
    cross_dims = {layer.cross_attention_dim for layer in adapter.layers}
    if len(cross_dims) != 1:
        raise ValueError(f"adapter layers disagree on cross_attention_dim: {sorted(cross_dims)}")
    scales = {layer.scale for layer in adapter.layers}
    if len(scales) != 1:
        logger.warning("adapter layers have different scales %s; saving the first", sorted(scales))
    config = AdapterCheckpointConfig(
        backbone=backbone,
        cross_attention_dim=cross_dims.pop(),
        layer_names=tuple(adapter.names),
        hidden_sizes=tuple(adapter.hidden_sizes),
        scale=adapter[0].scale,
        projector=projector.config if projector is not None else None,
    )
    if projector is not None and projector.config.cross_attention_dim != config.cross_attention_dim:
        raise ValueError(
            f"projector outputs width {projector.config.cross_attention_dim} but the adapter layers take "
            f"cross_attention_dim {config.cross_attention_dim}"
        )
    tensors = {f"adapter.{k}": v for k, v in adapter.layers.state_dict().items()}
    if projector is not None:
        tensors.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes its metadata in hash-map order, so with two keys the same
    # tensors gave other bytes (and another sidecar adapter_hash) from run to run; the format version is
    # adapter_config.json's. Temp file + rename: a crash leaves the previous weights, never half-written.
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    logger.info("saved adapter (%d layers, projector=%s) to %s", len(adapter), projector is not None, out)
    return out


def check_layers_match(
    config: AdapterCheckpointConfig,
    widths: Mapping[str, tuple[int, int]],
    backbone: str,
    model: str = "UNet",
    layers: str = "cross-attention",
) -> None:
    """ValueError naming the first layer/width that differs between the checkpoint and a backbone's
    adapter layers, given as {name: (hidden size, c_p width)} in install order."""
    if config.backbone != backbone:
        raise ValueError(
            f"checkpoint is for backbone {config.backbone!r}; this loader takes {model} ({backbone!r}) "
            "adapters"
        )
    if len(widths) != len(config.layer_names):
        raise ValueError(
            f"checkpoint has {len(config.layer_names)} {layers} layers, the {model} has {len(widths)}"
        )
    for k, (name, (hidden, cross_dim)) in enumerate(widths.items()):
        if cross_dim != config.cross_attention_dim:
            raise ValueError(
                f"cross_attention_dim mismatch at {name}: checkpoint {config.cross_attention_dim}, "
                f"{model} {cross_dim}"
            )
        if name != config.layer_names[k]:
            raise ValueError(
                f"layer {k} is {name} in the {model} but {config.layer_names[k]} in the checkpoint"
            )
        if hidden != config.hidden_sizes[k]:
            raise ValueError(
                f"hidden size mismatch at {name}: checkpoint {config.hidden_sizes[k]}, "
                f"{model} {hidden} (from to_q)"
            )


def check_unet_matches(unet: nn.Module, config: AdapterCheckpointConfig) -> None:
    """ValueError naming the first layer/width that differs between the checkpoint and `unet`."""
    widths = {name: layer_widths(attn, name) for name, attn in cross_attention_layers(unet).items()}
    check_layers_match(config, widths, "sd15")


def load_adapter(
    directory: str | Path, unet: nn.Module
) -> tuple[AdapterLayers, PersonalizedProjector | None]:
    """Install the dual path on `unet` with the saved weights; returns (adapter, projector or None)."""
    return load_adapter_folder(
        directory,
        lambda config: check_unet_matches(unet, config),
        lambda scale: install_dual_path_adapter(unet, scale=scale, init=None),
    )


def load_adapter_folder(
    directory: str | Path,
    check: Callable[[AdapterCheckpointConfig], None],
    install: Callable[[float], AdapterLayers],
) -> tuple[AdapterLayers, PersonalizedProjector | None]:
    """A `save_adapter` folder → (adapter, projector or None), whatever the backbone: `check` raises
    ValueError when the backbone does not match the config; `install(scale)` puts untrained layers in."""
    folder = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: missing {name}; expected a folder written by save_adapter")
    config = AdapterCheckpointConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
    check(config)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    adapter = install(config.scale)
    _load_strict(adapter.layers, _with_prefix(tensors, "adapter."), "adapter")
    projector = None
    if config.projector is not None:
        projector = PersonalizedProjector(config.projector)
        _load_strict(projector, _with_prefix(tensors, "projector."), "projector")
    return adapter, projector


def _with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with a ValueError naming missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{what}.{key} has shape {tuple(value.shape)} in the file, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state)


@dataclass(frozen=True)
class IPAdapterImport:
    """What `load_ip_adapter_sd15` did: installed layers, and whether image_proj went into the projector."""

    adapter: AdapterLayers
    num_image_tokens: int | None
    projector_loaded: bool
    projector_message: str


def read_ip_adapter_state_dict(
    path_or_state_dict: str | Path | Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .bin/.safetensors file or a nested/flat dict."""
    if isinstance(path_or_state_dict, Mapping):
        raw: Mapping[str, Any] = path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise ValueError(f"{path}: IP-Adapter checkpoint not found")
        if path.suffix == ".safetensors":
            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    if "image_proj" in raw and "ip_adapter" in raw:
        return {"image_proj": dict(raw["image_proj"]), "ip_adapter": dict(raw["ip_adapter"])}
    nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in raw.items():
        head, _, rest = key.partition(".")
        if head in nested:
            nested[head][rest] = value
    if not nested["ip_adapter"]:
        raise ValueError(
            "not an IP-Adapter checkpoint: no 'ip_adapter.*' keys (expected ip_adapter.{i}.to_k_ip.weight)"
        )
    return nested


def load_ip_adapter_sd15(
    unet: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, Any],
    projector: PersonalizedProjector | None = None,
    scale: float = 1.0,
) -> IPAdapterImport:
    """Install the dual path from an IP-Adapter-SD15 checkpoint (to_k_ip → to_k_p, to_v_ip → to_v_p).

    As in diffusers' `_convert_ip_adapter_attn_to_diffusers`, the k-th `attn2` layer in `unet.attn_processors`
    order reads `ip_adapter.{2k+1}.*`. `image_proj.proj`/`image_proj.norm` go into the projector's context
    path
    when the shapes agree; otherwise the result says why they were skipped.
    """
    state = read_ip_adapter_state_dict(path_or_state_dict)
    ip = state["ip_adapter"]
    layers = cross_attention_layers(unet)
    ids = sorted({int(k.split(".")[0]) for k in ip if k.split(".")[0].isdigit()})
    if len(ids) != len(layers):
        raise ValueError(
            f"IP-Adapter checkpoint has {len(ids)} cross-attention layers (ids {ids[:4]}...), "
            f"the UNet has {len(layers)}"
        )
    weights: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k, (name, attn) in enumerate(layers.items()):
        key_id = 2 * k + 1
        hidden, cross_dim = layer_widths(attn, name)
        pair = []
        for part in ("to_k_ip", "to_v_ip"):
            key = f"{key_id}.{part}.weight"
            if key not in ip:
                raise ValueError(f"IP-Adapter checkpoint lacks ip_adapter.{key} for {name}")
            if tuple(ip[key].shape) != (hidden, cross_dim):
                raise ValueError(
                    f"ip_adapter.{key} has shape {tuple(ip[key].shape)} but {name} "
                    f"needs ({hidden}, {cross_dim}) "
                    "(hidden size from to_q, cross_attention_dim)"
                )
            pair.append(ip[key])
        weights.append((pair[0], pair[1]))
    adapter = install_dual_path_adapter(unet, scale=scale, init=None)
    with torch.no_grad():
        for layer, (k_w, v_w) in zip(adapter.layers, weights, strict=True):
            layer.to_k_p.weight.copy_(k_w)
            layer.to_v_p.weight.copy_(v_w)
    num_tokens, loaded, message = import_image_proj(state["image_proj"], projector)
    log = logger.info if loaded or projector is None else logger.warning
    log("IP-Adapter import: %d layers; %s", len(adapter), message)
    return IPAdapterImport(adapter, num_tokens, loaded, message)


def import_image_proj(
    image_proj: Mapping[str, torch.Tensor], projector: PersonalizedProjector | None
) -> tuple[int | None, bool, str]:
    """Copy IP-Adapter's ImageProjModel (proj, norm) into the projector's context path if shapes agree."""
    needed = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")
    if any(k not in image_proj for k in needed):
        return (
            None,
            False,
            f"image_proj layout not supported (keys {sorted(image_proj)[:4]}); projector untouched",
        )
    proj_w = image_proj["proj.weight"]  # (N_img·W, clip_dim)
    width = image_proj["norm.weight"].shape[0]
    num_tokens = proj_w.shape[0] // width
    if projector is None:
        return num_tokens, False, f"image_proj has {num_tokens} tokens of width {width}; no projector given"
    target = projector.context_proj
    source = {k: image_proj[k] for k in needed}
    mismatch = [
        f"{k}: checkpoint {tuple(v.shape)} vs projector {tuple(target.state_dict()[k].shape)}"
        for k, v in source.items()
        if tuple(v.shape) != tuple(target.state_dict()[k].shape)
    ]
    if mismatch:
        return num_tokens, False, "image_proj not loaded, shapes differ: " + "; ".join(mismatch)
    target.load_state_dict(source)
    return num_tokens, True, f"image_proj ({num_tokens} tokens of width {width}) loaded into the context path"
