"""User profiles the personalized reward model reads, and the genre vocabulary of its stated taste.

Two styles, both built from the user's interactions *outside all their pairs* (no pair label leaks):
"watched" (the paper's rows of Table 6) names the most watched genres; "taste" (issue 18, the mini's) states
liked and disliked genres from the user's ratings relative to a baseline predictor, which the taste reward
model parses back (`icg.data.taste.parse_taste`).
"""

from __future__ import annotations

import logging

import pandas as pd

from icg.context.teacher import join_words
from icg.data.covers.render import item_genres
from icg.data.records import InteractionData
from icg.data.taste import taste_clauses
from icg.data.taste_pairs import fit_baseline, history, taste_scores

logger = logging.getLogger(__name__)

PROFILE_STYLES = ("watched", "taste")


def _two_user(pairs: pd.DataFrame) -> pd.DataFrame:
    """Paper-format pairs (user_id, pos_item_id, neg_item_id) → the two-user columns of taste_pairs."""
    if "pos_user_id" in pairs.columns:
        return pairs
    return pairs.assign(pos_user_id=pairs["user_id"], neg_user_id=pairs["user_id"], kind="paper")


def user_profiles(
    data: InteractionData,
    pairs: pd.DataFrame,
    top_genres: int = 3,
    *,
    style: str = "taste",
    n_taste: int = 5,
) -> dict[str, str]:
    """Profile per user id, built from the user's interactions outside all their pairs (no label leaks).

    style "watched" (the paper rows): 'likes drama, comedy and thriller; a 24-year-old male technician', the
    `top_genres` most watched genres (interaction counts, ties by name). style "taste" (issue 18, the mini's):
    'likes horror, …; dislikes romance, …; a 24-year-old …', up to `n_taste` genres each way ranked by the
    shrunk mean residual rating (`taste_scores`, baseline fitted on the pairs' train users). Genres come
    first, so a short text encoder truncates the demographics.
    """
    if style not in PROFILE_STYLES:
        raise ValueError(f"unknown profile style {style!r}; expected one of {PROFILE_STYLES}")
    base = dict(zip(data.users["user_id"].astype(str), data.users["profile"].astype(str), strict=True))
    pairs = _two_user(pairs)
    hist = history(data.interactions, pairs)
    genres = data.items.set_index(data.items["item_id"].astype(str))["genres"].map(item_genres)
    if style == "taste":
        train_users = {str(u) for u in pairs.loc[pairs["split"].astype(str) == "train", "pos_user_id"]}
        if not hist["user_id"].isin(train_users).any():  # nothing outside the pairs: no stated taste
            logger.warning("no training user has interactions outside their pairs: profiles state no taste")
            return base
        scores = taste_scores(hist, fit_baseline(hist, train_users), genres)  # biases from history too
        scores = scores.drop(columns=[c for c in scores.columns if str(c).lower() == "unknown"])
        clauses = {u: taste_clauses(scores.loc[u], n_taste, n_taste) for u in scores.index}
        return {u: "; ".join(c for c in (clauses.get(u, ""), p) if c) for u, p in base.items()}
    if top_genres <= 0:
        return base
    hist = hist[["user_id", "item_id"]]
    hist = hist.assign(genre=hist["item_id"].map(genres)).explode("genre").dropna(subset=["genre"])
    counts = hist.groupby(["user_id", "genre"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n", "genre"], ascending=[True, False, True])
    top = counts.groupby("user_id").head(top_genres).groupby("user_id")["genre"].agg(list)
    return {
        u: (f"likes {join_words([g.lower() for g in top[u]])}; {p}" if u in top.index else p)
        for u, p in base.items()
    }


def dataset_genres(items: pd.DataFrame) -> tuple[str, ...]:
    """The genre vocabulary of an items table (lower case, sorted, without 'unknown'): `taste_genres`."""
    return tuple(sorted({g.lower() for t in items["genres"] for g in item_genres(t)} - {"unknown"}))
