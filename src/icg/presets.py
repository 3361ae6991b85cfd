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

A preset is a `PresetSpec` (`icg.presets_spec`); `sd15` and `flux` are data files in
`icg/assets/presets/`, and `register_preset(name, spec | folder | builder)` adds a platform's own names to
`get_preset` (open_clip's `add_model_config` habit).
The tiny builders are imported when a tiny preset is written (first, or again when `TINY_PRESET_VERSION`
changes), not with this module: they load torch, diffusers and transformers, which a preset lookup never
needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from icg.atomic import write_text_atomic
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
    "list_presets",
    "presets_dir",
    "register_preset",
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


def presets_dir() -> Path:
    """The named presets that are pure data (`sd15.json`, `flux.json`): `icg/assets/presets/`."""
    return Path(__file__).resolve().parent / "assets" / "presets"


SD15 = PresetSpec.load(presets_dir() / "sd15.json")
FLUX = PresetSpec.load(presets_dir() / "flux.json")


# What the tiny builders make, by version: a materialized folder of another version (or none: built before
# versions were stamped) is rebuilt, so a changed builder never meets a stale cache under icg_home().
# Bump when a builder's output changes. 2: the user encoder has a taste table (stated-taste cold start);
# 3: the tiny Qwen tokenizer is learned by icg.bpe (ties broken by the pair's strings).
TINY_PRESET_VERSION = 3
BUILD_STAMP = ".icg-tiny-version"


def materialize_if_stale(folder: Path, build: Callable[[Path], Path]) -> PresetSpec:
    """The preset in `folder`, (re)built by `build` unless it holds this version's build."""
    stamp, built = folder / BUILD_STAMP, (folder / "preset.json").is_file()
    version = stamp.read_text(encoding="utf-8").strip() if built and stamp.is_file() else None
    if version != str(TINY_PRESET_VERSION):
        if built:
            logger.info("%s: built by another version of the tiny builder; rebuilding", folder)
        build(folder)  # into a sibling folder, renamed into place
        write_text_atomic(stamp, f"{TINY_PRESET_VERSION}\n")
    return load_preset_folder(folder)


def tiny_preset(folder: Path | None = None) -> PresetSpec:
    """The tiny preset, materialized into `folder` (default under icg_home()) unless this version is there."""

    def build(into: Path) -> Path:
        from icg.presets_tiny import materialize_tiny_preset

        return materialize_tiny_preset(into)

    folder = Path(folder) if folder is not None else icg_home() / "presets" / "tiny"
    return materialize_if_stale(folder, build)


def tiny_flux_preset(folder: Path | None = None) -> PresetSpec:
    """The tiny-flux preset, materialized into `folder` (default under icg_home()) unless this version is
    there."""

    def build(into: Path) -> Path:
        from icg.presets_tiny_flux import materialize_tiny_flux_preset

        return materialize_tiny_flux_preset(into)

    folder = Path(folder) if folder is not None else icg_home() / "presets" / "tiny-flux"
    return materialize_if_stale(folder, build)


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


# the registry, open_clip style: a name → a function that returns its spec (data files for the real presets,
# builders for the ones that are made or checked on first use); `register_preset` adds a platform's own
_REGISTRY: dict[str, Callable[[], PresetSpec]] = {
    "mini": mini_preset,
    "sd15": lambda: SD15,
    "tiny": tiny_preset,
    "flux": lambda: FLUX,
    "tiny-flux": tiny_flux_preset,
}
PRESETS = tuple(_REGISTRY)  # the built-in names (kept for callers that list them)


def register_preset(name: str, preset: PresetSpec | str | Path | Callable[[], PresetSpec]) -> None:
    """Make `get_preset(name)` return `preset`: a spec, a preset folder (read on each lookup) or a builder.
    Re-registering a name replaces it; built-in names are refused, so `mini` always means the shipped one."""
    if not isinstance(name, str) or not name.strip():
        raise ICGError(f"a preset name must be a non-empty string, got {name!r}")
    if name in PRESETS:
        raise ICGError(f"'{name}' is a built-in preset; register yours under another name")
    if isinstance(preset, PresetSpec):
        _REGISTRY[name] = lambda: preset
    elif isinstance(preset, str | Path):
        _REGISTRY[name] = lambda: load_preset_folder(preset)
    elif callable(preset):
        _REGISTRY[name] = preset
    else:
        raise ICGError(
            f"preset '{name}': expected a PresetSpec, a folder or a builder, got {type(preset).__name__}"
        )


def list_presets() -> list[str]:
    """Every registered name (built-in first)."""
    return list(_REGISTRY)


def get_preset(name: str) -> PresetSpec:
    """The preset called `name` (the registry) or a folder with preset.json; an error lists the names."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if Path(name).is_dir():
        return load_preset_folder(name)
    raise ICGError(f"unknown preset '{name}'; expected one of {list_presets()} or a folder with preset.json")
