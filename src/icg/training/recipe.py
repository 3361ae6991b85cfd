"""The mini preset's training recipe as a data file (`recipes/<name>.json`), open_clip's habit for model
configs: what `icg train mini` trains with is read, not written into the code, and a platform adds its own
recipe by dropping a file beside it or passing a path. Only the choices that differ from the trainers'
defaults live here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from icg.errors import ICGError
from icg.json_config import JsonConfig

__all__ = ["MiniRecipe", "list_recipes", "load_recipe", "recipes_dir"]


@dataclasses.dataclass(frozen=True)
class MiniRecipe(JsonConfig):
    """One mini training recipe: seeds and named choices per step, the adapter stages' AdapterTrainConfig
    fields."""

    about: str = ""  # why the recipe is what it is (measurements that chose it)
    clip_preset: str = "mini"  # `mini_clip_preset` name
    users_seed: int = 0
    reward_profile: str = "taste"  # `train_from_dataset` profile of the optimised reward and of the judge
    reward_seed: int = 0
    judge_seed: int = 1  # the judge's pair split (users) and initialisation differ from the reward's
    # the adapter's stage 1 and stage 2: AdapterTrainConfig fields
    adapter_init: dict[str, Any] = dataclasses.field(default_factory=dict)
    adapter: dict[str, Any] = dataclasses.field(default_factory=dict)


def recipes_dir() -> Path:
    """The recipes that ship with ICG: `icg/training/recipes/`."""
    return Path(__file__).resolve().parent / "recipes"


def list_recipes() -> list[str]:
    """Names of the shipped mini recipes (files that read as a `MiniRecipe`)."""
    names = []
    for path in sorted(recipes_dir().glob("*.json")):
        try:
            MiniRecipe.load(path)
        except ValueError:  # another kind of recipe (the GPU backbone recipe of bench/mini_gpu.py)
            continue
        names.append(path.stem)
    return names


def load_recipe(recipe: str | Path = "mini") -> MiniRecipe:
    """A shipped recipe by name, or a recipe file; an ICGError naming the file and the bad field otherwise."""
    path = Path(recipe)
    if not path.suffix:
        path = recipes_dir() / f"{recipe}.json"
        if not path.is_file():
            known = list_recipes()
            raise ICGError(f"unknown mini recipe '{recipe}'; expected one of {known} or a .json file")
    if not path.is_file():
        raise ICGError(f"{path}: no such recipe file")
    try:
        return MiniRecipe.load(path)
    except ValueError as exc:  # bad JSON or an unknown field
        raise ICGError(f"{path}: not a mini recipe: {exc}") from None
