"""Paper Table 6: personalized preference accuracy on test pairs, for the reward model and its ablations.

Every row is the same `PersonalizedRewardModel` with switches (inputs on/off, fusion transformer on/off),
trained by `train_reward_model` on the same user-disjoint pairs; per seed s the pairs are
`build_pairs(PairConfig(seed=s))` (ties, and which users are train/val/test) and the model initialisation,
sampling and dropout use s as well.
Early stopping reads only the validation pairs; the hyper-parameters are fixed in advance (the preset), the
test pairs are scored once per run at the end. Two references are measured in the same run on the same pairs:

- item popularity: number of interactions of the item among the training users (no model);
- user only: the same model class reading only the user profile. Both items of a pair share the user, so its
  scores tie (up to float rounding between batch rows) and its accuracy is 0.5 by construction: the user
  input can only help through interaction with the item inputs.

A third, item mean rating among the training users, is printed too: on MovieLens most test-pair items are
rated by training users, so the item's average rating is a strong non-personalized ranker to read rows by.

Issue 18 (beyond the paper): every row is also scored on pairs that need the user (`icg.data.taste_pairs`):
*debiased* within-user pairs and *same-item* two-user pairs; the references get a *user mean rating* (over the
user's ratings outside their pairs) and a non-learned *stated taste* scorer (the taste profile's parsed genre
vector · the item's genres). The rows marked "taste" are the new recipe: the taste profile, stated taste as
an input, a bilinear user × item term, trained on the mixture of the three pair kinds (val users choose the
epoch on the mean of the three val accuracies). The paper's rows keep the paper's recipe (paper pairs,
watched-genre profile).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import write_text_atomic
from icg.data.covers.render import item_genres
from icg.data.pairs import PairConfig
from icg.data.records import InteractionData
from icg.data.taste import parse_taste
from icg.data.taste_pairs import KINDS, history
from icg.machine import machine
from icg.rewards.personalized import Encoded, PersonalizedRewardConfig, PersonalizedRewardModel
from icg.training.reward_model import (
    RewardData,
    RewardTrainConfig,
    dataset_genres,
    encode_cache,
    pair_accuracy,
    prepare_reward_data,
    train_reward_model,
    user_profiles,
)

logger = logging.getLogger(__name__)

JSON_NAME = "table6.json"
MARKDOWN_NAME = "table6.md"


@dataclass(frozen=True)
class Row:
    """One row of Table 6: a model variant (switches on the base config) and the paper's MovieLens figure."""

    key: str
    label: str
    switches: dict[str, object]
    paper: float | None  # Table 6, MovieLens column (%)
    taste: bool = (
        False  # issue 18's recipe: taste profile + stated taste + interaction, mixture of pair kinds
    )


ROWS: tuple[Row, ...] = (
    Row("full", "Personalized reward model", {}, 86.2),
    Row("image_only", "Only image", {"use_title": False, "use_caption": False, "use_user": False}, 54.1),
    Row("image_title", "Image and title", {"use_caption": False, "use_user": False}, 67.1),
    Row("image_user", "Image and user profile", {"use_title": False, "use_caption": False}, 78.3),
    Row("no_transformer", "w/o transformers", {"fusion_layers": 0}, 72.5),
    Row(
        "user_only",
        "Reference: user only",
        {"use_title": False, "use_caption": False, "use_image": False},
        None,
    ),
)
# the "taste" preset's switches (icg.training.reward_model); taste_genres: the dataset's, at run time
_TASTE = {"taste_genres": ("<dataset>",), "interaction": True, "user_text": False, "fuse_user": False}
TASTE_ROWS: tuple[Row, ...] = (
    Row(
        "taste_full",
        "Taste model: title, caption, image + stated taste × image (mixed pairs)",
        _TASTE,
        None,
        True,
    ),
    Row(
        "taste_image_user",
        "Taste model: image + stated taste × image (mixed pairs)",
        {"use_title": False, "use_caption": False, **_TASTE},
        None,
        True,
    ),
    Row(
        "taste_image_only",
        "Taste recipe, only image (mixed pairs)",
        {"use_title": False, "use_caption": False, "use_user": False},
        None,
        True,
    ),
)
REFERENCES: dict[str, str] = {
    "popularity": "Reference: item popularity (train users' interactions)",
    "item_mean": "Reference: item mean rating (train users)",
    "user_mean": "Reference: user mean rating (the user's ratings outside their pairs)",
    "stated_taste": "Reference: stated taste · item genres (taste profile, no learning)",
}


