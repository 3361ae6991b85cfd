"""Preference pairs whose label item quality cannot explain, and the user's taste outside them (issue 18).

The paper's pairs (`build_pairs`: a user's top-k1 vs bottom-k2 rated items) are mostly explained by which item
is better for everybody: on ml-100k an item's mean rating ranks 82 % of them right, blind to the user.
A reward model trained on them has little reason to read the user. Two more pair kinds need the user:

- **debiased** (within user): each user's items ranked by the residual r − μ − b_item − b_user of a baseline
  predictor whose μ and item biases are fitted on the *training* users only (regularised means, Koren 2008).
  Within one user μ and b_user are constants, so the ranking is by r − b_item: "liked more than the crowd
  did". An item-mean scorer cannot rank these by item quality (it scores 37 % on ml-100k: the residual
  favours items rated above their average, which are more often the weaker ones).
- **same_item** (two users, one item): item i is among u's positive items and among v's negative items (either
  pair kind), u rated it ≥ `high` and v ≤ `low`, and u's residual is above v's: R(u, cover_i) > R(v, cover_i).
  Any item-only scorer ties on them (50 %).

Every kind uses the user split of `build_pairs` for the same seed, so a user is train, val or test in all of
them. Users' taste (`taste_scores`) is read from their ratings *outside* all their pairs, so a profile built
from it leaks no pair label; same-item pairs only use (user, item) rows that are already in that user's
within-user pairs, so they take nothing more from the history.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from icg.data.pairs import SPLITS, PairConfig, build_pairs
from icg.errors import DataError

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("paper", "debiased", "same_item")
# One table for every kind: the preferred (user, item) and the other (user, item); within-user kinds repeat
# the user.
TASTE_PAIR_COLUMNS: tuple[str, ...] = (
    "pos_user_id", "pos_item_id", "neg_user_id", "neg_item_id", "kind", "split",
)  # fmt: skip


@dataclass(frozen=True)
class TastePairConfig:
    """The pair kinds beside the paper's, and the baseline predictor that debiases them."""

    pairs: PairConfig = PairConfig()
    reg_item: float = 10.0  # shrinkage of item biases towards 0 (in ratings)
    reg_user: float = 10.0  # shrinkage of user biases towards 0
    high: float = 4.0  # same-item: the preferring user's rating is at least this
    low: float = 2.0  # same-item: the other user's rating is at most this
    max_same_item_per_item: int = 20  # same-item pairs kept per (item, split), seeded sample

    def __post_init__(self) -> None:
        if self.reg_item < 0 or self.reg_user < 0:
            raise ValueError(f"reg_item and reg_user must be >= 0, got {self.reg_item}, {self.reg_user}")
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be above low ({self.low})")
        if self.max_same_item_per_item < 1:
            raise ValueError(f"max_same_item_per_item must be >= 1, got {self.max_same_item_per_item}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """r̂(u, i) = μ + b_item[i] + b_user[u]; μ and b_item from training users only."""

    mu: float
    item_bias: pd.Series  # item_id → b_item (items no training user rated: 0)
    user_bias: pd.Series  # user_id → b_user (every user, from their own ratings given μ and b_item)

    def residuals(self, interactions: pd.DataFrame) -> np.ndarray:
        """r − r̂ per interaction row (float64)."""
        bi = interactions["item_id"].astype(str).map(self.item_bias).fillna(0.0).to_numpy()
        bu = interactions["user_id"].astype(str).map(self.user_bias).fillna(0.0).to_numpy()
        return interactions["signal"].to_numpy(dtype=np.float64) - self.mu - bi - bu


def fit_baseline(
    interactions: pd.DataFrame, train_users: set[str], reg_item: float = 10.0, reg_user: float = 10.0
) -> Baseline:
    """Regularised biases: b_i = Σ(r − μ)/(n_i + λ_i) over the training users' ratings, then for every user
    b_u = Σ(r − μ − b_i)/(n_u + λ_u)."""
    inter = interactions.assign(
        user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str)
    )
    train = inter[inter["user_id"].isin(train_users)]
    if train.empty:
        raise DataError("no interactions of training users to fit the baseline on", expected="train users")
    mu = float(train["signal"].mean())
    grouped = (train["signal"] - mu).groupby(train["item_id"])
    item_bias = grouped.sum() / (grouped.size() + reg_item)
    rest = inter["signal"] - mu - inter["item_id"].map(item_bias).fillna(0.0)
    by_user = rest.groupby(inter["user_id"])
    user_bias = by_user.sum() / (by_user.size() + reg_user)
    return Baseline(mu, item_bias, user_bias)


def _within(pairs: pd.DataFrame, kind: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pos_user_id": pairs["user_id"].astype(str).to_numpy(),
            "pos_item_id": pairs["pos_item_id"].astype(str).to_numpy(),
            "neg_user_id": pairs["user_id"].astype(str).to_numpy(),
            "neg_item_id": pairs["neg_item_id"].astype(str).to_numpy(),
            "kind": kind,
            "split": pairs["split"].astype(str).to_numpy(),
        }
    )


def _same_item(
    within: pd.DataFrame, inter: pd.DataFrame, residual: pd.Series, config: TastePairConfig
) -> pd.DataFrame:
    """(u, i) positives × (v, i) negatives of within-user pairs, same split, rating and residual ordered."""
    rating = inter.set_index(["user_id", "item_id"])["signal"]
    sides = []
    for side in ("pos", "neg"):
        part = within[[f"{side}_user_id", f"{side}_item_id", "split"]].drop_duplicates()
        part = part.set_axis(["user_id", "item_id", "split"], axis=1)
        keys = pd.MultiIndex.from_frame(part[["user_id", "item_id"]])
        part = part.assign(r=rating.reindex(keys).to_numpy(), e=residual.reindex(keys).to_numpy())
        keep = part["r"] >= config.high if side == "pos" else part["r"] <= config.low
        sides.append(part[keep])
    high, low = sides
    both = high.merge(low, on=["item_id", "split"], suffixes=("_u", "_v"))
    both = both[(both["user_id_u"] != both["user_id_v"]) & (both["e_u"] > both["e_v"])]
    if both.empty:
        return pd.DataFrame(columns=list(TASTE_PAIR_COLUMNS))
    rng = np.random.default_rng(config.pairs.seed + 7)
    both = both.assign(_key=rng.random(len(both))).sort_values(["item_id", "split", "_key"])
    both = both.groupby(["item_id", "split"], sort=False).head(config.max_same_item_per_item)
    both = both.sort_values(["split", "item_id", "user_id_u", "user_id_v"])
    return pd.DataFrame(
        {
            "pos_user_id": both["user_id_u"].to_numpy(),
            "pos_item_id": both["item_id"].to_numpy(),
            "neg_user_id": both["user_id_v"].to_numpy(),
            "neg_item_id": both["item_id"].to_numpy(),
            "kind": "same_item",
            "split": both["split"].to_numpy(),
        }
    )


def _user_split(pairs: pd.DataFrame) -> pd.Series:
    first = pairs.drop_duplicates("user_id")
    return pd.Series(first["split"].astype(str).to_numpy(), index=first["user_id"].astype(str).to_numpy())


def build_taste_pairs(
    interactions: pd.DataFrame, config: TastePairConfig | None = None
) -> tuple[pd.DataFrame, Baseline, dict[str, object]]:
    """Pairs of every kind (columns TASTE_PAIR_COLUMNS), the baseline and a summary (pairs per kind/split)."""
    config = config or TastePairConfig()
    paper, summary = build_pairs(interactions, config.pairs)
    split_of = _user_split(paper)
    train_users = set(split_of.index[split_of == "train"])
    baseline = fit_baseline(interactions, train_users, config.reg_item, config.reg_user)
    inter = interactions.assign(
        user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str)
    )
    resid = baseline.residuals(inter)
    debiased, _ = build_pairs(inter.assign(signal=resid), config.pairs)
    check = _user_split(debiased)
    common = check.index.intersection(split_of.index)
    if not (check[common] == split_of[common]).all():
        raise RuntimeError("debiased pairs split users differently from the paper's pairs")  # a bug, not data
    within = pd.concat([_within(paper, "paper"), _within(debiased, "debiased")], ignore_index=True)
    residual = pd.Series(resid, index=pd.MultiIndex.from_frame(inter[["user_id", "item_id"]]))
    residual = residual[~residual.index.duplicated()]
    same = _same_item(within, inter.drop_duplicates(["user_id", "item_id"]), residual, config)
    pairs = pd.concat([within, same], ignore_index=True)
    counts = pairs.groupby(["kind", "split"]).size()
    info: dict[str, object] = {
        "config": config.to_dict(),
        "pairs": {k: {s: int(counts.get((k, s), 0)) for s in SPLITS} for k in KINDS},
        "users_per_split": summary.users_per_split,
        "baseline_mu": round(baseline.mu, 4),
    }
    logger.info("taste pairs: %s", info["pairs"])
    return pairs, baseline, info


def pair_items(pairs: pd.DataFrame) -> pd.DataFrame:
    """Every (user_id, item_id) that appears on either side of a pair, deduplicated."""
    sides = [
        pairs[[f"{s}_user_id", f"{s}_item_id"]].set_axis(["user_id", "item_id"], axis=1)
        for s in ("pos", "neg")
    ]
    return pd.concat(sides).astype(str).drop_duplicates().reset_index(drop=True)


def history(interactions: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The interactions outside every pair of their user: what a user's profile may be built from."""
    inter = interactions.assign(
        user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str)
    )
    used = pd.MultiIndex.from_frame(pair_items(pairs))
    return inter[~pd.MultiIndex.from_frame(inter[["user_id", "item_id"]]).isin(used)]


def taste_scores(
    hist: pd.DataFrame, baseline: Baseline, item_genres: pd.Series, shrink: float = 3.0
) -> pd.DataFrame:
    """Users × genres: shrunk mean residual of the user's history ratings of items of that genre.

    Positive = the user rates that genre above what the item and user biases predict; 0 when unseen."""
    resid = baseline.residuals(hist)
    frame = pd.DataFrame({"user_id": hist["user_id"].astype(str).to_numpy(), "e": resid})
    frame["genre"] = hist["item_id"].astype(str).map(item_genres).to_numpy()
    frame = frame.explode("genre").dropna(subset=["genre"])
    grouped = frame.groupby(["user_id", "genre"])["e"]
    score = grouped.sum() / (grouped.size() + shrink)
    return score.unstack(fill_value=0.0)
