"""Paper Table 7: MMGCN on MovieLens-100k with no image, item images, and averaged / generated user images.

Data. Implicit feedback = ratings >= 4 (the user encoder's definition of a positive). Per user the positives
are split about 80/10/10 into train/val/test, once (the split is the same for every row and seed):
test = the positives the shipped user encoder held out (`icg.users.train.split_interactions`, seed 0, 10 %),
so U_pre — and with it the generated covers — never saw a test interaction; val = a seeded 10 % of the
user's positives among the rest; train = the remainder. Validation picks the epoch (early stopping); the
hyper-parameters (`Table7Config`) were set once on validation Recall@10 and are the same for every row; test
is scored once per run, by full ranking over every item the user has no train (and no val) positive for.
Recall@10 and NDCG@10 are averaged over users with a test positive.

Visual features: the mini preset's CLIP image embedding ("miniCLIP", not CLIP), L2-normalized:
  Item            the item's reference cover (rendered, variant 0) → the visual modality's item input;
  Averaged-user   Item + per user the mean feature of their train items → the visual user input;
  Generated-user  Item + per user the mean feature of ICG covers generated for m of their train items with
                  the user's id (the mini pipeline, user encoder + adapter);
  control         Item + the mean reference-cover feature of the same m items (not in the paper): separates
                  what personalization adds from what averaging only m items does.
A user feature enters MMGCN as users' visual input = learned preference + Linear(feature)
(`icg.recsys.mmgcn`). Each row is trained for every seed (initialisation, batches, negatives).
Users the reward model and the adapter trained on had ICG see their pair items (top/bottom 5 ratings), so
the figures are also reported over "ICG-unseen" users (the test split of the preference pairs, seed 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from icg.atomic import atomic_path, write_text_atomic
from icg.data.records import InteractionData
from icg.recsys.mmgcn import MMGCN, MMGCNConfig, MMGCNTrainConfig, evaluate, interaction_mask, train_mmgcn
from icg.training import loop

logger = logging.getLogger(__name__)

JSON_NAME, MD_NAME = "table7.json", "table7.md"
FEATURE_NAME = "miniCLIP"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    user: str | None  # None, "average", "generated", "average_m"
    item: bool
    paper: tuple[float, float] | None  # Table 7 (MovieLens): Recall@10 %, NDCG@10


ROWS: tuple[Row, ...] = (
    Row("wo_image", "w/o image", None, False, (16.17, 0.0749)),
    Row("item", "Item", None, True, (17.94, 0.0853)),
    Row("averaged_user", "Averaged-user", "average", True, (18.99, 0.0991)),
    Row("generated_user", "Generated-user", "generated", True, (20.21, 0.1016)),
    Row("control_m", "Control: averaged over the generated items", "average_m", True, None),
)
DELTAS = (("item", "wo_image"), ("averaged_user", "item"), ("generated_user", "averaged_user"),
          ("generated_user", "control_m"), ("generated_user", "item"))  # fmt: skip


@dataclass(frozen=True)
class Table7Config(loop.JsonConfig):
    """Split, generation and MMGCN settings (fixed before any test figure is read)."""

    positive_threshold: float = 4.0
    split_seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.1
    covers_per_user: int = 2  # m: generated covers per user (of their train items)
    generation_seed: int = 0
    user_chunk: int = 32  # users per cache file of generated features
    dim: int = 64
    layers: int = 2
    lr: float = 1e-2
    reg: float = 1e-4
    batch_size: int | None = None  # full batch
    max_epochs: int = 400
    eval_every: int = 10
    patience: int = 10
    grad_clip: float | None = 1.0
    k: int = 10

    def __post_init__(self) -> None:
        loop.check_positive_ints(self, ("covers_per_user", "user_chunk", "dim", "layers", "k"))
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1 - self.test_fraction):
            raise ValueError("need 0 < test_fraction, 0 < val_fraction < 1 - test_fraction")

    def train_config(self, seed: int) -> MMGCNTrainConfig:
        names = ("lr", "reg", "batch_size", "max_epochs", "eval_every", "patience", "grad_clip", "k")
        return MMGCNTrainConfig(seed=seed, **{n: getattr(self, n) for n in names})


# ---------------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class RecSplit:
    """Positives as (user row, item row) arrays; rows follow data.users / data.items order."""

    user_ids: list[str]
    item_ids: list[str]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def mask(self, *parts: str) -> torch.Tensor:
        users = np.concatenate([getattr(self, p)[0] for p in parts])
        items = np.concatenate([getattr(self, p)[1] for p in parts])
        return interaction_mask(users, items, len(self.user_ids), len(self.item_ids))

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            for array in part:
                h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def split_positives(data: InteractionData, config: Table7Config, vocab=None) -> RecSplit:
    """Test = `split_interactions`' held-out positives for (split_seed, test_fraction) under `vocab` (pass the
    user encoder's to reproduce its split); val = a seeded `val_fraction` of each user's positives (of the
    total, at least 1 when 2+ remain) among the rest; train = the remainder."""
    from icg.users import FeatureVocab
    from icg.users.train import split_interactions

    vocab = vocab or FeatureVocab.from_data(data)
    held = split_interactions(data, vocab, seed=config.split_seed, test_fraction=config.test_fraction,
                              positive_threshold=config.positive_threshold)  # fmt: skip
    user_ids = data.users["user_id"].astype(str).tolist()
    item_ids = data.items["item_id"].astype(str).tolist()
    user_row = {u: k for k, u in enumerate(user_ids)}
    item_row = {i: k for k, i in enumerate(item_ids)}

    def rows(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.array([user_row[vocab.users.tokens[x]] for x in users], dtype=np.int64)
        i = np.array([item_row[vocab.items.tokens[x]] for x in items], dtype=np.int64)
        return u, i

    test = rows(held.test_users, held.test_items)
    users, items = rows(held.train_users, held.train_items)
    order = np.lexsort((items, users))  # a canonical order before the seeded shuffle within each user
    users, items = users[order], items[order]
    order = np.lexsort((np.random.default_rng([config.split_seed, 2027]).random(len(users)), users))
    users, items = users[order], items[order]
    rank = np.arange(len(users)) - np.searchsorted(users, users, side="left")  # position within the user
    rest = np.bincount(users, minlength=len(user_ids))[users]
    total = rest + np.bincount(test[0], minlength=len(user_ids))[users]
    n_val = np.where(rest >= 2, np.maximum(1, np.floor(config.val_fraction * total)), 0)
    is_val = rank < n_val
    return RecSplit(
        user_ids, item_ids, (users[~is_val], items[~is_val]), (users[is_val], items[is_val]), test
    )


def user_encoder_alignment(spec, split: RecSplit, config: Table7Config) -> dict[str, object]:
    """Does the test set equal the user encoder's held-out positives? Read from its metrics.json."""
    file = Path(spec.user_encoder or "") / "metrics.json"
    if not file.is_file():
        return {"checked": False, "why": f"{file} not found"}
    m = json.loads(file.read_text(encoding="utf-8"))
    n_train, n_test = len(split.train[0]) + len(split.val[0]), len(split.test[0])
    ours = (config.split_seed, config.positive_threshold, n_test, n_train)
    same = (m.get("seed"), m.get("positive_threshold"), m.get("n_test"), m.get("n_train")) == ours
    return {
        "checked": True,
        "same_split": same,
        "encoder_n_test": m.get("n_test"),
        "n_test": len(split.test[0]),
    }


