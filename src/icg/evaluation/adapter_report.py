"""Held-out report of the trained adapter: does it personalize, and what does it cost in fidelity?

Users: the test split of the preference pairs (`build_pairs`, seed 0) — users neither the adapter (trained on
train-split users) nor the optimised reward model ever saw; the user encoder did read their history (that
is its input). Items: the test split of `split_items(seed 0)`, never used by any mini model's training.
Every (user, item) cover starts from the item's own noise, the same for every variant and user, so
differences between columns come from the conditioning alone. Variants (one pipeline, one code path):
  rule_based    the explicit prompt into the plain backbone (`adapter_scale=0`), no user;
  context_only  the adapter with the item's meta tokens, no user tokens;
  icg           the adapter with meta tokens and the user's tokens.
Measures per variant over the (user, item) grid: the held-out judge reward model (another seed and user
split, never optimised; also restricted to users outside the judge's own training split), the optimised
reward (labelled as such: not evidence), SSIM and LPIPS-miniCLIP to the reference cover, and the
*personalization score* against ground truth no model trained on for this purpose: per user, the shift of
the mini CLIP's zero-shot genre probabilities of their covers away from the item's average over users,
correlated (Pearson, over genres) with their genre taste in ratings (mean rating per genre minus their
own mean, centred over users); a permutation test over users gives its p-value. Covers that do not depend
on the user (rule_based, context_only) have no shift, so their score is 0 by construction.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from icg.atomic import atomic_path, write_text_atomic
from icg.data.captions import genre_prompt
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import display_title, item_genres
from icg.data.pairs import PairConfig, build_pairs
from icg.data.pixels import to_pil
from icg.data.records import InteractionData
from icg.data.splits import split_items
from icg.measures.perceptual import LPIPS_NAME, ClipPerceptualDistance, ssim_per_image
from icg.training.clip_data import embed_texts

logger = logging.getLogger(__name__)

VARIANTS = ("rule_based", "context_only", "icg")
JSON_NAME, MD_NAME, GRID_NAME = "adapter_heldout.json", "adapter_heldout.md", "adapter_heldout_samples.png"
ITEM_SEED_STRIDE = 1000  # item n of the report starts from noise seed * ITEM_SEED_STRIDE + n
HELD_OUT_SPLITS = ("val", "test")  # users and items no adapter or optimised reward trained on


@dataclass(frozen=True)
class HeldOut:
    """The report's users (ids) and items (rows of the items table), with how they were chosen."""

    users: list[str]
    items: pd.DataFrame
    judge_unseen: set[str]  # users outside the judge reward model's training split


def held_out(
    data: InteractionData, n_users: int | None, n_items: int, seed: int, judge_seed: int, split: str = "test"
) -> HeldOut:
    """`split` users (pairs, seed 0) and `split` items (split_items, seed 0), seeded subsets; "val" is for
    choosing recipes, "test" for reporting."""
    if split not in HELD_OUT_SPLITS:
        raise ValueError(f"split must be one of {HELD_OUT_SPLITS}, got {split!r}")
    pairs, _ = build_pairs(data.interactions, PairConfig())
    users = sorted(
        pairs.loc[pairs["split"] == split, "user_id"].astype(str).unique(), key=lambda u: (len(u), u)
    )
    rng = np.random.default_rng([seed, 31])
    if n_users is not None and n_users < len(users):
        users = sorted(rng.choice(users, n_users, replace=False).tolist(), key=lambda u: (len(u), u))
    items = data.items.reset_index(drop=True)
    pool = np.sort(getattr(split_items(len(items), 0, 0.1, 0.1), split))
    chosen = np.sort(rng.choice(pool, min(n_items, len(pool)), replace=False))
    judge_pairs, _ = build_pairs(data.interactions, PairConfig(seed=judge_seed))
    judge_train = set(judge_pairs.loc[judge_pairs["split"] == "train", "user_id"].astype(str))
    return HeldOut(users, items.iloc[chosen].reset_index(drop=True), set(users) - judge_train)


def genre_taste(data: InteractionData, users: list[str], genres: list[str]) -> np.ndarray:
    """(U, G): the user's mean rating on items of each genre minus their overall mean (0 where they rated
    none), then centred over users — what a user likes *more than others do*."""
    inter = data.interactions[["user_id", "item_id", "signal"]].astype({"user_id": str, "item_id": str})
    inter = inter[inter["user_id"].isin(set(users))]
    genre_of = data.items.set_index(data.items["item_id"].astype(str))["genres"].map(item_genres)
    rel = inter.assign(signal=inter["signal"] - inter.groupby("user_id")["signal"].transform("mean"))
    rel = rel.assign(genre=rel["item_id"].map(genre_of)).explode("genre")
    table = rel.groupby(["user_id", "genre"])["signal"].mean().unstack().reindex(index=users, columns=genres)
    taste = table.fillna(0.0).to_numpy(dtype=float)
    return taste - taste.mean(0, keepdims=True)


