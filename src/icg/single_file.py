"""Single-file SD1.5 checkpoints: write them (exact inverse of diffusers' conversion) and load them safely.

Community SD1.5 derivatives are shared as one `.safetensors` in the original CompVis/LDM key layout:
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP text).
diffusers converts them with `convert_ldm_{unet,vae,clip}_checkpoint` (diffusers/loaders/
single_file_utils.py); `*_to_ldm` below invert those functions key by key, so a model exported here and loaded
back through diffusers' `from_single_file` has bit-identical weights (tests/test_loading.py checks the round
trip at tiny size and the key sets and shapes at full SD1.5 size).

What diffusers' single-file loader does with such a file, and what we add (`load_single_file_backbone`):
- The architecture is never guessed: every config (UNet, VAE, text encoder, tokenizer, scheduler) comes from a
  local diffusers folder (`config=`, `local_files_only=True`), so nothing is fetched from a hub.
- The tokenizer and scheduler always come from that folder (diffusers reads neither from the file). The VAE
  and text encoder come from the file when it holds them, else from the folder's weights (as diffusers does
  for the text encoder).
- A file with diffusers keys loads only when its keys equal one model's exactly (`_should_convert_state_dict_
  to_diffusers`), so the only diffusers-keyed single file is a UNet alone (`layout="diffusers"`).
- diffusers skips unexpected keys and leaves missing ones uninitialised on the meta device, and fails on a
  shape mismatch with a raw traceback. We convert with diffusers' own functions first and compare every
  weight with the config's model: any difference is an `ICGError` naming the file, the model and the weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    LDM_UNET_KEY,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
    load_single_file_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from icg.atomic import atomic_path
from icg.errors import ICGError

logger = logging.getLogger(__name__)

LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."
Layout = Literal["ldm", "diffusers"]

_UNET_FIXED = {
    **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
    **DIFFUSERS_TO_LDM_MAPPING["unet"]["class_embed_type"],
    **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
}
_UNET_RESNET = {  # inverse of update_unet_resnet_ldm_to_diffusers
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_BLOCK = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)"
)
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _rename_head(rest: str, table: Mapping[str, str], key: str) -> str:
    """Rename the leading module path of `rest` (e.g. 'norm1.weight', 'to_out.0.bias') with `table`."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise ValueError(f"no LDM name for {key}")


def _vae_resnet(rest: str) -> str:
    """Inverse of update_vae_resnet_ldm_to_diffusers: only the shortcut is renamed."""
    return "nin_shortcut" + rest.removeprefix("conv_shortcut") if rest.startswith("conv_shortcut.") else rest