def reference_accuracies(
    data: InteractionData, pairs: pd.DataFrame, profiles: dict[str, str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Non-learned scorers → {name: {split: {kind: acc}}} on the two-user pairs table (`build_taste_pairs`).

    popularity and item mean from the training users' interactions; user mean from each user's ratings
    outside their pairs; stated taste (when `profiles`, the taste profiles, are given) = parsed taste ·
    item genres / number of genres."""
    train_users = set(pairs.loc[pairs["split"].astype(str) == "train", "pos_user_id"].astype(str))
    inter = data.interactions.assign(
        user_id=data.interactions["user_id"].astype(str), item_id=data.interactions["item_id"].astype(str)
    )
    train = inter[inter["user_id"].isin(train_users)]
    item_tables = {
        "popularity": train.groupby("item_id").size().astype(float),
        "item_mean": train.groupby("item_id")["signal"].mean(),
    }
    user_mean = history(inter, pairs).groupby("user_id")["signal"].mean()
    scorers = {name: item_scorer(table) for name, table in item_tables.items()}
    scorers["user_mean"] = lambda users, _items: users.map(user_mean).fillna(user_mean.mean()).to_numpy()
    if profiles is not None:
        scorers["stated_taste"] = taste_scorer(data, profiles)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, scorer in scorers.items():
        out[name] = {}
        for split in ("val", "test"):
            out[name][split] = {}
            for kind in KINDS:
                part = pairs[(pairs["split"].astype(str) == split) & (pairs["kind"] == kind)]
                if part.empty:
                    continue
                # host floats from pandas tables (CPU by design): accuracy is counted on the CPU
                pos = torch.tensor(scorer(part["pos_user_id"].astype(str), part["pos_item_id"].astype(str)))
                neg = torch.tensor(scorer(part["neg_user_id"].astype(str), part["neg_item_id"].astype(str)))
                out[name][split][kind] = pair_accuracy(pos, neg)
    return out


def item_scorer(table: pd.Series):  # noqa: ANN201 - a small closure
    """(users, items) → the items' values in `table` (0 when missing): an item-only scorer."""
    return lambda _users, items: items.map(table).fillna(0.0).to_numpy()


def taste_scorer(data: InteractionData, profiles: dict[str, str]):  # noqa: ANN201 - a small closure
    """(users, items) → stated taste (parsed from the profile) · the item's genres / their number."""
    genres = dataset_genres(data.items)
    users = sorted(profiles)
    taste = parse_taste([profiles[u] for u in users], genres).numpy()  # (U, G)
    row = {u: n for n, u in enumerate(users)}
    ids = data.items["item_id"].astype(str)
    hot = torch.zeros(len(ids), len(genres))
    for n, value in enumerate(data.items["genres"]):
        for g in item_genres(value):
            if g.lower() in genres:
                hot[n, genres.index(g.lower())] = 1.0
    hot = (hot / hot.sum(1, keepdim=True).clamp(min=1)).numpy()
    item_row = {i: n for n, i in enumerate(ids)}
    return lambda users, items: (taste[[row[u] for u in users]] * hot[[item_row[i] for i in items]]).sum(1)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def run_table6(
    data: InteractionData,
    clip: CLIPModel,
    processor: CLIPProcessor,
    out_dir: str | Path,
    *,
    clip_source: str,
    base: PersonalizedRewardConfig,
    train: RewardTrainConfig,
    seeds: tuple[int, ...] = (0, 1, 2),
    rows: tuple[Row, ...] = ROWS + TASTE_ROWS,
    taste_train: RewardTrainConfig | None = None,
    command: str = "",
) -> dict[str, object]:
    """Train every row for every seed, measure the references, write table6.json and table6.md.

    The paper's rows train with `train` on the paper's pairs and read the "watched" profile; the taste rows
    with `taste_train` (default: `train` on every pair kind) and the "taste" profile. Every row is scored on
    every pair kind. Runs are resumable: each keeps its checkpoint under out_dir/seed{s}/{row}, and a finished
    run is only evaluated again. The full and taste_full models of each seed are saved.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    taste_train = taste_train or dataclasses.replace(train, train_kinds=KINDS)
    genres = dataset_genres(data.items)
    out = Path(out_dir)
    started, load_start = time.perf_counter(), os.getloadavg()
    image_size = clip.config.vision_config.image_size
    per_seed: dict[int, dict[str, dict[str, object]]] = {}
    item_cache: dict[str, Encoded] = {}
    info: dict[str, object] = {}
    pairs_per_kind: dict[str, object] = {}
    for seed in seeds:
        rdata, pairs, info = prepare_reward_data(data, image_size, out / "cache", PairConfig(seed=seed))
        taste_profiles = user_profiles(data, pairs, style="taste")
        tdata = dataclasses.replace(rdata, profiles=[taste_profiles[u] for u in rdata.user_ids])
        pairs_per_kind[str(seed)] = info["pairs_per_kind"]
        refs = reference_accuracies(data, pairs, taste_profiles)
        per_seed[seed] = {k: _entry(v["val"], v["test"]) for k, v in refs.items()}
        caches = {
            False: _shared_cache(clip, processor, base, rdata, item_cache, ()),
            True: _shared_cache(clip, processor, base, tdata, item_cache, genres),
        }
        for row in rows:
            switches = dict(row.switches)
            if switches.get("taste_genres"):
                switches["taste_genres"] = genres
            config = dataclasses.replace(base, **switches)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                run_clip = clip if config.trainable_clip_layers == 0 else copy.deepcopy(clip)
                model = PersonalizedRewardModel(config, run_clip, processor)
            metrics = train_reward_model(
                model,
                tdata if row.taste else rdata,
                out / f"seed{seed}" / row.key,
                dataclasses.replace(taste_train if row.taste else train, seed=seed),
                cache=caches[row.taste],
                save=row.key in ("full", "taste_full"),
                info={
                    **info,
                    "clip": clip_source,
                    "row": row.key,
                    "profile_style": "taste" if row.taste else "watched",
                },
            )
            keep = ("best_epoch", "epochs_run", "seconds_this_call")
            per_seed[seed][row.key] = _entry(
                metrics["val_by_kind"],  # type: ignore[arg-type]
                metrics["test_by_kind"],  # type: ignore[arg-type]
            )
            per_seed[seed][row.key] |= {k: metrics[k] for k in keep}
            logger.info("table 6 seed %d %s: test %s", seed, row.key, metrics["test_by_kind"])
    result = _summarise(per_seed, rows, seeds)
    result |= {
        "dataset": data.name,
        "seeds": list(seeds),
        "clip": clip_source,
        "captions": info.get("captions"),
        "profile_top_genres": info.get("profile_top_genres"),
        "pairs_per_kind": pairs_per_kind,
        "taste_pairs": info.get("taste_pairs"),
        "model_config": base.to_dict(),
        "train_config": dataclasses.asdict(train),
        "taste_train_config": dataclasses.asdict(taste_train),
        "machine": machine() | {"load_average_start": [round(x, 2) for x in load_start]},
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "command": command,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / JSON_NAME, json.dumps(result, indent=2))
    write_text_atomic(out / MARKDOWN_NAME, markdown(result))
    return result


def _entry(val: dict[str, float], test: dict[str, float]) -> dict[str, object]:
    """One run's accuracies: "test"/"val" on the paper's pairs (the paper's column), and per kind."""
    return {"test": test.get("paper", math.nan), "val": val.get("paper", math.nan), "test_by_kind": test,
            "val_by_kind": val}  # fmt: skip


def _shared_cache(
    clip: CLIPModel,
    processor: CLIPProcessor,
    base: PersonalizedRewardConfig,
    rdata: RewardData,
    item_cache: dict[str, Encoded],
    genres: tuple[str, ...] = (),
) -> dict[str, Encoded]:
    """Stem outputs for every input; items' (title, caption, image) once per table, users' once per seed
    and profile style; "taste" (the parsed stated taste) when `genres` are given."""
    full = dataclasses.replace(
        base, use_title=True, use_caption=True, use_image=True, use_user=True, taste_genres=genres
    )
    encoder = PersonalizedRewardModel(full, clip, processor)  # only its frozen stems run
    if not item_cache:
        item_cache.update(encode_cache(encoder, rdata, names=("title", "caption", "image")))
    users = ("user", "taste") if genres else ("user",)
    return {**item_cache, **encode_cache(encoder, rdata, names=users)}


def _mean_std_of(values: list[float]) -> tuple[float, float]:
    kept = [v for v in values if not math.isnan(v)]
    return _mean_std(kept) if kept else (math.nan, math.nan)


def _summarise(per_seed: dict[int, dict[str, dict]], rows: tuple[Row, ...], seeds: tuple[int, ...]) -> dict:
    table = []
    entries = [(r.key, r.label, r.paper) for r in rows] + [
        (k, label, None) for k, label in REFERENCES.items() if k in per_seed[seeds[0]]
    ]
    for key, label, paper in entries:
        by_kind = {}
        for kind in KINDS:
            test = [100 * float(per_seed[s][key]["test_by_kind"].get(kind, math.nan)) for s in seeds]
            val = [100 * float(per_seed[s][key]["val_by_kind"].get(kind, math.nan)) for s in seeds]
            (mean, std), (val_mean, _) = _mean_std_of(test), _mean_std_of(val)
            by_kind[kind] = {
                "test_mean": round(mean, 2),
                "test_std": round(std, 2),
                "val_mean": round(val_mean, 2),
                "test_per_seed": [round(t, 2) for t in test],
            }
        paper_kind = by_kind["paper"]
        keep = ("test_mean", "test_std", "val_mean", "test_per_seed")
        table.append(
            {
                "key": key,
                "label": label,
                **{k: paper_kind[k] for k in keep},
                "paper": paper,
                "by_kind": by_kind,
            }
        )
    return {"rows": table, "per_seed": {str(s): per_seed[s] for s in seeds}}


def _cell(kind: dict) -> str:
    if math.isnan(kind["test_mean"]):
        return "–"
    return f"{kind['test_mean']:.1f} ± {kind['test_std']:.1f}"


def markdown(result: dict) -> str:
    """The table as Markdown, with how it was made."""
    m = result["machine"]
    lines = [
        f"Table 6 (MovieLens column) on {result['dataset']}: test-pair accuracy (%) of held-out users, mean "
        f"± std over seeds {result['seeds']}, on the paper's pairs and on pairs that need the user "
        "(issue 18).",
        "",
        "| Setting | Paper's pairs | per seed | val | Debiased pairs | Same-item pairs | Paper (MovieLens) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        paper = "–" if row["paper"] is None else f"{row['paper']:.1f}"
        per = ", ".join(f"{t:.1f}" for t in row["test_per_seed"])
        k = row["by_kind"]
        lines.append(
            f"| {row['label']} | {_cell(k['paper'])} | {per} | {row['val_mean']:.1f} "
            f"| {_cell(k['debiased'])} "
            f"| {_cell(k['same_item'])} | {paper} |"
        )
    cfg = result["model_config"]
    lines += [
        "",
        "- Paper's pairs: a user's top-5 vs bottom-5 rated items. Debiased: top-5 vs bottom-5 by the "
        "residual r − μ − b_item − b_user (biases fitted on the training users). Same-item: one item, a user "
        "who has it among their top items (rating ≥ 4) vs one who has it among their bottom items (≤ 2).",
        "- Rows labelled 'Taste …' are beyond the paper (issue 18): the profile states liked and disliked "
        "genres (from the user's ratings outside all their pairs), the model parses it into a genre vector "
        "(stated taste) read through a bilinear stated-taste × item term; trained on all three pair kinds. "
        "The paper's rows train on the paper's pairs with the watched-genre profile.",
        f"- CLIP: {result['clip']}; last {cfg['trainable_clip_layers']} CLIP layers trained"
        + (" (CLIP frozen, features cached)" if cfg["trainable_clip_layers"] == 0 else ""),
        f"- captions: {result['captions']}; paper rows' profile = top {result['profile_top_genres']} watched "
        "genres outside the user's pairs + demographic sentence",
        f"- pairs per kind, split and seed: {result['pairs_per_kind']}",
        f"- model {cfg}; training {result['train_config']}; taste rows {result['taste_train_config']}",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} "
        f"thread(s), load average {m['load_average_start']} → {m['load_average']}; {result['minutes']} min",
        f"- command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"
