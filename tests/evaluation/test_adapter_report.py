"""`icg evaluate adapter` on the tiny preset: the grid, the variants, and the personalization statistics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from icg.data.movielens import load_ml100k
from icg.evaluation.adapter_report import (
    GRID_NAME,
    JSON_NAME,
    MD_NAME,
    VARIANTS,
    evaluate_adapter,
    genre_taste,
    held_out,
    personalization_score,
)
from icg.presets import tiny_preset
from icg.testing import tiny_clip_model


@pytest.fixture(scope="module")
def data():
    return load_ml100k()


def test_held_out_users_and_items_are_test_splits(data):
    from icg.data.pairs import PairConfig, build_pairs
    from icg.data.splits import split_items

    chosen = held_out(data, 5, 4, seed=0, judge_seed=1)
    pairs, _ = build_pairs(data.interactions, PairConfig())
    split = dict(zip(pairs["user_id"].astype(str), pairs["split"], strict=True))
    assert len(chosen.users) == 5 and {split[u] for u in chosen.users} == {"test"}
    test_ids = set(data.items.iloc[split_items(len(data.items), 0, 0.1, 0.1).test]["item_id"])
    assert len(chosen.items) == 4 and set(chosen.items["item_id"]) <= test_ids
    assert chosen.judge_unseen <= set(chosen.users)


def test_genre_taste_is_relative_to_the_user_and_to_other_users(data):
    users = ["1", "2", "3"]
    taste = genre_taste(data, users, ["Comedy", "Drama", "Horror"])
    assert taste.shape == (3, 3) and np.allclose(taste.mean(0), 0)


def test_personalization_score_finds_a_planted_match_and_not_noise():
    rng = np.random.default_rng(0)
    taste = rng.normal(size=(40, 8))
    planted = personalization_score(taste + 0.5 * rng.normal(size=taste.shape), taste, 200, 0)
    noise = personalization_score(rng.normal(size=taste.shape), taste, 200, 0)
    assert planted["score"] > 0.6 and planted["p_value"] < 0.01
    assert abs(noise["score"]) < 0.2 and noise["p_value"] > 0.01
    assert personalization_score(np.zeros_like(taste), taste, 10, 0)["score"] == 0.0


def test_report_on_the_tiny_preset(data, tmp_path):
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel

    clip, processor = tiny_clip_model()
    clip.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    for seed, name in ((0, "reward"), (1, "judge")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PersonalizedRewardModel(
                PersonalizedRewardConfig(hidden_size=16, num_heads=2), clip, processor
            )
        model.save_pretrained(tmp_path / name)
    spec = tiny_preset(tmp_path / "tiny")
    spec = dataclasses.replace(spec, clip=str(tmp_path / "clip"), reward_model=str(tmp_path / "reward"),
                               reward_judge=str(tmp_path / "judge"), num_inference_steps=2)  # fmt: skip
    if spec.adapter is None:
        pytest.skip("the tiny preset ships no adapter")
    options = {"cache_dir": tmp_path / "covers", "out_dir": tmp_path / "out", "progress": False}
    result = evaluate_adapter(spec, data, n_users=3, n_items=2, permutations=20, **options)
    for name in VARIANTS:
        row = result[name]
        assert 0 < row["ssim"] <= 1 and row["LPIPS-miniCLIP"] > 0 and np.isfinite(row["judge_reward"])
    assert result["rule_based"]["personalization"]["score"] == 0.0  # the same cover for every user
    assert result["rule_based"]["between_user_pixel_std"] == 0.0
    assert result["icg"]["between_user_pixel_std"] > 0  # the user tokens change the cover
    assert result["setup"]["n_users"] == 3 and result["setup"]["n_items"] == 2
    assert json.loads((tmp_path / "out" / JSON_NAME).read_text())["setup"]["n_items"] == 2
    assert "| icg |" in (tmp_path / "out" / MD_NAME).read_text() and (tmp_path / "out" / GRID_NAME).is_file()


def test_swap_test_sees_covers_made_for_their_user_and_not_shared_ones():
    from icg.evaluation.adapter_report import swap_test
    from icg.rewards.base import Reward

    class Brightness(Reward):
        """User 'dark' likes dark covers, 'light' likes light ones."""

        needs_texts = False

        def _score(self, images, texts, users):
            sign = torch.tensor([1.0 if u == "light" else -1.0 for u in users])
            return sign * images.mean(dim=(1, 2, 3))

    profiles = ["light", "dark", "light", "dark"]
    tailored = torch.stack([torch.full((3, 3, 8, 8), 0.9 if p == "light" else 0.1) for p in profiles])
    shared = torch.full((4, 3, 3, 8, 8), 0.5)
    good = swap_test(Brightness(), tailored, None, profiles, others=3)
    assert good["own_minus_others"] > 0.2 and good["share_users_positive"] == 1.0 and good["others"] == 3
    assert swap_test(Brightness(), shared, None, profiles)["own_minus_others"] == 0.0