def personalization_score(style: np.ndarray, taste: np.ndarray, permutations: int, seed: int) -> dict:
    """Mean over users of Pearson(style_u, taste_u) across genres; permutation p-value (users shuffled)."""

    def mean_corr(s: np.ndarray, t: np.ndarray) -> float:
        s, t = s - s.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
        norm = np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1)
        ok = norm > 1e-12
        return float(((s * t).sum(1)[ok] / norm[ok]).mean()) if ok.any() else 0.0

    observed = mean_corr(style, taste)
    if np.abs(style).max() < 1e-12:
        return {"score": 0.0, "p_value": None, "note": "covers do not depend on the user"}
    rng = np.random.default_rng(seed)
    null = np.array([mean_corr(style, taste[rng.permutation(len(taste))]) for _ in range(permutations)])
    p = (1 + int((null >= observed).sum())) / (1 + permutations)
    return {"score": round(observed, 4), "p_value": round(p, 4), "null_mean": round(float(null.mean()), 4),
            "null_std": round(float(null.std()), 4), "permutations": permutations}  # fmt: skip


@torch.no_grad()
def genre_probabilities(clip, processor, images: torch.Tensor, genres: list[str]) -> torch.Tensor:
    """(N, G) zero-shot genre distribution of the mini CLIP over "a {genre} movie" prompts."""
    from icg.evaluation.fd import ClipImageFeatures

    features = torch.nn.functional.normalize(ClipImageFeatures(clip)(images), dim=-1)  # (N, P)
    prompts = embed_texts(clip, processor, [genre_prompt(g) for g in genres])  # (G, P)
    return (clip.logit_scale.exp() * features @ prompts.T).softmax(-1)


def _score_grid(reward, images: torch.Tensor, texts: list[str], profiles: list[str]) -> np.ndarray:
    """A reward over the (user, item) grid: images (U, I, 3, S, S), texts per item, profiles per user
    → (U, I)."""
    rows = [
        reward.score(images[u], texts, [p] * len(texts), grad=False).numpy() for u, p in enumerate(profiles)
    ]
    return np.stack(rows)


def swap_test(reward, covers: torch.Tensor, texts: list[str], profiles: list[str], others: int = 15) -> dict:
    """Does a user's own cover suit them better than other users' covers of the same item, as an independent
    reward model judges? covers (U, I, 3, S, S) → mean over users of R(u, own) − mean R(u, another user's
    cover), each user against the `others` next users (cyclically), with its standard error over users.
    0 in expectation when covers ignore the user; positive only if personalization reaches the judge."""
    n_users = covers.shape[0]
    k = min(others, n_users - 1)
    if k < 1:
        return {"own_minus_others": None, "std_error": None, "share_users_positive": None, "others": 0}
    per_user = []
    for u, profile in enumerate(profiles):
        users = [profile] * covers.shape[1]
        own = reward.score(covers[u], texts, users, grad=False).numpy()  # (I,)
        rows = [(u + shift) % n_users for shift in range(1, k + 1)]
        theirs = [reward.score(covers[v], texts, users, grad=False).numpy() for v in rows]
        per_user.append(float((own - np.mean(theirs, axis=0)).mean()))
    values = np.array(per_user)
    se = round(float(values.std(ddof=1) / np.sqrt(len(values))), 5) if len(values) > 1 else None
    return {"own_minus_others": round(float(values.mean()), 5), "std_error": se,
            "share_users_positive": round(float((values > 0).mean()), 4), "others": k}  # fmt: skip


