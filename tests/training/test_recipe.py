"""The mini recipe is a data file: the shipped one holds what the mini was trained with, a file of one's own
works the same, and a bad one is an error naming the file and the field."""

from __future__ import annotations

import json

import pytest

from icg.errors import ICGError
from icg.training.adapter import AdapterTrainConfig
from icg.training.recipe import MiniRecipe, list_recipes, load_recipe


def test_the_shipped_recipe_is_what_the_mini_was_trained_with() -> None:
    recipe = load_recipe("mini")
    assert list_recipes() == ["mini"]  # mini_gpu.json is the backbone's GPU recipe, another kind
    assert (recipe.clip_preset, recipe.reward_profile) == ("mini", "taste")
    assert (recipe.users_seed, recipe.reward_seed, recipe.judge_seed) == (0, 0, 1)
    init, reward = AdapterTrainConfig(**recipe.adapter_init), AdapterTrainConfig(**recipe.adapter)
    assert (init.stage, init.steps, init.lr, init.denoise_weight) == ("init", 300, 3e-4, 1.0)
    assert (reward.stage, reward.steps, reward.lr, reward.guard_every) == ("reward", 600, 3e-4, 100)


def test_train_mini_hands_a_recipe_file_to_every_step(monkeypatch, tmp_path) -> None:
    import icg.training.mini as mini

    mine = tmp_path / "mine.json"
    MiniRecipe(users_seed=7, adapter={"stage": "reward", "steps": 5}).save(mine)
    seen = {}
    steps = {name: (lambda n: lambda data, work, recipe, *a, **k: seen.setdefault(n, recipe) and {})(name)
             for name in mini.STEPS}  # fmt: skip
    monkeypatch.setattr(mini, "_STEP_FUNCTIONS", steps)
    data = type("Data", (), {"name": "toy"})()
    mini.train_mini(data, tmp_path / "work", ["users", "adapter"], progress=False, recipe=mine)
    assert seen["users"].users_seed == 7 and seen["adapter"].adapter == {"stage": "reward", "steps": 5}
    record = json.loads((tmp_path / "work" / mini.RECORD_NAME).read_text())
    assert record["recipe"]["users_seed"] == 7  # the run records what it trained with


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"users_seed": 0, "adpter": {}}',
            r"bad\.json: not a mini recipe: unknown MiniRecipe fields \['adpter'\]",
        ),
        ("{not json", r"bad\.json: not a mini recipe"),
    ],
)
def test_a_bad_recipe_file_is_one_error_naming_it(tmp_path, text: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ICGError, match=message):
        load_recipe(tmp_path / "bad.json")


def test_an_unknown_recipe_name_lists_the_known_ones() -> None:
    with pytest.raises(ICGError, match=r"unknown mini recipe 'mni'; expected one of \['mini'\]"):
        load_recipe("mni")
