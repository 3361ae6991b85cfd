"""`icg evaluate personalization`: the lean test's statistics on constructed cases, the held-out ground
truth, the whole benchmark on the tiny preset, and the CLI's checks."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from icg.data.movielens import load_ml100k
from icg.evaluation.personalization import (
    CURVE_NAME,
    JSON_NAME,
    MD_NAME,
    LeanPairs,
    choose_benchmark,
    cold_start_ground_truth,
    evaluate_personalization,
    item_genre_probabilities,
    lean_pairs,
    lean_test,
    preferred_genres,
    rating_halves,
    retrieval_recall,
)


@pytest.fixture(scope="module")
def data():
    return load_ml100k()


def _pairs(rows: list[tuple[int, int, int, int, int]]) -> LeanPairs:
    arr = np.array(rows)
    return LeanPairs(*(arr[:, k] for k in range(5)))


def test_lean_test_counts_wins_ties_and_losses_on_a_constructed_case():
    """Two items with genres {0, 1}; users 0, 1 prefer genre 0 and users 2, 3 genre 1 (4 pairs per item)."""
    pairs = _pairs([(i, u, v, 0, 1) for i in (0, 1) for u in (0, 1) for v in (2, 3)])
    lean_own = np.zeros((4, 2, 2))
    lean_own[:2, :, 0], lean_own[:2, :, 1] = 0.8, 0.2  # genre-0 fans' covers look like genre 0
    lean_own[2:, :, 0], lean_own[2:, :, 1] = 0.3, 0.7
    fair = lean_test(lean_own, pairs, bootstraps=200, permutations=400, seed=0)
    assert fair["win_rate"] == 1.0 and fair["ci95"] == [1.0, 1.0] and fair["p_value"] < 0.05
    assert fair["n_pairs"] == 8 and fair["n_items"] == 2 and fair["n_users"] == 4
    against = lean_test(lean_own[::-1].copy(), pairs, bootstraps=50, permutations=50, seed=0)
    assert against["win_rate"] == 0.0 and against["p_value"] == 1.0
    shared = lean_test(lean_own[:1], pairs, bootstraps=50, permutations=50, seed=0)  # one cover for all
    assert shared["win_rate"] == 0.5 and shared["ties"] == 1.0 and shared["p_value"] == 1.0
    half = lean_own.copy()
    half[:, 1] = half[::-1, 1]  # item 1 leans the wrong way: 4 wins of 8
    assert lean_test(half, pairs, bootstraps=50, permutations=50, seed=0)["win_rate"] == 0.5
    no_pairs = LeanPairs(*[np.zeros(0, dtype=int)] * 5)
    assert lean_test(lean_own, no_pairs)["win_rate"] is None


def test_item_genre_probabilities_renormalise_over_the_items_own_genres():
    probs = np.array([[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]])  # (1 user, 2 items, 3 genres)
    got = item_genre_probabilities(probs, [[0, 1], [2]])
    assert np.allclose(got[0, 0], [2 / 3, 1 / 3, 0]) and np.allclose(got[0, 1], [0, 0, 1])


def test_preferred_genres_need_enough_ratings_and_a_clear_lead():
    taste = np.array([[1.0, 0.2, np.nan], [0.3, 0.2, 0.9], [0.5, -0.5, 0.0]])  # (3 users, 3 genres)
    counts = np.array([[5, 5, 0], [5, 5, 1], [2, 9, 9]])
    got = preferred_genres(taste, counts, [[0, 1], [0, 1, 2]], min_ratings=3, margin=0.25)
    # user 0: genre 0 by 0.8 on both items; user 1: 0.3 vs 0.2 is too close (genre 2 has 1 rating);
    # user 2: genre 0 has 2 ratings, so only genre 1 is known on item 0 and genres 1, 2 on item 1
    assert got.tolist() == [[0, 0], [-1, -1], [-1, 2]]
    pairs = lean_pairs(got)
    assert list(zip(pairs.item, pairs.first, pairs.second, strict=True)) == [(1, 0, 2)]


def test_retrieval_recall_ranks_the_own_reference_and_ties_count_against():
    keys = torch.eye(4)
    queries = torch.tensor([[1.0, 0.1, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    targets = torch.tensor([0, 1, 3])
    assert retrieval_recall(queries, keys, targets, 1) == pytest.approx(2 / 3)
    # query 1 is as close to keys 1, 2, 3 (0) as to its own: its ties count against it until k = 4
    assert retrieval_recall(queries, keys, targets, 3) == pytest.approx(2 / 3)
    assert retrieval_recall(queries, keys, targets, 4) == pytest.approx(1.0)


def test_ground_truth_is_held_out(data):
    from icg.data.covers.render import item_genres
    from icg.data.pairs import PairConfig, build_pairs
    from icg.data.splits import split_items

    bench = choose_benchmark(data, 12, 3, seed=0)
    pairs, _ = build_pairs(data.interactions, PairConfig())
    split = dict(zip(pairs["user_id"].astype(str), pairs["split"], strict=True))
    assert {split[u] for u in bench.users} == {"test"} and len(bench.users) == 12
    test_ids = set(data.items.iloc[split_items(len(data.items), 0, 0.1, 0.1).test]["item_id"].astype(str))
    assert set(bench.pool["item_id"].astype(str)) == test_ids
    assert set(bench.items["item_id"].astype(str)) <= test_ids and 1 <= len(bench.items) <= 3
    assert all(len(item_genres(g)) >= 2 for g in bench.items["genres"])
    assert len(bench.pairs) > 0
    for i, gu, gv in zip(bench.pairs.item, bench.pairs.first_genre, bench.pairs.second_genre, strict=True):
        assert gu != gv and {gu, gv} <= set(bench.item_genre_ids[i])
    # the taste never reads a rating of a held-out item: changing them changes nothing
    changed = dataclasses.replace(data, interactions=data.interactions.copy())
    held = changed.interactions["item_id"].astype(str).isin(test_ids)
    changed.interactions.loc[held, "signal"] = 6 - changed.interactions.loc[held, "signal"]
    again = choose_benchmark(changed, 12, 3, seed=0)
    assert np.array_equal(again.preferred, bench.preferred)


def _constructed() -> tuple:
    """Two users × 40 ratings of items with genres A/B (and one excluded item): a known taste per half."""
    import pandas as pd

    from icg.data.records import InteractionData

    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(41)],
            "title": [f"T{j}" for j in range(41)],
            "year": pd.array([2000] * 41, dtype="Int64"),
            "genres": [("A", "B") if j == 40 else (("A",) if j % 2 else ("B",)) for j in range(41)],
            "cover_path": None,
        }
    )
    rng = np.random.default_rng(0)
    rows = [(u, f"i{j}", float(rng.integers(1, 6))) for u in ("u1", "u2") for j in range(41)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "signal"]).assign(timestamp=0)
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": pd.array([30, 40], dtype="Int64"),
                          "gender": ["M", "F"], "occupation": ["x", "y"], "zip": None,
                          "profile": ["", ""]})  # fmt: skip
    return InteractionData("constructed", users, items, inter), ["A", "B"]


def test_cold_start_words_and_ground_truth_come_from_disjoint_halves():
    data, genres = _constructed()
    exclude = {"i40"}
    cold = cold_start_ground_truth(data, ["u1", "u2"], genres, exclude, [[0, 1]], seed=0)
    keys = [set(zip(h["user_id"], h["item_id"], strict=True)) for h in (cold.words, cold.truth)]
    assert not keys[0] & keys[1]  # disjoint
    outside = data.interactions[~data.interactions["item_id"].isin(exclude)]
    assert keys[0] | keys[1] == set(zip(outside["user_id"], outside["item_id"], strict=True))
    for user in ("u1", "u2"):  # halves of each user's ratings
        n = [int((h["user_id"] == user).sum()) for h in (cold.words, cold.truth)]
        assert n == [20, 20]
    again = cold_start_ground_truth(data, ["u1", "u2"], genres, exclude, [[0, 1]], seed=0)
    assert again.profiles == cold.profiles and np.array_equal(again.preferred, cold.preferred)
    # the words never come from the ground-truth half: rewrite its ratings, the words stay; rewrite the words'
    # half so that each user plainly likes B, the words follow it
    truth_rows = set(zip(cold.truth["user_id"], cold.truth["item_id"], strict=True))
    pairs = zip(data.interactions["user_id"], data.interactions["item_id"], strict=True)
    in_truth = np.array([k in truth_rows for k in pairs])
    changed = dataclasses.replace(data, interactions=data.interactions.copy())
    changed.interactions.loc[in_truth, "signal"] = 6 - changed.interactions.loc[in_truth, "signal"]
    flipped = cold_start_ground_truth(changed, ["u1", "u2"], genres, exclude, [[0, 1]], seed=0)
    assert flipped.profiles == cold.profiles
    likes_b = dataclasses.replace(data, interactions=data.interactions.copy())
    genre_b = likes_b.interactions["item_id"].map(lambda i: int(i[1:]) % 2 == 0 and i != "i40")
    words = ~in_truth & ~likes_b.interactions["item_id"].eq("i40")
    likes_b.interactions.loc[words, "signal"] = np.where(genre_b[words], 5.0, 1.0)
    assert cold_start_ground_truth(likes_b, ["u1", "u2"], genres, exclude, [[0, 1]], 0).profiles == [
        "likes b",
        "likes b",
    ]
    first, second = rating_halves(outside.astype({"user_id": str, "item_id": str}), seed=1)
    assert len(first) + len(second) == len(outside)


def test_validation_split_chooses_recipes_apart_from_test(data):
    from icg.data.pairs import PairConfig, build_pairs
    from icg.data.splits import split_items

    val = choose_benchmark(data, 12, 3, seed=0, split="val")
    test = choose_benchmark(data, 12, 3, seed=0, split="test")
    pairs, _ = build_pairs(data.interactions, PairConfig())
    split = dict(zip(pairs["user_id"].astype(str), pairs["split"], strict=True))
    assert {split[u] for u in val.users} == {"val"}
    val_ids = set(data.items.iloc[split_items(len(data.items), 0, 0.1, 0.1).val]["item_id"].astype(str))
    assert set(val.pool["item_id"].astype(str)) == val_ids
    assert not set(val.users) & set(test.users)
    assert not set(val.pool["item_id"].astype(str)) & set(test.pool["item_id"].astype(str))
    with pytest.raises(ValueError, match="split must be one of"):
        choose_benchmark(data, 12, 3, seed=0, split="train")


def test_benchmark_on_the_tiny_preset(data, tmp_path, one_torch_thread):
    from icg.presets import tiny_preset
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel
    from icg.testing import tiny_clip_model

    clip, processor = tiny_clip_model()
    clip.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        judge = PersonalizedRewardModel(
            PersonalizedRewardConfig(hidden_size=16, num_heads=2), clip, processor
        )
    judge.save_pretrained(tmp_path / "judge")
    spec = tiny_preset(tmp_path / "tiny")
    spec = dataclasses.replace(spec, clip=str(tmp_path / "clip"), reward_judge=str(tmp_path / "judge"),
                               num_inference_steps=2)  # fmt: skip
    options = {"cache_dir": tmp_path / "covers", "out_dir": tmp_path / "out", "progress": False}
    result = evaluate_personalization(
        spec, data, max_items=2, max_users=8, scales=(0.0, 1.0, 2.0), adapters={"again": spec.adapter},
        bootstraps=20, permutations=20, command="test", **options,
    )  # fmt: skip
    rows, sweep = result["rows"], result["scales"]
    assert list(rows) == ["rule_based", "context_only", "icg", "cold_start", "again", "oracle"]
    # the cold-start row: words only, its own pairs (from the other half of the ratings)
    profiles = result["setup"]["cold_start_profiles"]
    assert len(profiles) == 8 and any(p.startswith("likes ") for p in profiles)
    assert rows["cold_start"]["lean_test"]["n_pairs"] == result["setup"]["n_cold_start_pairs"]
    assert rows["cold_start"]["between_user_pixel_std"] > 0
    for name in ("rule_based", "context_only"):  # one cover for every user: no personalization at all
        assert rows[name]["lean_test"]["win_rate"] == 0.5 and rows[name]["between_user_pixel_std"] == 0.0
    assert rows["icg"]["between_user_pixel_std"] > 0 and sweep["0.0"] == rows["context_only"]
    assert sweep["2.0"]["between_user_pixel_std"] != rows["icg"]["between_user_pixel_std"]
    assert rows["again"]["lean_test"] == rows["icg"]["lean_test"]  # the same adapter as an extra row
    # the oracle re-renders per user (a random CLIP cannot tell genres, so its win rate says nothing here)
    assert rows["oracle"]["between_user_pixel_std"] > 0 and rows["oracle"]["lean_test"]["n_pairs"] > 0
    for row in rows.values():
        assert 0 < row["ssim"] <= 1 and row["LPIPS-miniCLIP"] >= 0 and 0 <= row["retrieval_r1"] <= 1
    written = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert written["setup"]["command"] == "test" and written["setup"]["machine"]["cpu_count"]
    markdown = (tmp_path / "out" / MD_NAME).read_text()
    assert "| cold_start |" in markdown and "*cold_start*" in markdown
    assert "| icg |" in markdown and (tmp_path / "out" / CURVE_NAME).is_file()
    with pytest.raises(ValueError, match="may not be named"):
        evaluate_personalization(spec, data, adapters={"oracle": spec.adapter}, **options)


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from icg.cli import main

    monkeypatch.setattr(sys, "argv", ["icg", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--adapter", "no-equals-sign"], "--adapter must be NAME=PATH"),
        (["--adapter", "a=x", "--adapter", "a=y"], "given twice"),
        (["--adapter", "mine=/no/such/folder"], "not an adapter folder"),
        (["--scales", "0,one"], "--scales must be comma-separated numbers"),
        (["--scales", "0,-1"], "finite numbers ≥ 0"),
        (["--max-users", "1"], "--max-users ≥ 2"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(extra, needle, tmp_path, monkeypatch, capsys):
    code = run_cli(["evaluate", "personalization", "--out", tmp_path / "out", *extra], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out" / JSON_NAME).exists()
