"""`icg evaluate personalization`: does a cover lean towards its user's taste, judged against ground truth?

Users and items are the adapter report's held-out ones (`icg.evaluation.adapter_report.held_out`): test-split
users of the preference pairs (seed 0), which neither the adapter nor the optimised reward model trained
on, and multi-genre items of the test item split, which no mini model trained on. Every (user, item) cover
starts from the item's own noise, the same for every row, user and scale: differences come from conditioning.

Measures, per row (a way of making covers):
- *lean test* (no learned judge). A user's taste is their mean rating per genre minus their own mean, from
  their ratings of items *outside* the test item split (so never of a benchmark item). For item i with
  genres G_i, user u prefers g_u = the genre of G_i they rate highest, when they rated ≥ MIN_GENRE_RATINGS
  items of at least two genres of G_i and the best beats the next by ≥ TASTE_MARGIN stars. For each pair of
  users (u, v) with g_u ≠ g_v, the mini CLIP's zero-shot genre distribution over the item's own genres
  (softmax over "a {genre} movie" prompts, renormalised over G_i) of each cover gives
  d = [P_u(g_u) − P_v(g_u)] + [P_v(g_v) − P_u(g_v)]; the pair is won when d > 0, half won when the covers
  are the same (|d| ≤ TIE), lost otherwise. Covers that ignore the user score exactly 50 %. 95 % CI: bootstrap
  over items (pairs of one item share covers); p: one-sided permutation test that re-deals each item's covers
  among its users (the null "covers do not depend on whose they are").
- *swap test* under the judge reward model (another seed and user split than the optimised reward): a
  user's own cover vs other users' covers of the same item, as `adapter_report.swap_test`; p one-sided (t
  over users).
- *fidelity*: SSIM and LPIPS-miniCLIP to the item's reference cover, and item retrieval R@1/R@10 of each
  cover among all test-split reference covers (mini CLIP image-embedding cosine; ties count against).
Rows: rule_based (the explicit prompt into the plain backbone), context_only (adapter, no user), icg (shipped
adapter with the user), cold_start (the shipped adapter for the same users given only as words, no id: each
user's ratings outside the item split are dealt at random into two halves; the words "likes a, b and c" name
their top liked genres in one half, and the lean test's ground truth for this row is read from the other
half only), any extra adapters, and the *oracle*: the reference re-rendered with the user's
preferred genre of the item as its primary genre (the renderer draws by primary genre) — the lean test's
ceiling. The strength knob (`user_scale`) is swept on the shipped adapter; scale 0 is the context-only row
(equal bit for bit, tests/test_pipeline.py), scale 1 the icg row.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm.auto import tqdm

from icg.atomic import atomic_path, write_text_atomic
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import display_title, item_genres, render_cover
from icg.data.pixels import to_pil
from icg.data.records import InteractionData
from icg.data.splits import split_items
from icg.data.taste import taste_clauses
from icg.evaluation.adapter_report import ITEM_SEED_STRIDE, genre_probabilities, held_out, swap_test
from icg.measures.perceptual import LPIPS_NAME, ClipPerceptualDistance, ssim_per_image

logger = logging.getLogger(__name__)

JSON_NAME, MD_NAME, CURVE_NAME = "personalization.json", "personalization.md", "personalization_curve.png"
SCALES = (0.0, 0.5, 1.0, 1.5, 2.0)
MIN_GENRE_RATINGS = 3  # ratings of a genre before its mean says anything about the user
TASTE_MARGIN = 0.25  # stars by which the preferred genre must beat the next one of the item
TIE = 1e-6  # |d| at or below which two covers count as the same (float noise of identical covers)
RETRIEVAL_KS = (1, 10)
FIXED_ROWS = ("rule_based", "context_only", "icg", "cold_start")
COLD_START_GENRES = 3  # liked genres a cold-start user's words name


@dataclass(frozen=True)
class LeanPairs:
    """Pairs of users who prefer different genres of one item: indices into the benchmark's (U, I) grid."""

    item: np.ndarray  # (P,) item index
    first: np.ndarray  # (P,) user u
    second: np.ndarray  # (P,) user v
    first_genre: np.ndarray  # (P,) g_u, index into the genre vocabulary
    second_genre: np.ndarray  # (P,) g_v

    def __len__(self) -> int:
        return len(self.item)