def unet_to_ldm(state: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers UNet keys → `model.diffusion_model.*` (the inverse of convert_ldm_unet_checkpoint)."""
    if not isinstance(layers_per_block, int):
        raise ValueError(f"the LDM layout needs one layers_per_block for all blocks, got {layers_per_block}")
    per = layers_per_block + 1  # LDM: L resnet(+attention) entries then one down/upsampler entry per level
    attention_up = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _UNET_FIXED:
            out[LDM_UNET_KEY + _UNET_FIXED[key]] = value
            continue
        if match := _MID.fullmatch(key):
            kind, k, rest = match.group(1), int(match.group(2)), match.group(3)
            if kind == "resnets":
                name = f"middle_block.{0 if k == 0 else k + 1}.{_rename_head(rest, _UNET_RESNET, key)}"
            else:
                name = f"middle_block.{k + 1}.{rest}"
            out[LDM_UNET_KEY + name] = value
            continue
        match = _BLOCK.fullmatch(key)
        if match is None:
            raise ValueError(f"no LDM name for UNet weight {key}")
        side, block_id, kind, layer_id, rest = match.groups()
        block, j = int(block_id), int(layer_id)
        if side == "down_blocks":
            index = 1 + block * per + j
            if kind == "resnets":
                name = f"input_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET, key)}"
            elif kind == "attentions":
                name = f"input_blocks.{index}.1.{rest}"
            else:  # downsamplers.0.conv.* → input_blocks.{last}.0.op.*
                name = f"input_blocks.{1 + block * per + layers_per_block}.0.op.{rest.removeprefix('conv.')}"
        else:
            index = block * per + j
            if kind == "resnets":
                name = f"output_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET, key)}"
            elif kind == "attentions":
                name = f"output_blocks.{index}.1.{rest}"
            else:  # the upsampler follows the last resnet (and its attention, if the block has one)
                slot = 2 if block in attention_up else 1
                name = f"output_blocks.{block * per + layers_per_block}.{slot}.{rest}"
        out[LDM_UNET_KEY + name] = value
    return out


def vae_to_ldm(state: Mapping[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys → `first_stage_model.*` (inverse of convert_ldm_vae_checkpoint).

    LDM's mid-block attention uses 1×1 convolutions: q/k/v/proj_out weights get their trailing 1-dims back.
    """
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[LDM_VAE_PREFIX + fixed[key]] = value
            continue
        coder, _, rest = key.partition(".")
        if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
            name = f"mid.block_{int(match.group(1)) + 1}.{_vae_resnet(match.group(2))}"
        elif match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
            name = f"mid.attn_1.{_rename_head(match.group(1), _VAE_ATTENTION, key)}"
            if value.ndim == 2:  # Linear (out, in) → 1×1 Conv2d (out, in, 1, 1)
                value = value[:, :, None, None]
        elif match := re.fullmatch(
            r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest
        ):
            side, block, kind, j, tail = match.groups()
            level = int(block) if side == "down" else num_up_blocks - 1 - int(block)
            if kind == "resnets":
                name = f"{side}.{level}.block.{j}.{_vae_resnet(tail)}"
            else:
                name = f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{tail}"
        else:
            raise ValueError(f"no LDM name for VAE weight {key}")
        out[f"{LDM_VAE_PREFIX}{coder}.{name}"] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys → `cond_stage_model.transformer.text_model.*` (SD1.5 stores transformers' CLIP)."""
    return {
        LDM_CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
    }


def save_single_file(components: Mapping[str, Any], path: str | Path, layout: Layout = "ldm") -> Path:
    """Write `components` ("unet", optional "vae", "text_encoder") as one `.safetensors` file.

    layout="ldm": the community layout (all given models). layout="diffusers": the UNet alone with its own
    keys, the one diffusers-keyed single file diffusers loads (a file of several models would need prefixes
    it does not read).
    """
    unet = components["unet"]
    adapter = [k for k in unet.state_dict() if ".processor." in k]
    if adapter:  # set_attn_processor makes processors submodules: their weights would land in the file
        raise ValueError(
            f"the UNet carries attention-processor weights ({adapter[0]}, ...): export the backbone before "
            "installing an adapter, and save the adapter with icg.adapter.checkpoint.save_adapter"
        )
    if layout == "diffusers":
        tensors = dict(unet.state_dict())
        if any(components.get(name) is not None for name in ("vae", "text_encoder")):
            logger.info("diffusers layout holds the UNet only; the VAE and text encoder are not written")
    elif layout == "ldm":
        tensors = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
        if components.get("vae") is not None:
            vae = components["vae"]
            tensors.update(vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types)))
        if components.get("text_encoder") is not None:
            tensors.update(clip_to_ldm(components["text_encoder"].state_dict()))
    else:
        raise ValueError(f"layout must be 'ldm' or 'diffusers', got {layout!r}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "icg_layout": layout})
    logger.info("wrote %d tensors (%s layout) to %s", len(tensors), layout, path)
    return Path(path)


def _expected(model_cls: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of the model `config` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_cls(config) if model_cls is CLIPTextModel else model_cls.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(
    converted: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    ignore: tuple[str, ...] = (),
) -> list[str]:
    """Human-readable differences between converted file weights and the config's model; [] when they fit."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(k for k in set(converted) - set(expected) if not k.endswith(ignore))
    shapes = [
        f"{k} is {tuple(converted[k].shape)} in the file but {expected[k]} in the config"
        for k in expected
        if k in converted and tuple(converted[k].shape) != expected[k]
    ]
    out = shapes[:3]
    if missing:
        out.append(f"{len(missing)} weights missing from the file (e.g. {', '.join(missing[:2])})")
    if extra:
        out.append(f"{len(extra)} weights the config has no place for (e.g. {', '.join(extra[:2])})")
    if len(shapes) > 3:
        out.append(f"{len(shapes) - 3} more shape differences")
    return out


def _has_weights(folder: Path) -> bool:
    return any(
        (folder / name).is_file() for name in ("diffusion_pytorch_model.safetensors", "model.safetensors")
    )


def _check_config_folder(config_dir: Path) -> None:
    for sub, file in (
        ("unet", "config.json"),
        ("vae", "config.json"),
        ("text_encoder", "config.json"),
        ("tokenizer", "tokenizer_config.json"),
        ("scheduler", "scheduler_config.json"),
    ):
        if not (config_dir / sub / file).is_file():
            raise ICGError(
                f"{config_dir}: not a diffusers config folder for a single-file backbone "
                f"(missing {sub}/{file}); "
                "give the folder of an SD1.5-architecture pipeline (unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/)"
            )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as exc:  # safetensors/pickle errors have no common base class
        raise ICGError(f"{path}: cannot read the checkpoint: {str(exc).splitlines()[0]}") from exc
    if not checkpoint:
        raise ICGError(f"{path}: the checkpoint holds no tensors")
    return dict(checkpoint)


def _file_kind(checkpoint: Mapping[str, torch.Tensor]) -> str:
    """diffusers' own guess of the file's model family ('v1' = SD1.x), for error messages only."""
    try:
        return infer_diffusers_model_type(checkpoint)
    except Exception:  # noqa: BLE001 - a guess for a message must never hide the real error
        return "unknown"


def load_single_file_backbone(
    path: str | Path, config_dir: str | Path, torch_dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, scheduler (DDIM) from one checkpoint file + a local config folder.

    Every model is checked against the config before loading; "sources" says where each one came from.
    """
    path, config_dir = Path(path), Path(config_dir)
    _check_config_folder(config_dir)
    checkpoint = _read_checkpoint(path)
    kind = _file_kind(checkpoint)
    loader = _Loader(path, config_dir, checkpoint, torch_dtype, kind)
    out: dict[str, Any] = {"unet": loader.unet(), "vae": loader.vae(), "text_encoder": loader.text_encoder()}
    for name, model in out.items():
        left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:  # cannot happen after the checks; a half-initialised model must never run
            raise loader.mismatch(name, [f"{len(left)} weights were not loaded (e.g. {left[0]})"])
    out["tokenizer"] = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
    out["scheduler"] = DDIMScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)
    sources = {**loader.sources, "tokenizer": "config folder", "scheduler": "config folder (as DDIM)"}
    logger.info("single-file backbone %s: %s", path, ", ".join(f"{k} from {v}" for k, v in sources.items()))
    return {**out, "sources": sources}


class _Loader:
    """One model at a time: convert with diffusers' function, compare with the config, then load."""

    def __init__(
        self, path: Path, config_dir: Path, checkpoint: dict[str, torch.Tensor], dtype: torch.dtype, kind: str
    ) -> None:
        self.path, self.config_dir, self.checkpoint, self.kind = path, config_dir, checkpoint, kind
        self.dtype = dtype
        # float32 is what diffusers builds the models in; passing it only makes it warn about casting
        self.common = {
            "config": str(config_dir),
            "local_files_only": True,
            "torch_dtype": None if dtype == torch.float32 else dtype,
        }
        self.sources: dict[str, str] = {}

    def holds(self, *prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in self.checkpoint)

    def mismatch(self, model: str, problems: list[str]) -> ICGError:
        guess = (
            f" (diffusers identifies the file as '{self.kind}', not SD1.x 'v1')" if self.kind != "v1" else ""
        )
        return ICGError(
            f"{self.path}: the {model} does not match the architecture in {self.config_dir / model}{guess}: "
            + "; ".join(problems)
        )

    def convert(self, model: str, fn: Any, *args: Any) -> dict[str, torch.Tensor]:
        """diffusers' conversion; it indexes keys the config promises, so a foreign file can raise."""
        try:
            return fn(*args)
        except (KeyError, IndexError, ValueError, RuntimeError) as exc:
            raise self.mismatch(
                model, [f"diffusers' conversion failed ({type(exc).__name__}: {exc})"]
            ) from exc

    def unet(self) -> UNet2DConditionModel:
        config = UNet2DConditionModel.load_config(self.config_dir, subfolder="unet", local_files_only=True)
        if self.holds(LDM_UNET_KEY):
            converted = self.convert("unet", convert_ldm_unet_checkpoint, self.checkpoint, config)
            self.sources["unet"] = "file (LDM layout)"
        elif "conv_in.weight" in self.checkpoint and self.holds("down_blocks."):
            converted = self.checkpoint
            self.sources["unet"] = "file (diffusers layout)"
        else:
            raise self.mismatch(
                "unet",
                [
                    f"no UNet in the file: expected LDM keys '{LDM_UNET_KEY}*' or exactly the UNet's "
                    f"diffusers keys, found {', '.join(sorted(self.checkpoint)[:3])}, ..."
                ],
            )
        if problems := _differences(converted, _expected(UNet2DConditionModel, config)):
            raise self.mismatch("unet", problems)
        return UNet2DConditionModel.from_single_file(self.checkpoint, subfolder="unet", **self.common)

    def vae(self) -> AutoencoderKL:
        if not self.holds(LDM_VAE_PREFIX):
            return self.from_folder(AutoencoderKL, "vae")
        config = AutoencoderKL.load_config(self.config_dir, subfolder="vae", local_files_only=True)
        converted = self.convert("vae", convert_ldm_vae_checkpoint, self.checkpoint, config)
        if problems := _differences(converted, _expected(AutoencoderKL, config)):
            raise self.mismatch("vae", problems)
        self.sources["vae"] = "file"
        return AutoencoderKL.from_single_file(self.checkpoint, subfolder="vae", **self.common)

    def text_encoder(self) -> CLIPTextModel:
        if not self.holds(LDM_CLIP_PREFIX):
            if self.holds("cond_stage_model.", "conditioner."):
                raise self.mismatch("text_encoder", ["the file's text encoder is not SD1.x's CLIP"])
            return self.from_folder(CLIPTextModel, "text_encoder")
        config = CLIPTextConfig.from_pretrained(
            self.config_dir, subfolder="text_encoder", local_files_only=True
        )
        expected = _expected(CLIPTextModel, config)
        converted = convert_ldm_clip_checkpoint(self.checkpoint)
        if not any(
            k.startswith("text_model.") for k in expected
        ):  # CLIPTextModel flattened (transformers 5.6)
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        # SD1.5 files also hold embeddings.position_ids, a buffer transformers no longer saves
        if problems := _differences(converted, expected, ignore=("position_ids",)):
            raise self.mismatch("text_encoder", problems)
        self.sources["text_encoder"] = "file"
        return create_diffusers_clip_model_from_ldm(
            CLIPTextModel, self.checkpoint, subfolder="text_encoder", **self.common
        )

    def from_folder(self, model_cls: Any, sub: str) -> Any:
        """A model the file does not hold, from the config folder's weights (what diffusers falls back to)."""
        folder = self.config_dir / sub
        if not _has_weights(folder):
            raise ICGError(f"{self.path} holds no {sub} weights and {folder} has none either")
        logger.info("%s: no %s in the file; loading it from %s", self.path, sub, folder)
        self.sources[sub] = "config folder"
        return model_cls.from_pretrained(
            self.config_dir, subfolder=sub, torch_dtype=self.dtype, local_files_only=True
        )
