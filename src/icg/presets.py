"""Named presets → component specs. Real and tiny/mini differ only here, never in code paths.

A preset names where each component comes from: the diffusion backbone (a diffusers folder, a hub id, or a
single `.safetensors` file with a local config folder), the MLLM context encoder, the user encoder and the
adapter. Every component is then loaded by the same `from_pretrained` calls (`icg.loading`).

- `sd15`: Stable Diffusion 1.5 + Qwen2.5-VL-7B-Instruct (hub ids; honour HF_HUB_OFFLINE and local paths).
  The user encoder and the adapter are trained by ICG, so they have no default and must be given.
- `mini`: the embedded default — the same classes at small sizes, trained by `icg train mini` on
  MovieLens-100k with rendered covers, shipped in `icg/assets/mini/` (preset.json + one folder per
  component). It makes 64² covers.
- `flux`: FLUX.1-dev + Qwen2.5-VL-7B-Instruct (hub ids, as `sd15`), 28 flow-matching steps, embedded
  guidance 3.5; the adapter is the Flux dual path (`icg.adapter.flux`), loaded by `icg.loading`.
- `tiny`: random components of the same classes at tiny size, written once to `$ICG_HOME/presets/tiny`
  (default `~/.cache/icg`) by `icg.presets_tiny.materialize_tiny_preset` and loaded back like real
  checkpoints. For tests and wiring checks only: its covers are noise. `tiny-flux` is the same for the Flux
  backbone (`icg.presets_tiny_flux.materialize_tiny_flux_preset`, `$ICG_HOME/presets/tiny-flux`, 32² covers).

A preset is a `PresetSpec` (`icg.presets_spec`). The tiny builders are imported when a tiny preset is first
written, not with this module: they load torch, diffusers and transformers, which a preset lookup never needs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from icg.errors import ICGError
from icg.presets_spec import Backbone, GenerationConfig, PresetSpec

__all__ = [
    "COMPONENT_PATHS",
    "FLUX",
    "GenerationConfig",
    "PRESETS",
    "SD15",
    "Backbone",
    "PresetSpec",
    "get_preset",
    "icg_home",
    "load_preset_folder",
    "mini_assets_dir",
    "mini_preset",
    "tiny_flux_preset",
    "tiny_preset",
]

logger = logging.getLogger(__name__)


def icg_home() -> Path:
    """Where ICG keeps generated presets and caches ($ICG_HOME, default ~/.cache/icg)."""
    return Path(os.environ.get("ICG_HOME", Path.home() / ".cache" / "icg")).expanduser()


SD15 = PresetSpec(
    name="sd15",
    base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    context_encoder="Qwen/Qwen2.5-VL-7B-Instruct",
)


FLUX = PresetSpec(
    name="flux",
    backbone="flux",
    base_model="black-forest-labs/FLUX.1-dev",
    context_encoder="Qwen/Qwen2.5-VL-7B-Instruct",
    num_inference_steps=28,
    guidance_scale=3.5,
)


def tiny_preset(folder: Path | None = None) -> PresetSpec:
    """The tiny preset, materialized into `folder` (default under icg_home()) if it is not there yet."""
    folder = Path(folder) if folder is not None else icg_home() / "presets" / "tiny"
    if not (folder / "preset.json").is_file():
        from icg.presets_tiny import materialize_tiny_preset

        materialize_tiny_preset(folder)
    return load_preset_folder(folder)


def tiny_flux_preset(folder: Path | None = None) -> PresetSpec:
    """The tiny-flux preset, materialized into `folder` (default under icg_home()) if it is not there yet."""
    folder = Path(folder) if folder is not None else icg_home() / "presets" / "tiny-flux"
    if not (folder / "preset.json").is_file():
        from icg.presets_tiny_flux import materialize_tiny_flux_preset

        materialize_tiny_flux_preset(folder)
    return load_preset_folder(folder)


COMPONENT_PATHS = (
    "base_model", "base_config", "context_encoder", "user_encoder", "adapter", "clip", "reward_model",
    "reward_judge",
)  # fmt: skip


def mini_assets_dir() -> Path:
    """Where the shipped mini preset lives: `icg/assets/mini` inside the installed package."""
    return Path(__file__).resolve().parent / "assets" / "mini"


def mini_preset(folder: Path | None = None) -> PresetSpec:
    """The mini preset (default: the shipped one); a clear error when its weights are missing."""
    folder = Path(folder) if folder is not None else mini_assets_dir()
    if not (folder / "preset.json").is_file():
        raise ICGError(
            f"{folder}: the mini preset's weights are missing; run `icg train mini` to train and package them"
        )
    return load_preset_folder(folder)


def load_preset_folder(folder: str | Path) -> PresetSpec:
    """A preset saved as `preset.json` in a folder; relative component paths resolve against that folder."""
    folder = Path(folder)
    file = folder / "preset.json"
    if not file.is_file():
        raise ICGError(f"{file}: preset file not found")
    try:
        spec = PresetSpec.load(file)
    except (ValueError, TypeError) as exc:  # not JSON, an unknown key, a missing one, a bad value
        raise ICGError(f"{file}: not a preset file ({exc})") from None
    paths = {}
    for name in COMPONENT_PATHS:
        value = getattr(spec, name)
        if value is not None and (folder / value).exists():
            paths[name] = str((folder / value).resolve())
    return spec.replace(**paths)


PRESETS = ("mini", "sd15", "tiny", "flux", "tiny-flux")


def get_preset(name: str) -> PresetSpec:
    """The preset called `name`; a clear error lists the known ones."""
    if name == "sd15":
        return SD15
    if name == "tiny":
        return tiny_preset()
    if name == "flux":
        return FLUX
    if name == "tiny-flux":
        return tiny_flux_preset()
    if name == "mini":
        return mini_preset()
    if Path(name).is_dir():
        return load_preset_folder(name)
    raise ICGError(f"unknown preset '{name}'; expected one of {list(PRESETS)} or a folder with preset.json")