def relative_genre_taste(
    data: InteractionData,
    users: list[str],
    genres: list[str],
    exclude_items: set[str],
    interactions: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(U, G) mean rating per genre minus the user's own mean, and (U, G) how many ratings each mean has,
    over the users' ratings of items not in `exclude_items` (NaN where a user rated none of a genre);
    `interactions` (default: all of the data's) limits which ratings are read."""
    inter = data.interactions if interactions is None else interactions
    inter = inter[["user_id", "item_id", "signal"]].astype({"user_id": str, "item_id": str})
    inter = inter[inter["user_id"].isin(set(users)) & ~inter["item_id"].isin(exclude_items)]
    if inter.empty:
        raise ValueError("the benchmark's users have no ratings outside the held-out items: no taste to read")
    genre_of = data.items.set_index(data.items["item_id"].astype(str))["genres"].map(item_genres)
    rel = inter.assign(signal=inter["signal"] - inter.groupby("user_id")["signal"].transform("mean"))
    rel = rel.assign(genre=rel["item_id"].map(genre_of)).explode("genre").dropna(subset=["genre"])
    grouped = rel.groupby(["user_id", "genre"])["signal"]
    taste = grouped.mean().unstack().reindex(index=users, columns=genres)
    counts = grouped.size().unstack().reindex(index=users, columns=genres).fillna(0)
    return taste.to_numpy(dtype=float), counts.to_numpy(dtype=int)


def preferred_genres(
    taste: np.ndarray,
    counts: np.ndarray,
    item_genre_ids: list[list[int]],
    min_ratings: int = MIN_GENRE_RATINGS,
    margin: float = TASTE_MARGIN,
) -> np.ndarray:
    """(U, I) the genre (vocabulary index) of each item that each user prefers, −1 where the ratings do not
    say: fewer than two of the item's genres with `min_ratings` ratings, or a lead below `margin`."""
    out = np.full((taste.shape[0], len(item_genre_ids)), -1, dtype=int)
    for i, ids in enumerate(item_genre_ids):
        for u in range(taste.shape[0]):
            known = [
                (taste[u, g], g) for g in ids if counts[u, g] >= min_ratings and not np.isnan(taste[u, g])
            ]
            if len(known) < 2:
                continue
            known.sort(reverse=True)
            if known[0][0] - known[1][0] >= margin:
                out[u, i] = known[0][1]
    return out


@dataclass(frozen=True)
class ColdStart:
    """The cold-start row's users as words, and its own ground truth from the other half of their ratings."""

    words: pd.DataFrame  # the ratings the words are written from (user_id, item_id, signal)
    truth: pd.DataFrame  # the other half: the ground truth's ratings, disjoint from `words`
    profiles: list[str]  # per benchmark user: "likes a, b and c" ('' when no genre is liked)
    preferred: np.ndarray  # (U, I) preferred genre of each item from `truth`, −1 unknown
    pairs: LeanPairs


def rating_halves(inter: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's ratings dealt at random (seeded) into two disjoint halves (an odd one goes to the second):
    the words of a cold-start user are written from the first, the ground truth read from the second."""
    rng = np.random.default_rng([seed, 18, 6])
    shuffled = inter.assign(_key=rng.random(len(inter))).sort_values(["user_id", "_key"], kind="stable")
    first = (shuffled.groupby("user_id").cumcount() % 2 == 0).to_numpy()
    shuffled = shuffled.drop(columns="_key")
    return shuffled[first], shuffled[~first]


def stated_words(taste: np.ndarray, counts: np.ndarray, genres: list[str], n: int = COLD_START_GENRES) -> str:
    """'likes a, b and c': the user's `n` best liked genres (relative taste > 0 with ≥ MIN_GENRE_RATINGS
    ratings), written as the taste profiles are (`icg.data.taste.taste_clauses`)."""
    known = (counts >= MIN_GENRE_RATINGS) & ~np.isnan(taste)
    scores = pd.Series(np.where(known, np.nan_to_num(taste), 0.0), index=genres)
    scores = scores[[g.lower() != "unknown" for g in genres]]
    return taste_clauses(scores, n_likes=n, n_dislikes=0)


def cold_start_ground_truth(
    data: InteractionData,
    users: list[str],
    genres: list[str],
    exclude_items: set[str],
    item_genre_ids: list[list[int]],
    seed: int,
) -> ColdStart:
    """Words from one half of each user's ratings outside `exclude_items`, lean-test truth from the other."""
    inter = data.interactions[["user_id", "item_id", "signal"]].astype({"user_id": str, "item_id": str})
    inter = inter[inter["user_id"].isin(set(users)) & ~inter["item_id"].isin(exclude_items)]
    words, truth = rating_halves(inter, seed)
    w_taste, w_counts = relative_genre_taste(data, users, genres, exclude_items, interactions=words)
    profiles = [stated_words(w_taste[u], w_counts[u], genres) for u in range(len(users))]
    t_taste, t_counts = relative_genre_taste(data, users, genres, exclude_items, interactions=truth)
    preferred = preferred_genres(t_taste, t_counts, item_genre_ids)
    return ColdStart(words, truth, profiles, preferred, lean_pairs(preferred))


def lean_pairs(preferred: np.ndarray) -> LeanPairs:
    """Every pair u < v of users whose preferred genres of an item are both known and differ."""
    rows: list[tuple[int, int, int, int, int]] = []
    for i in range(preferred.shape[1]):
        known = np.flatnonzero(preferred[:, i] >= 0)
        for a, u in enumerate(known):
            for v in known[a + 1 :]:
                if preferred[u, i] != preferred[v, i]:
                    rows.append((i, int(u), int(v), int(preferred[u, i]), int(preferred[v, i])))
    arr = np.array(rows, dtype=int).reshape(-1, 5)
    return LeanPairs(*(arr[:, k] for k in range(5)))


def item_genre_probabilities(probs: np.ndarray, item_genre_ids: list[list[int]]) -> np.ndarray:
    """(U, I, G) zero-shot probabilities over all genres → the same renormalised over each item's own
    genres (0 elsewhere): the softmax restricted to the item's genres."""
    mask = np.zeros(probs.shape[1:], dtype=float)  # (I, G)
    for i, ids in enumerate(item_genre_ids):
        mask[i, ids] = 1.0
    masked = probs * mask[None]
    return masked / np.clip(masked.sum(-1, keepdims=True), 1e-12, None)


def pair_margins(probs: np.ndarray, pairs: LeanPairs) -> np.ndarray:
    """(P,) d = [P_u(g_u) − P_v(g_u)] + [P_v(g_v) − P_u(g_v)] for probabilities (U, I, G) of the covers."""
    p_u = probs[pairs.first, pairs.item]  # (P, G)
    p_v = probs[pairs.second, pairs.item]
    rows = np.arange(len(pairs))
    return (p_u[rows, pairs.first_genre] - p_v[rows, pairs.first_genre]) + (
        p_v[rows, pairs.second_genre] - p_u[rows, pairs.second_genre]
    )


def wins(margins: np.ndarray) -> np.ndarray:
    """1 for d > TIE, 0.5 for a tie (the same cover), 0 otherwise."""
    return np.where(margins > TIE, 1.0, np.where(margins >= -TIE, 0.5, 0.0))


def lean_test(
    probs: np.ndarray,
    pairs: LeanPairs,
    *,
    bootstraps: int = 2000,
    permutations: int = 2000,
    seed: int = 0,
) -> dict[str, object]:
    """Win rate of the lean test over `pairs` for covers with genre probabilities (U or 1, I, G) renormalised
    over each item's genres; 95 % CI by bootstrap over items, one-sided permutation p (module docstring)."""
    if len(pairs) == 0:
        return {"win_rate": None, "ci95": None, "p_value": None, "n_pairs": 0, "n_items": 0}
    n_users = int(max(pairs.first.max(), pairs.second.max())) + 1
    if probs.shape[0] == 1:
        probs = np.broadcast_to(probs, (n_users, *probs.shape[1:]))
    if probs.shape[0] < n_users:
        raise ValueError(f"pairs name user {n_users - 1} but the covers cover {probs.shape[0]} users")
    won = wins(pair_margins(probs, pairs))
    observed = float(won.mean())
    rng = np.random.default_rng([seed, 18])
    items = np.unique(pairs.item)
    per_item = np.array([[won[pairs.item == i].sum(), (pairs.item == i).sum()] for i in items])  # (I', 2)
    draws = rng.integers(0, len(items), size=(bootstraps, len(items)))
    boot = per_item[draws, 0].sum(1) / per_item[draws, 1].sum(1)
    identity = np.tile(np.arange(probs.shape[0])[:, None], (1, probs.shape[1]))  # (U, I)
    columns = np.arange(probs.shape[1])[None, :]
    null = np.empty(permutations)
    for k in range(permutations):  # re-deal each item's covers among its users
        shuffled = probs[rng.permuted(identity, axis=0), columns]  # (U, I, G)
        null[k] = wins(pair_margins(shuffled, pairs)).mean()
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + permutations)
    return {
        "win_rate": round(observed, 4),
        "ci95": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
        "p_value": round(p, 5),
        "null_mean": round(float(null.mean()), 4),
        "ties": round(float((won == 0.5).mean()), 4),
        "n_pairs": len(pairs),
        "n_items": len(items),
        "n_users": len(np.unique(np.concatenate([pairs.first, pairs.second]))),
        "bootstraps": bootstraps,
        "permutations": permutations,
    }


def retrieval_recall(queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Share of queries (Q, D) whose target key (index into keys (N, D)) is among their k most cosine-similar
    keys; ties count against it (as `icg.evaluation.mini.recall_at_k`)."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # (Q, N)
    own = sims.gather(1, targets[:, None])  # (Q, 1)
    rivals = (sims >= own).sum(1) - 1
    return float((rivals < k).float().mean())


def swap_p_value(swap: dict[str, object], n_users: int) -> float | None:
    """One-sided p of the swap test's mean > 0 (t over users)."""
    mean, se = swap.get("own_minus_others"), swap.get("std_error")
    if mean is None or not se or n_users < 2:
        return None
    return round(float(stats.t.sf(float(mean) / float(se), df=n_users - 1)), 5)


def oracle_covers(
    items: pd.DataFrame, preferred: np.ndarray, genres: list[str], references: torch.Tensor, size: int
) -> torch.Tensor:
    """(U, I, 3, S, S) in [0, 1]: each item's reference re-rendered with the user's preferred genre of it
    (`preferred` (U, I), indices into `genres`) as primary, its other genres after it; the reference itself
    where the user's preference is unknown."""
    out = references.float().div(255).unsqueeze(0).repeat(preferred.shape[0], 1, 1, 1, 1)
    drawn: dict[tuple[int, int], torch.Tensor] = {}
    for i, row in enumerate(items.itertuples(index=False)):
        year = None if pd.isna(row.year) else int(row.year)
        own = list(item_genres(row.genres))
        for u in np.flatnonzero(preferred[:, i] >= 0):
            g = int(preferred[u, i])
            if (i, g) not in drawn:
                order = [genres[g]] + [x for x in own if x != genres[g]]
                image = render_cover(str(row.item_id), str(row.title), order, year, size, 0)
                drawn[(i, g)] = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
            out[u, i] = drawn[(i, g)]
    return out


@dataclass(frozen=True)
class Benchmark:
    """The benchmark's users, items and ground truth, fixed before any cover is made."""

    users: list[str]
    judge_unseen: set[str]
    items: pd.DataFrame  # the benchmark's items (rows of the items table)
    pool: pd.DataFrame  # every test-split item: the retrieval candidates
    pool_index: np.ndarray  # (I,) position of each benchmark item in `pool`
    genres: list[str]  # the genre vocabulary
    item_genre_ids: list[list[int]]  # per benchmark item, its genres as vocabulary indices
    preferred: np.ndarray  # (U, I) each user's preferred genre of each item, −1 unknown
    pairs: LeanPairs
    cold_start: ColdStart  # the same users as words only, with ground truth from the other half


def choose_benchmark(
    data: InteractionData, max_users: int | None, max_items: int, seed: int, split: str = "test"
) -> Benchmark:
    """Held-out users (`held_out`, of `split`), their taste from ratings outside that item split, and up to
    `max_items` multi-genre items of the split (seeded) on which at least one pair of them disagrees.
    "val" chooses recipes; "test" only reports."""
    from icg.training.mini import JUDGE_SEED

    if max_items < 1:
        raise ValueError(f"max_items must be ≥ 1, got {max_items}")
    if max_users is not None and max_users < 2:
        raise ValueError(f"max_users must be ≥ 2 (the lean test compares pairs of users), got {max_users}")
    chosen = held_out(data, max_users, 0, seed, JUDGE_SEED, split)
    items = data.items.reset_index(drop=True)
    part = np.sort(getattr(split_items(len(items), 0, 0.1, 0.1), split))
    pool = items.iloc[part].reset_index(drop=True)
    genres = sorted({g for t in items["genres"].map(item_genres) for g in t})
    index = {g: k for k, g in enumerate(genres)}
    multi = [k for k, g in enumerate(pool["genres"].map(item_genres)) if len(g) >= 2]
    ids = [[index[g] for g in item_genres(pool["genres"].iloc[k])] for k in multi]
    taste, counts = relative_genre_taste(data, chosen.users, genres, set(pool["item_id"].astype(str)))
    preferred = preferred_genres(taste, counts, ids)  # (U, M)
    per_item = np.bincount(lean_pairs(preferred).item, minlength=len(multi))
    eligible = np.flatnonzero(per_item > 0)
    if len(eligible) == 0:
        raise ValueError(
            f"no multi-genre held-out item has two of the {len(chosen.users)} users preferring different "
            "genres of it: raise --max-users"
        )
    rng = np.random.default_rng([seed, 18])
    picked = np.sort(rng.choice(eligible, min(max_items, len(eligible)), replace=False))
    preferred = preferred[:, picked]
    cold = cold_start_ground_truth(
        data, chosen.users, genres, set(pool["item_id"].astype(str)), [ids[k] for k in picked], seed
    )
    return Benchmark(
        users=chosen.users, judge_unseen=chosen.judge_unseen,
        items=pool.iloc[[multi[k] for k in picked]].reset_index(drop=True), pool=pool,
        pool_index=np.array([multi[k] for k in picked]), genres=genres,
        item_genre_ids=[ids[k] for k in picked], preferred=preferred, pairs=lean_pairs(preferred),
        cold_start=cold,
    )  # fmt: skip


def check_scales(scales: tuple[float, ...]) -> tuple[float, ...]:
    """The strength sweep: finite, ≥ 0, no repeats, sorted."""
    for s in scales:
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"scales must be finite numbers ≥ 0, got {s}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales repeat a value: {scales}")
    return tuple(sorted(float(s) for s in scales))


class Measures:
    """Everything that judges a row's covers: mini CLIP (zero-shot genre, retrieval, LPIPS-miniCLIP), SSIM,
    the judge reward; built once, applied to each row."""

    def __init__(
        self, spec, data: InteractionData, bench: Benchmark, pool_refs: torch.Tensor, texts: list[str]
    ):
        from transformers import CLIPModel, CLIPProcessor

        from icg.data.pairs import PairConfig, build_pairs
        from icg.evaluation.fd import ClipImageFeatures
        from icg.rewards import load_reward
        from icg.training.reward_model import user_profiles

        self.clip = CLIPModel.from_pretrained(spec.clip).eval()
        self.processor = CLIPProcessor.from_pretrained(spec.clip)
        self.features = ClipImageFeatures(self.clip)
        self.lpips = ClipPerceptualDistance(self.clip)
        self.judge = load_reward("personalized", spec.reward_judge)
        profiles = user_profiles(data, build_pairs(data.interactions, PairConfig())[0])
        self.profiles = [" ".join(profiles[u].split()) for u in bench.users]
        self.bench, self.texts = bench, texts
        self.references = pool_refs[torch.as_tensor(bench.pool_index)]  # (I, 3, S, S) uint8
        self.keys = self._embed(pool_refs)  # (N, P)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        return torch.cat([self.features(images[s : s + batch]) for s in range(0, len(images), batch)])

    @torch.no_grad()
    def __call__(
        self, covers: torch.Tensor, lean: dict[str, int], pairs: LeanPairs | None = None
    ) -> dict[str, object]:
        """covers (U or 1, I, 3, S, S) in [0, 1] → the row's figures; `pairs`: the row's own lean-test
        ground truth (the cold-start row's), default the benchmark's."""
        n_rows, n_items = covers.shape[:2]
        flat = covers.reshape(-1, *covers.shape[2:])
        probs = genre_probabilities(self.clip, self.processor, flat, self.bench.genres)
        probs = item_genre_probabilities(
            probs.view(n_rows, n_items, -1).double().numpy(), self.bench.item_genre_ids
        )
        refs = self.references.repeat(n_rows, 1, 1, 1)
        lpips = torch.cat(
            [self.lpips(flat[s : s + 256], refs[s : s + 256]) for s in range(0, len(flat), 256)]
        )
        targets = torch.as_tensor(self.bench.pool_index).repeat(n_rows)
        emb = self._embed(flat)
        grid = covers.expand(len(self.bench.users), *covers.shape[1:])  # a shared cover is judged per user
        judged = [
            self.judge.score(grid[u], self.texts, [p] * n_items, grad=False).float().mean().item()
            for u, p in enumerate(self.profiles)
        ]
        out: dict[str, object] = {
            "lean_test": lean_test(probs, self.bench.pairs if pairs is None else pairs, **lean),
            "ssim": round(float(ssim_per_image(flat, refs).mean()), 4),
            LPIPS_NAME: round(float(lpips.mean()), 4),
            **{
                f"retrieval_r{k}": round(retrieval_recall(emb, self.keys, targets, k), 4)
                for k in RETRIEVAL_KS
            },
            "judge_reward": round(float(np.mean(judged)), 4),
            "between_user_pixel_std": round(float(covers.std(0).mean()) if n_rows > 1 else 0.0, 4),
        }
        if n_rows > 1:
            swap = swap_test(self.judge, covers, self.texts, self.profiles)
            out["swap_test"] = {**swap, "p_value": swap_p_value(swap, n_rows)}
        else:
            out["swap_test"] = {"own_minus_others": 0.0, "note": "covers do not depend on the user"}
        return out


def _user_covers(pipe, items, users: list[str], seed: int, common: dict, bar, **extra) -> torch.Tensor:
    """(U, I, 3, S, S): each user's covers of every item, item n from the same noise for every user."""
    from icg.pipeline import CoverUser

    out = []
    for user in users:
        out.append(pipe(items, [CoverUser(user_id=user)], seed=seed, **common, **extra).images.float().cpu())
        bar.update(1)
    return torch.stack(out)


def _cold_start_covers(
    pipe, items, profiles: list[str], seed: int, common: dict, bar, nobody: torch.Tensor
) -> torch.Tensor:
    """(U, I, 3, S, S): covers for users known only by their words (no id); no words: `nobody`'s covers."""
    from icg.pipeline import CoverUser

    out = []
    for words in profiles:
        if words:
            out.append(pipe(items, [CoverUser(profile=words)], seed=seed, **common).images.float().cpu())
        else:
            out.append(nobody)
        bar.update(1)
    return torch.stack(out)


def evaluate_personalization(
    spec,
    data: InteractionData,
    *,
    max_items: int = 12,
    max_users: int | None = 32,
    scales: tuple[float, ...] = SCALES,
    adapters: dict[str, str] | None = None,
    seed: int = 0,
    split: str = "test",
    bootstraps: int = 2000,
    permutations: int = 2000,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """The benchmark (module docstring) of `spec`'s adapter, with `adapters` (row name → adapter folder) as
    extra rows; writes JSON, Markdown and the strength curve to `out_dir` when given."""
    from icg.context.cache import ContextCache
    from icg.errors import ICGError
    from icg.loading import load_cover_pipeline
    from icg.machine import machine
    from icg.pipeline import CoverItem
    from icg.rewards.personalized import reward_text

    missing = [f for f in ("adapter", "clip", "reward_judge") if getattr(spec, f) is None]
    if missing:
        raise ICGError(
            f"preset '{spec.name}' lacks {missing}: the personalization benchmark needs all of them"
        )
    scales = check_scales(tuple(scales))
    adapters = dict(adapters or {})
    clash = sorted(set(adapters) & {*FIXED_ROWS, "oracle"})
    if clash:
        raise ValueError(f"extra adapter rows may not be named {clash}: those rows are built in")
    for name, folder in adapters.items():
        if not (Path(folder) / "adapter_config.json").is_file():
            raise ICGError(
                f"adapter row '{name}': {folder} is not an adapter folder (no adapter_config.json)"
            )
    started = time.perf_counter()
    bench = choose_benchmark(data, max_users, max_items, seed, split)
    logger.info(
        "%d users × %d items, %d lean-test pairs", len(bench.users), len(bench.items), len(bench.pairs)
    )

    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.context_encoder.cache = ContextCache()  # each item's context once, reused for every user and row
    size = pipe.default_size
    pool_refs = render_cover_cache(bench.pool, Path(cache_dir or Path("out") / "cache"), size, 1, False)[:, 0]
    references = pool_refs[torch.as_tensor(bench.pool_index)]
    titles = [display_title(str(t)) or str(t) for t in bench.items["title"]]
    items = [CoverItem(title=t, image=to_pil(c)) for t, c in zip(titles, references, strict=True)]
    common = {**spec.generation_config().to_kwargs(), "output_type": "pt"}
    noise = seed * ITEM_SEED_STRIDE
    user_scales = [s for s in scales if s != 0.0]
    total = len(bench.users) * (len(set(user_scales) | {1.0}) + 1 + len(adapters))
    bar = tqdm(total=total, desc="covers (user × all items)", unit="user", disable=not progress)

    generated: dict[str, torch.Tensor] = {}
    rule = pipe(items, None, seed=noise, adapter_scale=0.0, **common)
    prompts = [m["explicit_prompt"] for m in rule.metadata]
    generated["rule_based"] = rule.images.float().cpu()[None]  # (1, I, 3, S, S): the same for every user
    generated["context_only"] = pipe(items, None, seed=noise, **common).images.float().cpu()[None]
    by_scale: dict[float, torch.Tensor] = {0.0: generated["context_only"]}  # equal bit for bit (tested)
    for s in sorted(set(user_scales) | {1.0}):
        by_scale[s] = _user_covers(pipe, items, bench.users, noise, common, bar, user_scale=s)
    generated["icg"] = by_scale[1.0]
    generated["cold_start"] = _cold_start_covers(
        pipe, items, bench.cold_start.profiles, noise, common, bar, generated["context_only"][0]
    )
    del pipe
    for name, folder in adapters.items():
        other = load_cover_pipeline(spec.replace(adapter=str(folder)))
        other.set_progress_bar_config(disable=True)
        other.context_encoder.cache = ContextCache()
        generated[name] = _user_covers(other, items, bench.users, noise, common, bar)
        del other
    bar.close()
    generated["oracle"] = oracle_covers(bench.items, bench.preferred, bench.genres, references, size)

    texts = [reward_text(t, p) for t, p in zip(titles, prompts, strict=True)]
    measure = Measures(spec, data, bench, pool_refs, texts)
    lean = {"bootstraps": bootstraps, "permutations": permutations, "seed": seed}
    rows = {
        name: measure(covers, lean, bench.cold_start.pairs if name == "cold_start" else None)
        for name, covers in tqdm(generated.items(), desc="measures", disable=not progress)
    }
    sweep = {
        str(s): rows["icg"] if s == 1.0 else rows["context_only"] if s == 0.0 else measure(by_scale[s], lean)
        for s in scales
    }
    context = rows["context_only"]
    for row in [*rows.values(), *sweep.values()]:
        row["fidelity_vs_context_only"] = {
            LPIPS_NAME: round(row[LPIPS_NAME] / context[LPIPS_NAME] - 1, 4),
            "ssim": round(row["ssim"] / context["ssim"] - 1, 4),
        }
    unseen = [u in bench.judge_unseen for u in bench.users]
    result: dict[str, object] = {
        "rows": rows,
        "scales": sweep,
        "setup": {
            "preset": spec.name, "adapter": spec.adapter, "extra_adapters": adapters,
            "reward_judge": spec.reward_judge, "n_users": len(bench.users),
            "n_judge_unseen_users": int(sum(unseen)), "n_items": len(bench.items),
            "n_pool_items": len(bench.pool), "items": bench.items["title"].tolist(), "users": bench.users,
            "n_pairs": len(bench.pairs), "n_cold_start_pairs": len(bench.cold_start.pairs),
            "cold_start_profiles": bench.cold_start.profiles, "min_genre_ratings": MIN_GENRE_RATINGS,
            "taste_margin": TASTE_MARGIN,
            "seed": seed, "split": split, "steps": spec.generation_config().num_inference_steps,
            "guidance_scale": spec.generation_config().guidance_scale,
            "max_items": max_items, "max_users": max_users,
            "seconds": round(time.perf_counter() - started, 1), "machine": machine(), "command": command,
        },
    }  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / JSON_NAME, json.dumps(result, indent=2))
        write_text_atomic(out_dir / MD_NAME, personalization_markdown(result))
        write_curve(result, out_dir / CURVE_NAME)
    return result


def _fmt(value: object, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _lean_cell(lean: dict) -> str:
    if lean.get("win_rate") is None:
        return "–"
    low, high = lean["ci95"]
    return f"{100 * lean['win_rate']:.1f} % [{100 * low:.1f}, {100 * high:.1f}] (p {lean['p_value']:.3g})"


def _swap_cell(swap: dict) -> str:
    if swap.get("note"):
        return "0 (by construction)"
    se = "" if swap.get("std_error") is None else f" ± {swap['std_error']:.4f}"
    p = "" if swap.get("p_value") is None else f", p {swap['p_value']:.3g}"
    return f"{swap['own_minus_others']:+.4f}{se} ({100 * swap['share_users_positive']:.0f} % users +{p})"


def _row_line(name: str, row: dict) -> str:
    fid = row["fidelity_vs_context_only"]
    return (
        f"| {name} | {_lean_cell(row['lean_test'])} | {_swap_cell(row['swap_test'])} | {_fmt(row['ssim'])} | "
        f"{_fmt(row[LPIPS_NAME])} ({100 * fid[LPIPS_NAME]:+.1f} %) | {_fmt(row['retrieval_r1'])} | "
        f"{_fmt(row['retrieval_r10'])} | {_fmt(row['judge_reward'])} | "
        f"{_fmt(row['between_user_pixel_std'])} |"
    )


def reading(result: dict) -> list[str]:
    """What the figures say, sentence by sentence from the figures themselves (no fixed verdicts)."""
    rows, out = result["rows"], []
    for name in ("icg", "cold_start", *result["setup"]["extra_adapters"]):
        lean = rows[name]["lean_test"] if name in rows else {}
        if lean.get("win_rate") is None:
            continue
        low, high = lean["ci95"]
        verdict = (
            "above 50 %: its covers lean towards their user's genre"
            if low > 0.5 and lean["p_value"] < 0.05
            else "below 50 %: its covers lean away from their user's genre"
            if high < 0.5
            else "not distinguishable from 50 %: no measurable personalization"
        )
        out.append(
            f"- {name}: lean-test win rate {100 * lean['win_rate']:.1f} % (95 % CI {100 * low:.1f}–"
            f"{100 * high:.1f} %, p {lean['p_value']:.3g}) — {verdict}."
        )
    oracle = rows["oracle"]
    win = oracle["lean_test"]["win_rate"]
    out.append(
        f"- oracle: {100 * (0.5 if win is None else win):.1f} % — how far the test reads a genre lean when "
        "covers have one (the ceiling)."
    )
    swap = oracle["swap_test"]
    if swap.get("std_error") and abs(swap["own_minus_others"]) < 2 * swap["std_error"]:
        out.append(
            "- The judge's swap test does not reward the oracle's lean either "
            f"({swap['own_minus_others']:+.4f} ± {swap['std_error']:.4f}): the judge hardly responds to a "
            "cover's genre lean, so a swap test near 0 is weak evidence on its own."
        )
    return out


def personalization_markdown(result: dict) -> str:
    """The report: the rows, the strength sweep, and how each figure was measured."""
    setup, rows = result["setup"], result["rows"]
    m = setup["machine"]
    header = (
        f"| row | lean test: win rate [95 % CI] (p) ↑ | swap test, judge ↑ | SSIM ↑ | {LPIPS_NAME} ↓ "
        "(vs context-only) | R@1 ↑ | R@10 ↑ | judge reward | between-user pixel std |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    order = [n for n in (*FIXED_ROWS, *setup["extra_adapters"], "oracle") if n in rows]
    lines = [
        "# Personalization against ground truth (`icg evaluate personalization`)",
        "",
        f"Split: **{setup.get('split', 'test')}** (val chooses recipes, test only reports). "
        f"{setup['n_users']} held-out users ({setup['n_judge_unseen_users']} also outside the judge's "
        f"training split) × {setup['n_items']} held-out multi-genre items, {setup['n_pairs']} lean-test "
        f"pairs; {setup['steps']} DDIM steps, guidance {setup['guidance_scale']}, the same noise per item in "
        f"every row and scale; retrieval among {setup['n_pool_items']} held-out references.",
        "",
        header,
        *[_row_line(name, rows[name]) for name in order],
        "",
        "## Personalization strength (`user_scale`, the shipped adapter)",
        "",
        header.replace("| row |", "| user_scale |", 1),
        *[_row_line(scale, row) for scale, row in result["scales"].items()],
        "",
        "![strength curve](" + CURVE_NAME + ")",
        "",
        "## Reading",
        "",
        *reading(result),
        "",
        "## How it is measured",
        "",
        "- *lean test*: for each held-out multi-genre item and each pair of users whose ratings (of items "
        f"outside the test item split; ≥ {setup['min_genre_ratings']} ratings in at least two of the item's "
        f"genres, the best ahead by ≥ {setup['taste_margin']} stars) prefer different genres of it, the mini "
        "CLIP's zero-shot genre distribution over the item's own genres decides whether u's cover leans more "
        "to u's genre than v's cover does, and v's to v's: d = [P_u(g_u) − P_v(g_u)] + [P_v(g_v) − P_u(g_v)] "
        "> 0 wins, identical covers tie (½). 50 % = no personalization; covers that ignore the user score "
        "exactly 50 %. CI: bootstrap over items; p: one-sided permutation test re-dealing each item's covers "
        "among the users.",
        "- *cold_start*: the icg row's users without their id, represented only by words: each user's "
        "ratings of items outside the test item split are dealt at random (seeded) into two disjoint halves; "
        f"the words ('likes a, b and c', their top {COLD_START_GENRES} genres by relative taste with "
        f"≥ {setup['min_genre_ratings']} ratings) come from one half, and the covers are made with "
        "`CoverUser(user_id=None, profile=words)` (users with no liked genre get the context-only cover); "
        "this row's lean-test pairs "
        f"({setup.get('n_cold_start_pairs', '–')}) are read from the other half only, so the words never "
        "come from its ground truth.",
        "- *swap test*: judge reward (the personalized reward model of another seed and user split, never "
        "optimised against) of a user's own cover minus that of 15 other users' covers of the same item, "
        "mean ± standard error over users; share of users for whom it is positive; p one-sided (t over "
        "users).",
        f"- *fidelity*: SSIM and {LPIPS_NAME} (the mini CLIP stand-in for LPIPS, not LPIPS) to the item's "
        "reference cover, in brackets relative to context-only; R@k: the item's own reference among the k "
        "most similar held-out references (mini CLIP image embeddings).",
        "- *oracle*: the reference re-rendered with the user's preferred genre as primary (the renderer "
        "draws by primary genre; the reference where the preference is unknown) — the lean test's ceiling.",
        "- user_scale 0 is the context-only row (bit for bit, tests/test_pipeline.py), 1 the icg row.",
        "",
        f"- machine: {m.get('processor')}, {m.get('cpu_count')} cores, torch {m.get('torch')} with "
        f"{m.get('torch_threads')} thread(s), load {m.get('load_average')}; {setup['seconds']} s.",
        f"- command: `{setup['command']}`",
        "",
    ]
    return "\n".join(lines)


def write_curve(result: dict, path: Path) -> None:
    """The personalization–fidelity curve: lean-test win rate against LPIPS-miniCLIP, one point per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    points = [(float(s), row) for s, row in result["scales"].items()]
    xs = [row[LPIPS_NAME] for _, row in points]
    ys = [100 * (row["lean_test"]["win_rate"] or 0.5) for _, row in points]
    ax.plot(xs, ys, "o-", label="ICG, user_scale")
    for (scale, _), x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"{scale:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for name, marker in (("rule_based", "s"), ("oracle", "*")):
        row = result["rows"][name]
        ax.plot(row[LPIPS_NAME], 100 * (row["lean_test"]["win_rate"] or 0.5), marker, label=name)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"{LPIPS_NAME} to the reference ↓")
    ax.set_ylabel("lean-test win rate (%) ↑")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
