"""`PresetSpec`: where a cover pipeline's components come from, and its generation defaults.

The one definition every preset is written in: the named presets (`icg.presets`) and the tiny presets'
builders (`icg.presets_tiny`, `icg.presets_tiny_flux`) both make one; `preset.json` is its JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from icg.json_config import JsonConfig

Backbone = Literal["sd15", "flux"]


@dataclass(frozen=True)
class GenerationConfig:
    """How covers are sampled by default: the one source of steps, guidance and explicit-prompt length.

    Owned by the preset (`PresetSpec.generation_config()`), kept on a loaded pipeline
    (`pipe.generation_config`, the defaults of its `__call__`), and read by the demo, report, evaluation,
    serve, batch and training (`icg.training.adapter_config.config_for_preset`) instead of copying fields.
    Like diffusers' `GenerationConfig`: `to_dict` / `from_dict`, and `replace` for a changed copy.
    """

    num_inference_steps: int = 15
    guidance_scale: float = 7.0
    max_prompt_tokens: int = 77

    def replace(self, **changes: object) -> GenerationConfig:
        """A copy with the non-None `changes` applied (a caller's --steps / --guidance)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GenerationConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_kwargs(self) -> dict[str, object]:
        """The pipeline's `__call__` arguments: `pipe(items, users, **config.to_kwargs(), ...)`."""
        return self.to_dict()


@dataclass(frozen=True)
class PresetSpec(JsonConfig):
    """Where a cover pipeline's components come from, and its generation defaults."""

    name: str
    backbone: Backbone = "sd15"
    base_model: str | None = None
    base_config: str | None = None  # local diffusers config folder for a single-file base_model
    context_encoder: str | None = None
    user_encoder: str | None = None
    adapter: str | None = None
    clip: str | None = None  # CLIPModel folder: CLIP score, reconstruction target, reward backbone
    reward_model: str | None = None  # personalized preference reward model folder
    # held-out judge: a personalized reward model of another seed and user split, never optimised against
    reward_judge: str | None = None
    num_meta_tokens: int = 1
    num_context_tokens: int = 4
    num_user_tokens: int = 4
    num_inference_steps: int = 15
    guidance_scale: float = 7.0
    explicit_prompt_tokens: int = 77

    def generation_config(self) -> GenerationConfig:
        """The preset's generation defaults (its `num_inference_steps`, `guidance_scale` and
        `explicit_prompt_tokens` keys, so every preset.json keeps loading)."""
        return GenerationConfig(self.num_inference_steps, self.guidance_scale, self.explicit_prompt_tokens)

    def replace(self, **changes: object) -> PresetSpec:
        """A copy with the non-None `changes` applied (CLI overrides such as --base-model)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
