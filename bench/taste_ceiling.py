"""How far can a user-reading scorer go on each pair kind? Non-learned references and their trade-off.

Issue 18 asks one reward score for ≥ 82 % on the paper's pairs and ≥ 65 % on debiased pairs. This measures,
on the val + test users of `build_taste_pairs` (seed 0), what the information at hand allows without learning:

- item mean rating (training users), user mean rating (the user's ratings outside their pairs);
- stated taste · item genres: the taste profile's parsed genre vector (what the taste reward model reads);
- item-kNN on the user's history residuals: Σ_j sim(i, j)·e_uj / (Σ_j |sim(i, j)|·[u rated j] + 1), with sim
  the cosine of item residual columns over the training users — item-level taste, richer than genres;
- the frontier z(item mean) + λ·(stated taste)/0.1 for a few λ: one score that mixes quality and taste.

    .venv/bin/python bench/taste_ceiling.py [--seed 0]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from icg.data.pairs import PairConfig
from icg.data.registry import load_dataset
from icg.data.taste_pairs import KINDS, TastePairConfig, build_taste_pairs, fit_baseline, history
from icg.evaluation.table6 import item_scorer, reference_accuracies, taste_scorer
from icg.training.reward_profiles import user_profiles


def accuracy(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def knn_scorer(inter: pd.DataFrame, pairs: pd.DataFrame):  # noqa: ANN201 - a closure
    """Item-kNN over the users' history residuals (baseline fitted on the training users' history)."""
    train = set(pairs.loc[pairs["split"] == "train", "pos_user_id"])
    hist = history(inter, pairs)
    hist = hist.assign(e=fit_baseline(hist, train).residuals(hist))
    items = {x: n for n, x in enumerate(sorted(inter["item_id"].unique()))}
    users = {x: n for n, x in enumerate(sorted(inter["user_id"].unique()))}
    resid = np.zeros((len(users), len(items)))
    rated = np.zeros_like(resid)
    rows, cols = hist["user_id"].map(users).to_numpy(), hist["item_id"].map(items).to_numpy()
    resid[rows, cols], rated[rows, cols] = hist["e"].to_numpy(), 1.0
    columns = resid[[users[u] for u in sorted(train)]]
    norm = np.sqrt((columns**2).sum(0)) + 1e-6
    sim = (columns.T @ columns) / np.outer(norm, norm)
    np.fill_diagonal(sim, 0.0)

    def score(u: pd.Series, i: pd.Series) -> np.ndarray:
        su, si = np.array([users[x] for x in u]), np.array([items[x] for x in i])
        s = sim[si]  # (P, N_items)
        return (s * resid[su]).sum(1) / ((np.abs(s) * rated[su]).sum(1) + 1.0)

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset("ml-100k")
    pairs, _, _ = build_taste_pairs(data.interactions, TastePairConfig(pairs=PairConfig(seed=args.seed)))
    pairs = pairs.astype({"split": str})
    inter = data.interactions.astype({"user_id": str, "item_id": str})
    profiles = user_profiles(data, pairs, style="taste")
    refs = reference_accuracies(data, pairs, profiles)
    held = pairs[pairs["split"].isin(["val", "test"])]
    knn = knn_scorer(inter, pairs)
    out: dict[str, dict[str, float]] = {name: {} for name in (*refs, "item_knn")}
    for kind in KINDS:
        part = held[held["kind"] == kind]
        for name in refs:  # val and test weighted by their pair counts
            n = {s: int((part["split"] == s).sum()) for s in ("val", "test")}
            out[name][kind] = sum(refs[name][s][kind] * n[s] for s in n) / sum(n.values())
        pos = knn(part["pos_user_id"], part["pos_item_id"])
        out["item_knn"][kind] = accuracy(pos, knn(part["neg_user_id"], part["neg_item_id"]))
    print(f"held-out (val + test) users, seed {args.seed}: pair accuracy (%)")
    print(f"{'scorer':<14}" + "".join(f"{k:>11}" for k in KINDS))
    for name, row in out.items():
        print(f"{name:<14}" + "".join(f"{100 * row[k]:>11.1f}" for k in KINDS))
    # the trade-off of one score: item quality + λ · stated taste
    train = inter[inter["user_id"].isin(set(pairs.loc[pairs["split"] == "train", "pos_user_id"]))]
    mean = train.groupby("item_id")["signal"].mean()
    quality = item_scorer((mean - mean.mean()) / mean.std())
    taste = taste_scorer(data, profiles)
    frontier = {}
    for lam in (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 1.0, 3.0):
        row = {}
        for kind in KINDS:
            part = held[held["kind"] == kind]
            sides = [(part[f"{s}_user_id"], part[f"{s}_item_id"]) for s in ("pos", "neg")]
            pos, neg = [quality(u, i) + lam * taste(u, i) / 0.1 for u, i in sides]
            row[kind] = round(100 * accuracy(pos, neg), 1)
        frontier[lam] = row
        print(f"item mean + {lam:<4} · taste" + "".join(f"{row[k]:>11.1f}" for k in KINDS))
    print(json.dumps({"references": out, "frontier": {str(k): v for k, v in frontier.items()}}))


if __name__ == "__main__":
    main()
