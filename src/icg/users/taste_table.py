"""The user encoder's taste table: each known user's signed genre taste from training ratings (issue 18).

A cold-start user who states a taste ("loves horror and sci-fi") is encoded through the known users whose
taste is nearest (`TwoTowerModel.taste_neighbours`). Their taste is the one the taste reward model's profiles
state (`icg.data.taste_pairs.taste_scores`: shrunk mean residual rating per genre against a regularised
baseline), so "likes horror" means the same thing in a written profile, the reward model and this table. It
is read from the user encoder's *training* ratings only: the positives `split_interactions` holds out for
its evaluation (same seed, threshold and fraction as `train_user_encoder`) are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from icg.data.records import InteractionData
from icg.data.taste_pairs import fit_baseline, taste_scores
from icg.users.features import FeatureVocab
from icg.users.split import split_interactions
from icg.users.two_tower import TwoTowerModel


def training_ratings(
    data: InteractionData,
    vocab: FeatureVocab,
    *,
    seed: int = 0,
    positive_threshold: float | None = 4.0,
    test_fraction: float = 0.1,
) -> pd.DataFrame:
    """The interactions `train_user_encoder` trains on: all rows but its held-out (user, item) positives."""
    split = split_interactions(
        data, vocab, seed=seed, positive_threshold=positive_threshold, test_fraction=test_fraction
    )
    inter = data.interactions
    users = vocab.users.lookup(inter["user_id"].astype(str))
    items = vocab.items.lookup(inter["item_id"].astype(str))
    held_out = np.isin(users * split.n_items + items, split.test_users * split.n_items + split.test_items)
    return inter[~held_out]


def taste_table(
    data: InteractionData,
    vocab: FeatureVocab,
    *,
    seed: int = 0,
    positive_threshold: float | None = 4.0,
    test_fraction: float = 0.1,
) -> torch.Tensor:
    """(n_users, n_genres) float32: each user's `taste_scores` over `vocab.genres` from training ratings.

    Rows follow `vocab.users` (the `<unk>` row and users without ratings are 0), columns `vocab.genres`
    (the `<unk>` column and an "unknown" genre are 0, as in `FeatureVocab.stated_taste`)."""
    train = training_ratings(
        data, vocab, seed=seed, positive_threshold=positive_threshold, test_fraction=test_fraction
    )
    table = torch.zeros(vocab.users.size, vocab.genres.size)
    if train.empty:
        return table
    genres = pd.Series(
        [tuple(str(g) for g in gs) for gs in data.items["genres"]], index=data.items["item_id"].astype(str)
    )
    genres = genres[~genres.index.duplicated()]
    users = set(train["user_id"].astype(str))
    scores = taste_scores(train, fit_baseline(train, users), genres)  # users × genres
    rows = vocab.users.lookup(scores.index)
    cols = vocab.genres.lookup(scores.columns)
    keep = [
        n
        for n, (c, g) in enumerate(zip(cols, scores.columns, strict=True))
        if c > 0 and str(g).lower() != "unknown"
    ]
    values = torch.from_numpy(scores.to_numpy(dtype=np.float32)[:, keep])
    table[torch.as_tensor(rows.copy())[:, None], torch.as_tensor(cols[keep].copy())[None, :]] = values
    table[0] = 0.0
    return table


def attach_taste_table(
    model: TwoTowerModel,
    data: InteractionData,
    *,
    seed: int = 0,
    positive_threshold: float | None = 4.0,
    test_fraction: float = 0.1,
) -> TwoTowerModel:
    """Give a trained encoder (also one saved before issue 18) its taste table; save it again to keep it.

    The split settings must be the ones it was trained with (`train_user_encoder`'s defaults here; see its
    metrics.json), so the table reads its training ratings only. No weight changes."""
    vocab = model.require_vocab()
    model.set_taste_table(
        taste_table(
            data, vocab, seed=seed, positive_threshold=positive_threshold, test_fraction=test_fraction
        )
    )
    return model
