"""The user encoder's split of interactions: per user, which positives train and which are held out.

Its own module because the trainer and the stated-taste table both need the *same* split (the table reads
training ratings only), and neither should import the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from icg.data.records import InteractionData
from icg.users.features import FeatureVocab


@dataclasses.dataclass(frozen=True)
class Split:
    """Index arrays (vocabulary rows) for training and held-out evaluation."""

    train_users: np.ndarray  # (P,) train positives
    train_items: np.ndarray  # (P,)
    train_seen: np.ndarray  # sorted user * n_items + item keys of all train interactions
    all_seen: np.ndarray  # same, over all interactions
    test_users: np.ndarray  # (T,) held-out positives
    test_items: np.ndarray  # (T,)
    n_items: int


def split_interactions(
    data: InteractionData,
    vocab: FeatureVocab,
    *,
    seed: int,
    positive_threshold: float | None,
    test_fraction: float,
) -> Split:
    """Per-user held-out positives, deterministic by seed (vectorized; see module doc)."""
    inter = data.interactions
    users = vocab.users.lookup(inter["user_id"].astype(str))
    items = vocab.items.lookup(inter["item_id"].astype(str))
    signal = inter["signal"].to_numpy(dtype=float)
    if positive_threshold is not None and data.signal_name == "rating":
        positive = signal >= positive_threshold
    else:
        positive = np.ones(len(inter), dtype=bool)
    frame = pd.DataFrame({"u": users, "i": items, "pos": positive})
    frame = frame.groupby(["u", "i"], sort=True, as_index=False)["pos"].max()  # one row per (user, item)
    pos = frame.loc[frame["pos"], ["u", "i"]].reset_index(drop=True)
    if pos.empty:
        raise ValueError(f"{data.name}: no positive interactions (positive_threshold={positive_threshold})")
    rng = np.random.default_rng([seed, 7919])
    pos["key"] = rng.random(len(pos))
    pos = pos.sort_values(["u", "key"], kind="stable")
    rank = pos.groupby("u").cumcount().to_numpy()
    count = pos.groupby("u")["u"].transform("size").to_numpy()
    n_test = np.where(count >= 2, np.maximum(1, np.floor(test_fraction * count)), 0)
    is_test = rank < n_test
    n_items = vocab.items.size
    all_keys = frame["u"].to_numpy() * n_items + frame["i"].to_numpy()
    test_keys = pos.loc[is_test, "u"].to_numpy() * n_items + pos.loc[is_test, "i"].to_numpy()
    train_seen = np.setdiff1d(all_keys, test_keys)
    return Split(
        train_users=pos.loc[~is_test, "u"].to_numpy(np.int64),
        train_items=pos.loc[~is_test, "i"].to_numpy(np.int64),
        train_seen=train_seen,
        all_seen=np.unique(all_keys),
        test_users=pos.loc[is_test, "u"].to_numpy(np.int64),
        test_items=pos.loc[is_test, "i"].to_numpy(np.int64),
        n_items=n_items,
    )