def _grid(references: torch.Tensor, covers: dict[str, torch.Tensor], users: list[str], n: int) -> Image.Image:
    """Items as rows: reference | rule-based | context only | ICG for the first `len(users)` users."""
    columns = ["reference", "rule-based", "context only"] + [f"user {u}" for u in users]
    size, header, gap = references.shape[-1], 14, 2
    sheet = Image.new("RGB", (len(columns) * (size + gap), header + n * (size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(columns):
        draw.text((c * (size + gap) + 1, 1), label[: size // 5], fill="black")
    for i in range(n):
        row = [references[i], covers["rule_based"][0, i], covers["context_only"][0, i]]
        row += [covers["icg"][u, i] for u in range(len(users))]
        for c, image in enumerate(row):
            pixels = (
                image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
            )
            sheet.paste(to_pil(pixels), (c * (size + gap), header + i * (size + gap)))
    return sheet


def evaluate_adapter(
    spec,
    data: InteractionData,
    *,
    n_users: int | None = None,
    n_items: int = 12,
    seed: int = 0,
    permutations: int = 2000,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """The held-out report of `spec`'s adapter (module docstring); writes JSON, Markdown and a grid to
    `out_dir` when given."""
    from transformers import CLIPModel, CLIPProcessor

    from icg.context.cache import ContextCache
    from icg.errors import ICGError
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverItem, CoverUser
    from icg.rewards import load_reward
    from icg.rewards.personalized import reward_text
    from icg.training.mini import JUDGE_SEED
    from icg.training.reward_profiles import user_profiles

    missing = [f for f in ("adapter", "clip", "reward_model", "reward_judge") if getattr(spec, f) is None]
    if missing:
        raise ICGError(f"preset '{spec.name}' lacks {missing}: the adapter report needs all of them")
    started = time.perf_counter()
    chosen = held_out(data, n_users, n_items, seed, JUDGE_SEED)
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.context_encoder.cache = ContextCache()  # each item's context once, reused for every user
    size = pipe.default_size
    references = render_cover_cache(chosen.items, Path(cache_dir or Path("out") / "cache"), size, 1, False)[
        :, 0
    ]
    titles = [display_title(str(t)) or str(t) for t in chosen.items["title"]]
    items = [CoverItem(title=t, image=to_pil(c)) for t, c in zip(titles, references, strict=True)]
    common = {**spec.generation_config().to_kwargs(), "output_type": "pt"}

    def covers(users: list[CoverUser] | None, **extra) -> tuple[torch.Tensor, list[str]]:
        """One cover per item (cover n from noise seed·STRIDE + n, whoever the user is) → (I, 3, S, S)."""
        out = pipe(items, users, seed=seed * ITEM_SEED_STRIDE, **common, **extra)
        return out.images.float().cpu(), [m["explicit_prompt"] for m in out.metadata]

    generated: dict[str, torch.Tensor] = {}
    rule, prompts = covers(None, adapter_scale=0.0)
    generated["rule_based"] = rule[None]  # (1, I, 3, S, S): the same for every user
    generated["context_only"] = covers(None)[0][None]
    per_user = [
        covers([CoverUser(user_id=u)])[0] for u in tqdm(chosen.users, desc="ICG covers", disable=not progress)
    ]
    generated["icg"] = torch.stack(per_user)  # (U, I, 3, S, S)

    clip, processor = CLIPModel.from_pretrained(spec.clip).eval(), CLIPProcessor.from_pretrained(spec.clip)
    rewards = {"judge": load_reward("personalized", spec.reward_judge),
               "optimised": load_reward("personalized", spec.reward_model)}  # fmt: skip
    lpips = ClipPerceptualDistance(clip)
    profiles = user_profiles(data, build_pairs(data.interactions, PairConfig())[0])
    user_texts = [" ".join(profiles[u].split()) for u in chosen.users]
    texts = [reward_text(t, p) for t, p in zip(titles, prompts, strict=True)]
    genres = sorted({g for t in data.items["genres"].map(item_genres) for g in t})
    taste = genre_taste(data, chosen.users, genres)
    unseen = np.array([u in chosen.judge_unseen for u in chosen.users])
    result: dict[str, object] = {}
    judged: dict[str, np.ndarray] = {}
    for name, images in generated.items():  # (U or 1, I, 3, S, S)
        grid = images.expand(len(chosen.users), *images.shape[1:])  # a shared cover is judged per user
        scores = {k: _score_grid(r, grid, texts, user_texts) for k, r in rewards.items()}  # each (U, I)
        judged[name] = scores["judge"]
        flat = images.reshape(-1, *images.shape[2:])
        refs = references.repeat(images.shape[0], 1, 1, 1)
        probs = genre_probabilities(clip, processor, flat, genres).view(*images.shape[:2], -1)  # (U|1, I, G)
        style = np.broadcast_to((probs - probs.mean(0, keepdim=True)).mean(1).numpy(), taste.shape)
        result[name] = {
            "judge_reward": round(float(scores["judge"].mean()), 4),
            "judge_reward_judge_unseen_users": round(float(scores["judge"][unseen].mean()), 4)
            if unseen.any() else None,
            "optimised_reward": round(float(scores["optimised"].mean()), 4),
            "ssim": round(float(ssim_per_image(flat, refs).mean()), 4),
            LPIPS_NAME: round(float(lpips(flat, refs).mean()), 4),
            "personalization": personalization_score(style, taste, permutations, seed),
            "between_user_pixel_std": round(float(images.std(0).mean()) if len(images) > 1 else 0.0, 4),
        }  # fmt: skip
    for key, reward in (("swap_test", rewards["judge"]), ("swap_test_optimised", rewards["optimised"])):
        result["icg"][key] = swap_test(reward, generated["icg"], texts, user_texts)
    diff = (judged["icg"] - judged["rule_based"]).ravel()
    result["icg_minus_rule_based_judge"] = {
        "mean": round(float(diff.mean()), 4),
        "std_error": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4),
        "share_of_pairs_improved": round(float((diff > 0).mean()), 4),
    }  # fmt: skip
    result["setup"] = {
        "preset": spec.name, "n_users": len(chosen.users), "n_judge_unseen_users": int(unseen.sum()),
        "n_items": len(items), "items": chosen.items["title"].tolist(), "genres": genres, "seed": seed,
        "steps": spec.generation_config().num_inference_steps,
        "guidance_scale": spec.generation_config().guidance_scale,
        "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
    }  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / JSON_NAME, json.dumps(result, indent=2))
        write_text_atomic(out_dir / MD_NAME, adapter_report_markdown(result))
        with atomic_path(out_dir / GRID_NAME) as tmp:
            _grid(references, generated, chosen.users[:4], min(len(items), 8)).save(tmp, format="PNG")
    return result


def _fmt(value: object) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def adapter_report_markdown(result: dict) -> str:
    """The report as Markdown: one row per variant, the personalization test, and how it was measured."""
    setup = result["setup"]
    lines = [
        f"# Adapter on held-out users and items (`icg evaluate adapter --preset {setup['preset']}`)",
        "",
        f"{setup['n_users']} test-split users ({setup['n_judge_unseen_users']} also outside the judge's "
        f"training split) × {setup['n_items']} test-split items, {setup['steps']} DDIM steps, guidance "
        f"{setup['guidance_scale']}, the same noise per item in every column; {setup['seconds']} s on "
        f"{setup['threads']} thread(s).",
        "",
        f"| variant | judge reward ↑ | judge reward, judge-unseen users ↑ | optimised reward (not evidence) "
        f"| SSIM ↑ | {LPIPS_NAME} ↓ | personalization r ↑ (p) | between-user pixel std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        row = result[name]
        pers = row["personalization"]
        p = "" if pers.get("p_value") is None else f" (p {pers['p_value']:.3g})"
        lines.append(
            f"| {name} | {_fmt(row['judge_reward'])} | {_fmt(row['judge_reward_judge_unseen_users'])} | "
            f"{_fmt(row['optimised_reward'])} | {_fmt(row['ssim'])} | {_fmt(row[LPIPS_NAME])} | "
            f"{_fmt(pers['score'])}{p} | {_fmt(row['between_user_pixel_std'])} |"
        )
    d = result["icg_minus_rule_based_judge"]
    swap = result["icg"].get("swap_test")
    if swap and swap["own_minus_others"] is not None:
        se = "" if swap["std_error"] is None else f" ± {swap['std_error']:.4f}"
        lines += [
            "",
            f"Swap test (ICG): judge reward of a user's own cover − of {swap['others']} other users' covers "
            f"of the same item, judged with the user's profile: {swap['own_minus_others']:+.4f}{se} "
            f"(standard error over users); positive for {100 * swap['share_users_positive']:.1f} % of users. "
            "0 in expectation when covers ignore the user.",
        ]
    swap = result["icg"].get("swap_test_optimised")
    if swap and swap["own_minus_others"] is not None:
        lines += [
            "",
            f"The same with the optimised reward model (not evidence: the adapter trained on it): "
            f"{swap['own_minus_others']:+.4f} ± {swap['std_error']:.4f}; positive for "
            f"{100 * swap['share_users_positive']:.1f} % of users.",
        ]
    lines += [
        "",
        f"ICG − rule-based, judge reward per (user, item) pair: {d['mean']:+.4f} ± {d['std_error']:.4f} "
        f"(standard error); ICG higher on {100 * d['share_of_pairs_improved']:.1f} % of pairs.",
        "",
        "- *judge reward*: the personalized reward model trained with seed 1 (another user split and init), "
        "never optimised against; *optimised reward*: the seed-0 model the adapter was trained on — a rise "
        "there is expected and proves nothing.",
        f"- *SSIM*, *{LPIPS_NAME}*: fidelity to the item's reference cover ({LPIPS_NAME} is the mini CLIP "
        "stand-in for LPIPS, not LPIPS).",
        "- *personalization r*: mean over users of Pearson(shift of the mini CLIP's zero-shot genre "
        "probabilities of the user's covers from the item average, the user's genre taste in ratings); p "
        "from a permutation test over users. 0 by construction when covers do not depend on the user.",
        "",
        f"![samples]({GRID_NAME})",
        "",
    ]
    return "\n".join(lines)
