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
from icg.data.pairs import PairConfig
from icg.data.records import InteractionData
from icg.machine import machine
from icg.rewards.personalized import Encoded, PersonalizedRewardConfig, PersonalizedRewardModel
from icg.training.reward_model import (
    RewardData,
    RewardTrainConfig,
    encode_cache,
    pair_accuracy,
    prepare_reward_data,
    train_reward_model,
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
REFERENCES: dict[str, str] = {
    "popularity": "Reference: item popularity (train users' interactions)",
    "item_mean": "Reference: item mean rating (train users)",
}


def reference_accuracies(data: InteractionData, pairs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Popularity and item-mean-rating scorers fitted on the training users' interactions → val/test acc."""
    train_users = set(pairs.loc[pairs["split"] == "train", "user_id"].astype(str))
    inter = data.interactions.assign(user_id=data.interactions["user_id"].astype(str))
    inter = inter[inter["user_id"].isin(train_users)]
    scorers = {
        "popularity": inter.groupby("item_id").size().astype(float),
        "item_mean": inter.groupby("item_id")["signal"].mean(),
    }
    out: dict[str, dict[str, float]] = {}
    for name, table in scorers.items():
        out[name] = {}
        for split in ("val", "test"):
            part = pairs[pairs["split"] == split]
            # host floats from a pandas table (CPU by design): accuracy is counted on the CPU
            pos = torch.tensor(part["pos_item_id"].map(table).fillna(0.0).to_numpy())
            neg = torch.tensor(part["neg_item_id"].map(table).fillna(0.0).to_numpy())
            out[name][split] = pair_accuracy(pos, neg)
    return out


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
    rows: tuple[Row, ...] = ROWS,
    command: str = "",
) -> dict[str, object]:
    """Train every row for every seed, measure the references, write table6.json and table6.md.

    Runs are resumable: each keeps its checkpoint under out_dir/seed{s}/{row}, and a finished run is only
    evaluated again. The full model of each seed is saved (`PersonalizedRewardModel.from_pretrained`).
    """
    if not seeds:
        raise ValueError("need at least one seed")
    out = Path(out_dir)
    started, load_start = time.perf_counter(), os.getloadavg()
    image_size = clip.config.vision_config.image_size
    per_seed: dict[int, dict[str, dict[str, object]]] = {}
    item_cache: dict[str, Encoded] = {}
    info: dict[str, object] = {}
    pairs_per_split: dict[str, object] = {}
    for seed in seeds:
        rdata, pairs, info = prepare_reward_data(data, image_size, out / "cache", PairConfig(seed=seed))
        pairs_per_split[str(seed)] = info["pair_summary"]["pairs_per_split"]  # type: ignore[index]
        per_seed[seed] = {
            k: {"test": v["test"], "val": v["val"]} for k, v in reference_accuracies(data, pairs).items()
        }
        cache = _shared_cache(clip, processor, base, rdata, item_cache)
        for row in rows:
            config = dataclasses.replace(base, **row.switches)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                run_clip = clip if config.trainable_clip_layers == 0 else copy.deepcopy(clip)
                model = PersonalizedRewardModel(config, run_clip, processor)
            metrics = train_reward_model(
                model,
                rdata,
                out / f"seed{seed}" / row.key,
                dataclasses.replace(train, seed=seed),
                cache=cache,
                save=row.key == "full",
                info={**info, "clip": clip_source, "row": row.key},
            )
            keep = ("best_epoch", "epochs_run", "seconds_this_call")
            per_seed[seed][row.key] = {"test": metrics["test_accuracy"], "val": metrics["val_accuracy"]}
            per_seed[seed][row.key] |= {k: metrics[k] for k in keep}
            logger.info("table 6 seed %d %s: test %.4f", seed, row.key, metrics["test_accuracy"])
    result = _summarise(per_seed, rows, seeds)
    result |= {
        "dataset": data.name,
        "seeds": list(seeds),
        "clip": clip_source,
        "captions": info.get("captions"),
        "profile_top_genres": info.get("profile_top_genres"),
        "pairs_per_split": pairs_per_split,
        "model_config": base.to_dict(),
        "train_config": dataclasses.asdict(train),
        "machine": machine() | {"load_average_start": [round(x, 2) for x in load_start]},
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "command": command,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / JSON_NAME, json.dumps(result, indent=2))
    write_text_atomic(out / MARKDOWN_NAME, markdown(result))
    return result


def _shared_cache(
    clip: CLIPModel,
    processor: CLIPProcessor,
    base: PersonalizedRewardConfig,
    rdata: RewardData,
    item_cache: dict[str, Encoded],
) -> dict[str, Encoded]:
    """Stem outputs for every input; items' (title, caption, image) once per table, users' once per seed."""
    full = dataclasses.replace(base, use_title=True, use_caption=True, use_image=True, use_user=True)
    encoder = PersonalizedRewardModel(full, clip, processor)  # only its frozen stems run
    if not item_cache:
        item_cache.update(encode_cache(encoder, rdata, names=("title", "caption", "image")))
    return {**item_cache, **encode_cache(encoder, rdata, names=("user",))}


def _summarise(per_seed: dict[int, dict[str, dict]], rows: tuple[Row, ...], seeds: tuple[int, ...]) -> dict:
    table = []
    entries = [(r.key, r.label, r.paper) for r in rows] + [
        (k, label, None) for k, label in REFERENCES.items()
    ]
    for key, label, paper in entries:
        test = [100 * float(per_seed[s][key]["test"]) for s in seeds]
        val = [100 * float(per_seed[s][key]["val"]) for s in seeds]
        (mean, std), (val_mean, _) = _mean_std(test), _mean_std(val)
        table.append(
            {"key": key, "label": label, "test_mean": round(mean, 2), "test_std": round(std, 2),
             "val_mean": round(val_mean, 2), "test_per_seed": [round(t, 2) for t in test], "paper": paper}
        )  # fmt: skip
    return {"rows": table, "per_seed": {str(s): per_seed[s] for s in seeds}}


def markdown(result: dict) -> str:
    """The table as Markdown, with how it was made."""
    m = result["machine"]
    lines = [
        f"Table 6 (MovieLens column) on {result['dataset']}: test-pair accuracy (%), mean ± std over seeds "
        f"{result['seeds']}.",
        "",
        "| Setting | Ours: test acc. | per seed | val acc. | Paper (MovieLens) |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        paper = "–" if row["paper"] is None else f"{row['paper']:.1f}"
        per = ", ".join(f"{t:.1f}" for t in row["test_per_seed"])
        ours = f"{row['test_mean']:.1f} ± {row['test_std']:.1f}"
        lines.append(f"| {row['label']} | {ours} | {per} | {row['val_mean']:.1f} | {paper} |")
    cfg = result["model_config"]
    lines += [
        "",
        f"- CLIP: {result['clip']}; last {cfg['trainable_clip_layers']} CLIP layers trained"
        + (" (CLIP frozen, features cached)" if cfg["trainable_clip_layers"] == 0 else ""),
        f"- captions: {result['captions']}; user profile = top {result['profile_top_genres']} genres of the "
        "user's interactions outside their pairs + demographic sentence",
        f"- pairs per split and seed: {result['pairs_per_split']}",
        f"- model {cfg}; training {result['train_config']}",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} "
        f"thread(s), load average {m['load_average_start']} → {m['load_average']}; {result['minutes']} min",
        f"- command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"
