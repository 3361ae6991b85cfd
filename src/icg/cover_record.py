"""One record of a generated cover, for every surface that describes one.

`icg generate` writes a JSON sidecar per cover, the service answers JSON and keeps a cache entry per cover,
the batch job writes a sidecar and a manifest row per cover. Each used to build its own dict, and they
drifted (the batch job never said which adapter made a cover, the service never said the prompt length).
Now each builds one `CoverRecord` with `cover_record` (the pipeline's metadata of one cover + the run's
`RunInfo`) and renders `record.fields()`, adding only what is its own: URL and cache flag, file path and
checksum, segment. `CORE_FIELDS` are the keys every surface shares, under the same names.

No torch here: the batch job's light stages import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """What every cover of one run shares beside its own metadata: the preset and the models behind it."""

    preset: str
    model_ids: dict[str, str | None]
    adapter_hash: str | None
    max_prompt_tokens: int | None = None  # the explicit prompt's length limit (None: not recorded)

    @classmethod
    def from_spec(cls, spec: Any) -> RunInfo:
        """The run info of a `PresetSpec`: its name, model folders or ids, adapter hash and prompt length."""
        from icg.loading import adapter_hash  # lazy: icg.loading imports torch and diffusers

        model_ids = {
            "base_model": spec.base_model,
            "context_encoder": spec.context_encoder,
            "user_encoder": spec.user_encoder,
            "adapter": spec.adapter,
        }
        tokens = spec.generation_config().max_prompt_tokens
        return cls(spec.name, model_ids, adapter_hash(spec.adapter), tokens)


@dataclass(frozen=True)
class CoverRecord:
    """What every surface must say about one cover: which item and user, which prompt, which settings and
    which models. Enough to find the cover again, and to regenerate it with the same preset."""

    item_id: str | None  # None for an item given as title + image
    title: str
    item_source: str  # "dataset", "file" (icg generate --title/--image), "upload" (the service), "table"
    user_id: str | None  # both None: a cover without a user (or, in the batch job, for a segment)
    profile: str | None
    explicit_prompt: str  # P_exp, the context encoder's prompt for the item
    prompt: str  # what the text encoder read: P_exp, plus a user's suffix for the prompt-side baselines
    seed: int
    image_index: int  # k of the `num_images_per_prompt` covers of one (item, user)
    num_inference_steps: int
    guidance_scale: float
    user_scale: float
    max_prompt_tokens: int | None
    preset: str
    model_ids: dict[str, str | None]
    adapter_hash: str | None

    def fields(self) -> dict[str, Any]:
        """The record as one flat dict, keys in `CORE_FIELDS` order (what every surface writes)."""
        return {name: getattr(self, name) for name in CORE_FIELDS} | {"model_ids": dict(self.model_ids)}


CORE_FIELDS = tuple(f.name for f in dataclasses.fields(CoverRecord))


def cover_record(meta: Mapping[str, Any], run: RunInfo, **changes: Any) -> CoverRecord:
    """The record of one cover: `meta` is the pipeline's metadata for it (`CoverPipelineOutput.metadata[i]`),
    `run` what the run shares; `changes` replace fields the pipeline cannot know (e.g. `item_source`)."""
    record = CoverRecord(
        item_id=None if meta["item_id"] is None else str(meta["item_id"]),
        title=str(meta["title"]),
        item_source="file" if meta["item_id"] is None else "dataset",
        user_id=meta.get("user_id"),
        profile=meta.get("profile"),
        explicit_prompt=str(meta["explicit_prompt"]),
        prompt=str(meta["prompt"]),
        seed=int(meta["seed"]),
        image_index=int(meta.get("image_index", 0)),
        num_inference_steps=int(meta["num_inference_steps"]),
        guidance_scale=float(meta["guidance_scale"]),
        user_scale=float(meta.get("user_scale", 1.0)),
        max_prompt_tokens=run.max_prompt_tokens,
        preset=run.preset,
        model_ids=dict(run.model_ids),
        adapter_hash=run.adapter_hash,
    )
    return dataclasses.replace(record, **changes)
