"""Preference-pair rules: filter, top-k1/bottom-k2, ties, split, determinism, click-only sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icg.data.pairs import PairConfig, build_pairs
from icg.errors import DataError


def _table(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "signal"])


def _random_interactions(n_users: int = 300, n_items: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(2, 30))
        for i in rng.choice(n_items, size=n, replace=False):
            rows.append((f"u{u}", f"i{i}", float(rng.integers(1, 6))))
    return _table(rows)


def test_users_below_six_interactions_are_dropped() -> None:
    rows = [("a", f"i{i}", float(i)) for i in range(5)] + [("b", f"i{i}", float(i)) for i in range(6)]
    pairs, summary = build_pairs(_table(rows), PairConfig(k1=2, k2=2))
    assert set(pairs["user_id"]) == {"b"}
    assert summary.users_kept == 1 and summary.users_dropped == 1


def test_top_k1_bottom_k2_exact_pairs() -> None:
    rows = [("u", f"i{i}", float(i)) for i in range(10)]  # signals 0..9, all distinct
    pairs, _ = build_pairs(_table(rows), PairConfig(k1=2, k2=3))
    got = set(zip(pairs["pos_item_id"], pairs["neg_item_id"], strict=True))
    assert got == {(p, n) for p in ("i9", "i8") for n in ("i0", "i1", "i2")}


def test_no_pair_between_equal_signals_and_at_most_k1_k2() -> None:
    rows = [("u", f"i{i}", s) for i, s in enumerate([5, 5, 5, 5, 5, 5, 4, 4])]
    pairs, _ = build_pairs(_table(rows), PairConfig(k1=3, k2=3))
    # bottom three are (4, 4, 5): the 5 may not pair with the top 5s
    assert len(pairs) == 3 * 2
    assert (pairs["pos_signal"] > pairs["neg_signal"]).all()
    data = _random_interactions()
    pairs, _ = build_pairs(data, PairConfig(k1=4, k2=3))
    assert pairs.groupby("user_id").size().max() <= 12
    assert (pairs["pos_signal"] > pairs["neg_signal"]).all()


def test_all_equal_signals_of_one_user_give_no_pairs() -> None:
    rows = [("flat", f"i{i}", 3.0) for i in range(8)] + [("v", f"i{i}", float(i)) for i in range(8)]
    pairs, summary = build_pairs(_table(rows))
    assert "flat" not in set(pairs["user_id"])
    assert summary.users_without_pairs == 1


def test_split_is_user_disjoint_and_80_10_10() -> None:
    pairs, summary = build_pairs(_random_interactions(n_users=1000), PairConfig(seed=3))
    users = {s: set(pairs.loc[pairs["split"] == s, "user_id"]) for s in ("train", "val", "test")}
    assert not (users["train"] & users["val"]) and not (users["train"] & users["test"])
    assert not (users["val"] & users["test"])
    kept = summary.users_kept
    assert summary.users_per_split["train"] == round(0.8 * kept)
    assert sum(summary.users_per_split.values()) == kept
    assert sum(summary.pairs_per_split.values()) == summary.pairs == len(pairs)


def test_pairs_are_deterministic_and_independent_of_row_order() -> None:
    data = _random_interactions()
    first, _ = build_pairs(data, PairConfig(seed=7))
    shuffled = data.sample(frac=1.0, random_state=1).reset_index(drop=True)
    second, _ = build_pairs(shuffled, PairConfig(seed=7))
    key = ["user_id", "pos_item_id", "neg_item_id"]
    pd.testing.assert_frame_equal(
        first.sort_values(key).reset_index(drop=True), second.sort_values(key).reset_index(drop=True)
    )
    other_seed, _ = build_pairs(data, PairConfig(seed=8))
    assert not first["split"].equals(other_seed["split"])


def test_click_only_logs_sample_unseen_negatives() -> None:
    data = _random_interactions(n_users=200, n_items=60).assign(signal=1.0)
    pairs, summary = build_pairs(data, PairConfig(k1=3, k2=4, seed=0))
    assert summary.negatives == "sampled-unseen"
    seen = set(zip(data["user_id"], data["item_id"], strict=True))
    assert not any((u, n) in seen for u, n in zip(pairs["user_id"], pairs["neg_item_id"], strict=True))
    assert all((u, p) in seen for u, p in zip(pairs["user_id"], pairs["pos_item_id"], strict=True))
    per_user = pairs.groupby("user_id")["neg_item_id"].nunique()
    assert (per_user == 4).all()
    # negatives are spread over the catalogue, not the lowest item codes
    assert pairs["neg_item_id"].nunique() > 40


def test_bad_input_is_reported() -> None:
    with pytest.raises(DataError, match="signal"):
        build_pairs(pd.DataFrame({"user_id": ["a"], "item_id": ["b"]}))
    with pytest.raises(DataError, match="non-numeric"):
        build_pairs(_table([("a", "b", 1.0)]).assign(signal=["x"]))
    with pytest.raises(ValueError, match="k1"):
        PairConfig(k1=0)