# ------------------------------------------------------------------------------------------------- features
@torch.no_grad()
def embed_images(features, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, 3, H, W) uint8 or [0, 1] float → (N, P) L2-normalized `ClipImageFeatures` embeddings."""
    out = [features(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def mean_features(features: torch.Tensor, users: np.ndarray, items: np.ndarray, n_users: int) -> torch.Tensor:
    """(U, P) L2-normalized mean of `features[item]` over each user's (user, item) pairs; 0 for none."""
    # CPU by design: the features were read back to the host (cached); a device tensor is refused here
    total = torch.zeros(n_users, features.shape[1]).index_add_(0, torch.as_tensor(users), features[items])
    return torch.nn.functional.normalize(total, dim=-1)


def choose_generation_items(split: RecSplit, m: int, seed: int) -> list[np.ndarray]:
    """Per user, min(m, #train) of their train items, seeded."""
    rng = np.random.default_rng([seed, 110])
    users, items = split.train
    chosen = []
    for u in range(len(split.user_ids)):
        own = np.sort(items[users == u])
        chosen.append(np.sort(rng.choice(own, min(m, len(own)), replace=False)) if len(own) else own)
    return chosen


def generated_user_features(
    pipe,
    features,
    titles: list[str],
    covers: torch.Tensor,
    user_ids: list[str],
    chosen: list[np.ndarray],
    cache_dir: Path,
    *,
    settings: dict[str, object],
    chunk: int = 32,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(U, P) L2-normalized mean embedding of ICG covers made for user u from `chosen[u]` (rows of `titles`
    and `covers`, (I, 3, S, S) uint8 references), one pipeline call per user. Chunks of `chunk` users are
    cached as safetensors (atomic) keyed by a fingerprint of `settings` and the chunk's users and items, so
    a killed run resumes; a user without items gets 0. Returns the features and the generation timing."""
    from icg.data.pixels import to_pil
    from icg.pipeline import CoverItem, CoverUser

    out, seconds, made, total_seconds = [], 0.0, 0, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(user_ids), chunk)
    for start in tqdm(starts, desc="generated-user covers", unit="chunk", disable=not progress):
        users, picks = user_ids[start : start + chunk], chosen[start : start + chunk]
        key = hashlib.sha256(json.dumps([settings, users, [p.tolist() for p in picks]]).encode()).hexdigest()
        path = cache_dir / f"users_{start:05d}.safetensors"
        cached, spent = _read_chunk(path, key)
        if cached is None:
            began, rows = time.perf_counter(), []
            for user, pick in zip(users, picks, strict=True):
                if len(pick) == 0:
                    rows.append(torch.zeros(features.num_features))  # CPU, as the cached rows below
                    continue
                items = [CoverItem(title=titles[i], image=to_pil(covers[i])) for i in pick]
                images = pipe(items, [CoverUser(user_id=user)], output_type="pt", **settings["pipe"]).images
                rows.append(embed_images(features, images.float().cpu()).mean(0))  # (P,)
                made += len(pick)
            cached = torch.stack(rows)  # (C, P)
            spent = time.perf_counter() - began
            seconds += spent
            meta = {"key": key, "seconds": f"{spent:.3f}"}
            with atomic_path(path) as tmp:
                save_file({"features": cached.contiguous()}, str(tmp), metadata=meta)
        total_seconds += spent
        out.append(cached)
    n_covers = sum(len(p) for p in chosen)
    timing = {
        "seconds_this_call": round(seconds, 1),
        "covers_this_call": made,
        "seconds_total": round(total_seconds, 1),
        "covers_total": n_covers,
        "covers_per_second": round(n_covers / total_seconds, 3) if total_seconds else None,
    }
    return torch.nn.functional.normalize(torch.cat(out), dim=-1), timing


def _read_chunk(path: Path, key: str) -> tuple[torch.Tensor | None, float]:
    """A cached chunk's features and generation seconds, or (None, 0) when absent, stale or unreadable."""
    if not path.is_file():
        return None, 0.0
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                logger.warning("%s was made with other settings; generating again", path)
                return None, 0.0
            return f.get_tensor("features"), float(meta.get("seconds", 0.0))
    except Exception as err:  # noqa: BLE001 - a corrupt cache entry is regenerated, never trusted
        logger.warning("ignoring unreadable %s: %s", path, err)
        return None, 0.0


def feature_similarity(user_features: dict[str | None, torch.Tensor | None]) -> dict[str, float]:
    """Mean cosines between the user-feature kinds (same user) and among users of one kind: what the
    generated covers' features share with the references, and how much they differ between users."""
    kinds = {k: v for k, v in user_features.items() if k is not None and v is not None}
    present = torch.stack([v.norm(dim=-1) > 0 for v in kinds.values()]).all(0) if kinds else None
    out: dict[str, float] = {}
    for a, x in kinds.items():
        x = x[present]
        out[f"{a}~{a} (between users)"] = round(float((x @ x.T).mean()), 4)
        for b, y in kinds.items():
            if a < b:
                out[f"{a}~{b} (same user)"] = round(float((x * y[present]).sum(-1).mean()), 4)
    return out


def load_generator(spec, cache_dir: Path):
    """The preset's cover pipeline, with each item's context cached on disk (computed once per item)."""
    from icg.context.cache import ContextCache
    from icg.loading import load_cover_pipeline

    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.context_encoder.cache = ContextCache(cache_dir)
    return pipe


# ------------------------------------------------------------------------------------------------------ runs
def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _clean(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 5) for v in values]


