"""The seeded item-level train/validation/test split shared by the mini models, evaluation and baselines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ItemSplit:
    """Row positions (into the items table) of train, validation and test items."""

    train: np.ndarray  # (N_train,)
    val: np.ndarray  # (N_val,)
    test: np.ndarray  # (N_test,)


def split_items(n_items: int, seed: int, val_fraction: float, test_fraction: float) -> ItemSplit:
    """A seeded item-level split; validation and test get at least 2 items each (retrieval needs a choice)."""
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    n_test = max(2, round(test_fraction * n_items))
    n_val = max(2, round(val_fraction * n_items))
    if n_items - n_test - n_val < 2:
        raise ValueError(
            f"{n_items} items are too few for a train/val/test split ({n_val} val, {n_test} test)"
        )
    order = np.random.default_rng([seed, 2718]).permutation(n_items)
    return ItemSplit(
        train=np.sort(order[n_test + n_val :]),
        val=np.sort(order[n_test : n_test + n_val]),
        test=np.sort(order[:n_test]),
    )
