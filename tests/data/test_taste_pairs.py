"""Pairs that need the user (issue 18): debiased within-user pairs, same-item two-user pairs, stated taste."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from icg.data.pairs import PairConfig
from icg.data.taste import parse_taste, taste_clauses
from icg.data.taste_pairs import (
    KINDS,
    TASTE_PAIR_COLUMNS,
    TastePairConfig,
    build_taste_pairs,
    fit_baseline,
    history,
)

GENRES = ("action", "drama", "horror", "sci-fi")


def _ratings(n_users: int = 40, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Item quality + a per-user taste for even/odd items + noise, every user rates 20 random items."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0, 1, n_items)
    rows = []
    for u in range(n_users):
        taste = 1.0 if u % 2 else -1.0
        for i in rng.choice(n_items, 20, replace=False):
            r = 3 + quality[i] + taste * (1 if i % 2 else -1) + rng.normal(0, 0.5)
            rows.append((str(u), str(i), float(np.clip(np.round(r), 1, 5)), 0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "signal", "timestamp"])


def test_every_kind_is_built_user_disjoint_and_well_formed() -> None:
    inter = _ratings()
    pairs, baseline, info = build_taste_pairs(inter, TastePairConfig(pairs=PairConfig(seed=3)))
    assert list(pairs.columns) == list(TASTE_PAIR_COLUMNS) and set(pairs["kind"]) == set(KINDS)
    within = pairs[pairs["kind"] != "same_item"]
    assert (within["pos_user_id"] == within["neg_user_id"]).all()
    same = pairs[pairs["kind"] == "same_item"]
    assert (same["pos_item_id"] == same["neg_item_id"]).all() and (
        same["pos_user_id"] != same["neg_user_id"]
    ).all()
    rating = inter.set_index(["user_id", "item_id"])["signal"]
    assert (
        rating.loc[list(zip(same["pos_user_id"], same["pos_item_id"], strict=True))].to_numpy() >= 4
    ).all()
    assert (
        rating.loc[list(zip(same["neg_user_id"], same["neg_item_id"], strict=True))].to_numpy() <= 2
    ).all()
    split_of = {}
    for side in ("pos", "neg"):  # every user has one split over every kind
        for u, s in zip(pairs[f"{side}_user_id"], pairs["split"], strict=True):
            assert split_of.setdefault(u, s) == s
    assert info["pairs"]["same_item"]["train"] == int(
        ((pairs["kind"] == "same_item") & (pairs["split"] == "train")).sum()
    )
    # debiased pairs rank by the residual: the preferred item's r − b_item is strictly higher
    deb = pairs[pairs["kind"] == "debiased"]
    key = lambda u, i: rating[(u, i)] - baseline.item_bias.get(i, 0.0)  # noqa: E731
    assert all(
        key(u, p) > key(u, n)
        for u, p, n in zip(deb["pos_user_id"], deb["pos_item_id"], deb["neg_item_id"], strict=True)
    )


def test_baseline_item_biases_come_from_training_users_only() -> None:
    inter = _ratings()
    base = fit_baseline(inter, {"0", "1", "2"}, reg_item=0.0)
    changed = inter.copy()
    changed.loc[changed["user_id"] == "9", "signal"] = 5.0  # a user outside the training set
    again = fit_baseline(changed, {"0", "1", "2"}, reg_item=0.0)
    pd.testing.assert_series_equal(base.item_bias, again.item_bias)
    assert again.user_bias["9"] > base.user_bias["9"]  # the user's own bias does follow their ratings
    with pytest.raises(Exception, match="no interactions of training users"):
        fit_baseline(inter, {"nobody"})


def test_history_leaves_out_every_pair_item_of_the_user() -> None:
    inter = _ratings()
    pairs, _, _ = build_taste_pairs(inter)
    hist = history(inter, pairs)
    used = set(zip(pairs["pos_user_id"], pairs["pos_item_id"], strict=True)) | set(
        zip(pairs["neg_user_id"], pairs["neg_item_id"], strict=True)
    )
    assert not used & set(zip(hist["user_id"], hist["item_id"], strict=True))
    assert len(hist) + len(used) == len(inter)


def test_taste_sentences_round_trip_and_free_text_reads() -> None:
    scores = pd.Series({"Horror": 0.5, "Sci-Fi": 0.2, "Drama": -0.3, "Action": 0.0})
    text = taste_clauses(scores)
    assert text == "likes horror and sci-fi; dislikes drama"
    taste = parse_taste([text + "; a 24-year-old male technician"], GENRES)
    assert taste[0, GENRES.index("horror")] == 1.0 and 0 < taste[0, GENRES.index("sci-fi")] < 1.0
    assert taste[0, GENRES.index("drama")] == -1.0 and taste[0, GENRES.index("action")] == 0.0
    free = parse_taste(["loves science fiction and horror, hates dramas", "a 30-year-old writer"], GENRES)
    assert free[0, GENRES.index("sci-fi")] == 1.0 and free[0, GENRES.index("drama")] == -1.0
    assert torch.equal(free[1], torch.zeros(len(GENRES)))
    with pytest.raises(ValueError, match="not one string"):
        parse_taste("likes horror", GENRES)
    with pytest.raises(ValueError, match="genre vocabulary"):
        parse_taste(["likes horror"], ())
    with pytest.raises(ValueError, match="high"):
        TastePairConfig(high=2.0, low=2.0)