def run_one(
    row: Row,
    seed: int,
    split: RecSplit,
    item_features: torch.Tensor | None,
    user_features: torch.Tensor | None,
    config: Table7Config,
    run_file: Path,
    unseen: np.ndarray,
    progress: bool = True,
) -> dict[str, object]:
    """Train one (row, seed) and score it on test; skipped when `run_file` holds this exact run."""
    inputs = [
        dataclasses.asdict(row),
        seed,
        config.to_json(),
        split.digest(),
        _digest(item_features, user_features),
    ]
    fingerprint = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    if run_file.is_file():
        done = json.loads(run_file.read_text(encoding="utf-8"))
        if done.get("completed") and done.get("fingerprint") == fingerprint:
            return done
    model_config = MMGCNConfig(
        len(split.user_ids), len(split.item_ids), config.dim, config.layers,
        item_feature_dim=0 if item_features is None else item_features.shape[1],
        user_feature_dim=0 if user_features is None else user_features.shape[1],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MMGCN(model_config, item_features, user_features)
    trained = train_mmgcn(model, *split.train, split.mask("val"), config.train_config(seed),
                          progress=progress, desc=f"{row.key} seed {seed}")  # fmt: skip
    ranked = evaluate(trained.model, *split.train, split.mask("train", "val"), split.mask("test"), config.k)
    result = {
        "fingerprint": fingerprint, "completed": True, "row": row.key, "seed": seed, "test": ranked.mean(),
        "test_icg_unseen_users": ranked.mean(unseen), "val": trained.best_val,
        "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
        "seconds": round(trained.seconds, 1),
        "model_config": dataclasses.asdict(model_config), "history": trained.history,
        "per_user_recall": _clean(ranked.recall), "per_user_ndcg": _clean(ranked.ndcg),
    }  # fmt: skip
    write_text_atomic(run_file, json.dumps(result))
    logger.info("table 7 %s seed %d: test recall %.4f ndcg %.4f (%.0f s)", row.key, seed,
                result["test"]["recall"], result["test"]["ndcg"], trained.seconds)  # fmt: skip
    return result


@dataclass
class Inputs:
    """What every run reads: the split, the ICG-unseen users and the features per user-feature kind."""

    split: RecSplit
    unseen: np.ndarray  # (U,) bool
    item_features: torch.Tensor  # (I, P)
    user_features: dict[str | None, torch.Tensor | None]
    generation: dict[str, object] | None


def prepare_inputs(
    data: InteractionData, spec, out: Path, config: Table7Config, rows: tuple[Row, ...], progress: bool = True
) -> Inputs:
    """Split, reference covers, miniCLIP item features and the user features `rows` need (generating the
    Generated-user covers, cached under out/generated_user)."""
    from transformers import CLIPModel

    from icg.data.covers.cache import render_cover_cache
    from icg.data.covers.render import display_title
    from icg.data.pairs import PairConfig, build_pairs
    from icg.evaluation.fd import ClipImageFeatures
    from icg.users import FeatureVocab

    if spec.clip is None:
        raise ValueError(f"preset '{spec.name}' has no clip: the visual features need one")
    vocab_file = Path(spec.user_encoder or "") / "vocab.json"
    split = split_positives(data, config, FeatureVocab.load(vocab_file) if vocab_file.is_file() else None)
    pairs, _ = build_pairs(data.interactions, PairConfig())
    unseen_ids = set(pairs.loc[pairs["split"] == "test", "user_id"].astype(str))
    items = data.items.reset_index(drop=True)
    covers = render_cover_cache(items, out / "cache", 64, 1, progress)[:, 0]  # (I, 3, 64, 64)
    features = ClipImageFeatures(CLIPModel.from_pretrained(spec.clip))
    item_features = embed_images(features, covers)  # (I, P)
    chosen = choose_generation_items(split, config.covers_per_user, config.generation_seed)
    picked = (np.repeat(np.arange(len(chosen)), [len(c) for c in chosen]), np.concatenate(chosen).astype(int))
    kinds = {r.user for r in rows}
    user_features: dict[str | None, torch.Tensor | None] = {None: None}
    if "average" in kinds:
        user_features["average"] = mean_features(item_features, *split.train, len(split.user_ids))
    if "average_m" in kinds:
        user_features["average_m"] = mean_features(item_features, *picked, len(split.user_ids))
    generation = None
    if "generated" in kinds:
        titles = [display_title(str(t)) or str(t) for t in items["title"]]
        pipe_args = {"seed": config.generation_seed, **spec.generation_config().to_kwargs()}
        settings = {"preset": dataclasses.asdict(spec), "clip": spec.clip, "pipe": pipe_args}
        pipe = load_generator(spec, out / "context_cache")
        user_features["generated"], generation = generated_user_features(
            pipe, features, titles, covers, split.user_ids, chosen, out / "generated_user",
            settings=settings, chunk=config.user_chunk, progress=progress,
        )  # fmt: skip
    unseen = np.array([u in unseen_ids for u in split.user_ids])
    return Inputs(split, unseen, item_features, user_features, generation)


def run_table7(
    data: InteractionData,
    spec,
    out_dir: str | Path,
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    config: Table7Config | None = None,
    rows: tuple[Row, ...] = ROWS,
    threads: int | None = 1,
    progress: bool = True,
    command: str = "",
) -> dict[str, object]:
    """Every row × seed (module doc); writes table7.json and table7.md into `out_dir` and returns the result.

    `spec` needs `clip` (features) and, for the generated row, the cover pipeline's components. Resumable:
    generated-user features are cached per chunk of users, and each finished (row, seed) run is kept in
    out_dir/runs and reused when its inputs are unchanged.
    """
    from icg.machine import machine

    config = config or Table7Config()
    if not seeds:
        raise ValueError("need at least one seed")
    out = Path(out_dir)
    started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    with loop.torch_threads(threads):
        inputs = prepare_inputs(data, spec, out, config, rows, progress)
        split, unseen = inputs.split, inputs.unseen
        runs: dict[str, dict[int, dict]] = {}
        for row in rows:
            for seed in seeds:
                item_features = inputs.item_features if row.item else None
                runs.setdefault(row.key, {})[seed] = run_one(
                    row, seed, split, item_features, inputs.user_features[row.user], config,
                    out / "runs" / f"{row.key}_seed{seed}.json", unseen, progress,
                )  # fmt: skip
        result = summarise(runs, rows, seeds)
        sizes = {"train": len(split.train[0]), "val": len(split.val[0]), "test": len(split.test[0]),
                 "test_users": int(len(np.unique(split.test[0]))), "users": len(split.user_ids),
                 "items": len(split.item_ids), "icg_unseen_users": int(unseen.sum()),
                 "test_is_user_encoder_holdout": user_encoder_alignment(spec, split, config)}  # fmt: skip
        result |= {
            "dataset": data.name, "seeds": list(seeds), "features": f"{FEATURE_NAME} ({spec.clip})",
            "preset": spec.name, "config": dataclasses.asdict(config), "generation": inputs.generation,
            "split": sizes, "feature_cosines": feature_similarity(inputs.user_features),
            "machine": machine() | {"load_average_start": load_start},
            "minutes": round((time.perf_counter() - started) / 60, 1), "command": command,
        }  # fmt: skip
        run_seconds = sum(sum(r["seconds_per_seed"]) for r in result["rows"])
        result["compute_minutes"] = {"mmgcn_runs": round(run_seconds / 60, 1), "generation": round(
            (inputs.generation or {}).get("seconds_total", 0.0) / 60, 1)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / JSON_NAME, json.dumps(result, indent=2))
    write_text_atomic(out / MD_NAME, table7_markdown(result))
    return result


# ---------------------------------------------------------------------------------------------- summaries
def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(runs: dict[str, dict[int, dict]], rows: tuple[Row, ...], seeds: tuple[int, ...]) -> dict:
    """Mean ± std over seeds per row (Recall in %, NDCG as a fraction, as the paper prints them), and the
    paired differences between rows: over seeds, and per test user (seed-averaged) with its standard error."""
    table = []
    for row in rows:
        r = runs[row.key]
        entry = {"key": row.key, "label": row.label, "item": row.item, "user": row.user, "paper": row.paper}
        for name, scale in (("recall", 100.0), ("ndcg", 1.0)):
            for part in ("test", "test_icg_unseen_users", "val"):
                mean, std = _mean_std([scale * r[s][part][name] for s in seeds])
                entry[f"{part}_{name}"] = [round(mean, 4), round(std, 4)]
            entry[f"test_{name}_per_seed"] = [round(scale * r[s]["test"][name], 4) for s in seeds]
        entry["best_epochs"] = [r[s]["best_epoch"] for s in seeds]
        entry["seconds_per_seed"] = [r[s]["seconds"] for s in seeds]
        table.append(entry)
    deltas = []
    keys = {r.key for r in rows}
    for a, b in DELTAS:
        if a not in keys or b not in keys:
            continue
        d = {"a": a, "b": b}
        for name, scale in (("recall", 100.0), ("ndcg", 1.0)):
            per_seed = [scale * (runs[a][s]["test"][name] - runs[b][s]["test"][name]) for s in seeds]
            users = [np.array(runs[x][s][f"per_user_{name}"], dtype=float) for x in (a, b) for s in seeds]
            per_user = scale * (np.mean(users[: len(seeds)], 0) - np.mean(users[len(seeds) :], 0))
            per_user = per_user[~np.isnan(per_user)]
            mean, std = _mean_std(per_seed)
            se = float(per_user.std(ddof=1) / math.sqrt(len(per_user)))
            d[name] = {"mean": round(mean, 4), "std_over_seeds": round(std, 4), "user_se": round(se, 4),
                       "positive_seeds": sum(v > 0 for v in per_seed), "seeds": len(seeds)}  # fmt: skip
        deltas.append(d)
    return {"rows": table, "deltas": deltas}


def _direction(delta: dict) -> str:
    mean, se = delta["mean"], delta["user_se"]
    word = "higher" if mean > 0 else "lower" if mean < 0 else "equal"
    size = "within 2 user-level SE" if abs(mean) < 2 * se else "beyond 2 user-level SE"
    return f"{word} ({delta['positive_seeds']}/{delta['seeds']} seeds higher; {size})"


def table7_markdown(result: dict) -> str:
    """The table beside the paper's, the paired differences with their measured direction, and the setup."""
    split, m, cfg = result["split"], result["machine"], result["config"]
    lines = [
        f"Table 7 on {result['dataset']} ({result['preset']} preset): MMGCN, full ranking over items "
        f"without a train/val positive, test split; mean ± std over seeds {result['seeds']}. "
        f"Visual features: {result['features']} image embeddings.",
        "",
        "| Setting | Item | User | Recall@10 (%) | NDCG@10 | R@10 / NDCG@10, ICG-unseen users | val R@10 (%) "
        "| best epochs | s per run | Paper R@10 | Paper NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        paper = ("–", "–") if r["paper"] is None else (f"{r['paper'][0]:.2f}%", f"{r['paper'][1]:.4f}")
        (rm, rs), (nm, ns) = r["test_recall"], r["test_ndcg"]
        um, un = r["test_icg_unseen_users_recall"][0], r["test_icg_unseen_users_ndcg"][0]
        secs = ", ".join(f"{s:.0f}" for s in r["seconds_per_seed"])
        lines.append(
            f"| {r['label']} | {'✓' if r['item'] else '✗'} | {r['user'] or '✗'} | {rm:.2f} ± {rs:.2f} | "
            f"{nm:.4f} ± {ns:.4f} | {um:.2f} / {un:.4f} | {r['val_recall'][0]:.2f} | "
            f"{', '.join(map(str, r['best_epochs']))} | {secs} | {paper[0]} | {paper[1]} |"
        )
    lines += [
        "",
        "Paired differences (test; same split, same seeds):",
        "",
        "| A − B | ΔRecall@10 (pp) | direction | ΔNDCG@10 | direction |",
        "|---|---|---|---|---|",
    ]
    labels = {r["key"]: r["label"] for r in result["rows"]}
    for d in result["deltas"]:
        rec, ndcg = d["recall"], d["ndcg"]
        lines.append(
            f"| {labels[d['a']]} − {labels[d['b']]} | {rec['mean']:+.2f} ± {rec['std_over_seeds']:.2f} "
            f"(user SE {rec['user_se']:.2f}) | {_direction(rec)} | {ndcg['mean']:+.4f} ± "
            f"{ndcg['std_over_seeds']:.4f} (user SE {ndcg['user_se']:.4f}) | {_direction(ndcg)} |"
        )
    gen, aligned = result.get("generation"), split["test_is_user_encoder_holdout"]
    aligned = aligned.get("same_split") if aligned.get("checked") else f"not checked ({aligned.get('why')})"
    timing = f"; {gen['covers_total']} covers in {gen['seconds_total']:.0f} s" if gen else ""
    lines += [
        "",
        f"- data: ratings ≥ {cfg['positive_threshold']} as positives; {split['train']} train / "
        f"{split['val']} val / {split['test']} test positives, {split['test_users']} test users, "
        f"{split['items']} items ranked; "
        f"test = exactly the user encoder's held-out positives: {aligned}.",
        f"- ICG-unseen users: {split['icg_unseen_users']} users in the test split of the preference pairs "
        "(seed 0), whom the reward model and adapter never trained on.",
        f"- MMGCN: dim {cfg['dim']}, {cfg['layers']} layers, Adam lr {cfg['lr']}, reg {cfg['reg']}, "
        f"batch {cfg['batch_size'] or 'full'}, grad clip {cfg['grad_clip']}, ≤ {cfg['max_epochs']} epochs, "
        f"val Recall@{cfg['k']} every {cfg['eval_every']} epochs, patience {cfg['patience']}; "
        "user feature → learned preference + Linear(feature).",
        f"- Generated-user: {cfg['covers_per_user']} ICG covers per user of their train items{timing}, at "
        "the preset's steps and guidance; the control row averages the reference covers of the same items.",
        f"- mean cosine of user features: {result.get('feature_cosines')}",
        "- direction: sign of the mean over seeds; user SE = standard error over test users of the "
        "seed-averaged per-user difference.",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} with {m['torch_threads']} "
        f"thread(s); compute {result['compute_minutes']} min (MMGCN runs, cover generation, as measured when "
        f"each was made); this call {result['minutes']} min, load average {m['load_average_start']} → "
        f"{m['load_average']} (finished runs and cached features are reused)",
        f"- command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"
