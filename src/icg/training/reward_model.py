"""Training of the personalized preference reward model (paper §3.4.1) on user-disjoint preference pairs.

Data (`prepare_reward_data`): pairs from `build_pairs` (top-k1 vs bottom-k2 items per user, 80/10/10 users);
per item its title, a caption and its reference cover (rendered once at the CLIP image size, cached on disk);
per user a profile sentence. Captions are a `Mapping[item_id, str]` so the context encoder's cached explicit
prompts plug in; until the mini preset has a trained MLLM they come from the *template teacher*
(`template_captions`: "a {genres} movie poster in {palette words}", from the genres and the genre style's
colours — no MLLM involved, and every output says so). Profiles (`user_profiles`) put the user's three most
watched genres before the demographic sentence; the genres are counted over the user's interactions *outside
their own pairs* (watch counts, never ratings), so no pair label leaks into the input.

Speed: the frozen CLIP stem runs once per item and user (`encode_cache`); a step runs only the last k CLIP
layers and the new modules, for the unique items and users of its batch.

Loss −log σ(p_m − p_n); Adam (paper: lr 1e-4) over the last k CLIP layers and the new modules; after every
epoch the validation pair accuracy decides early stopping (patience), and `checkpoint.pt` (trainable weights,
optimizer, RNG states, best weights, history) is replaced atomically: a later call continues from the last
finished epoch and ends bit-identical to an uninterrupted run on the same machine. The best validation epoch's
weights are what is saved (`PersonalizedRewardModel.save_pretrained`) and evaluated on the test pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import write_text_atomic
from icg.context.teacher import TEMPLATE_TEACHER, join_words, template_captions
from icg.data.covers.render import MIN_SIZE, display_title, item_genres
from icg.data.pairs import SPLITS, PairConfig, build_pairs
from icg.data.records import InteractionData
from icg.errors import DataError
from icg.rewards.personalized import Encoded, PersonalizedRewardConfig, PersonalizedRewardModel, load_clip
from icg.training import loop

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
_CHECKPOINT_FORMAT = "icg.training.reward_model.checkpoint/1"


# --------------------------------------------------------------------------------------- profiles
def user_profiles(data: InteractionData, pairs: pd.DataFrame, top_genres: int = 3) -> dict[str, str]:
    """Profile per user id: 'likes drama, comedy and thriller; a 24-year-old male technician'.

    Genres are the user's most watched (count of interactions, ties by name) over interactions whose item is
    in none of that user's pairs. Genres come first, so a short text encoder truncates the demographics.
    """
    base = dict(zip(data.users["user_id"].astype(str), data.users["profile"].astype(str), strict=True))
    if top_genres <= 0:
        return base
    inter = data.interactions[["user_id", "item_id"]].astype(str)
    in_pairs = pd.concat(
        [
            pairs[["user_id", c]].set_axis(["user_id", "item_id"], axis=1)
            for c in ("pos_item_id", "neg_item_id")
        ]
    ).astype(str)
    keys = pd.MultiIndex.from_frame(inter)
    history = inter[~keys.isin(pd.MultiIndex.from_frame(in_pairs.drop_duplicates()))]
    genres = data.items.set_index(data.items["item_id"].astype(str))["genres"].map(item_genres)
    hist = history.assign(genre=history["item_id"].map(genres)).explode("genre").dropna(subset=["genre"])
    counts = hist.groupby(["user_id", "genre"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n", "genre"], ascending=[True, False, True])
    top = counts.groupby("user_id").head(top_genres).groupby("user_id")["genre"].agg(list)
    return {
        u: (f"likes {join_words([g.lower() for g in top[u]])}; {p}" if u in top.index else p)
        for u, p in base.items()
    }


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class RewardData:
    """Everything a run reads: item and user texts, covers, and pair indices per split."""

    item_ids: list[str]
    titles: list[str]
    captions: list[str]
    covers: Tensor  # (N_items, 3, S, S) uint8 reference covers
    user_ids: list[str]
    profiles: list[str]
    pairs: dict[str, Tensor] = field(default_factory=dict)  # split → (P, 3) int64: user, pos item, neg item

    def fingerprint(self) -> str:
        h = hashlib.sha256(
            json.dumps([self.item_ids, self.titles, self.captions, self.user_ids, self.profiles]).encode()
        )
        for split in SPLITS:
            h.update(self.pairs[split].numpy().tobytes())
        h.update(self.covers.numpy().tobytes())
        return h.hexdigest()


def reward_data(
    items: pd.DataFrame,
    covers: Tensor,
    pairs: pd.DataFrame,
    captions: Mapping[str, str],
    profiles: Mapping[str, str],
) -> RewardData:
    """Index the pairs against the items table (row order = covers order) and the profiles."""
    item_ids = [str(i) for i in items["item_id"]]
    if covers.dtype != torch.uint8 or covers.ndim != 4 or covers.shape[0] != len(item_ids):
        raise ValueError(
            f"covers must be uint8 (N_items={len(item_ids)}, 3, S, S), got {tuple(covers.shape)}"
        )
    missing = [i for i in item_ids if i not in captions]
    if missing:
        raise DataError(f"{len(missing)} items have no caption (e.g. {missing[:3]})", expected="one per item")
    user_ids = sorted({str(u) for u in pairs["user_id"]})
    unknown = [u for u in user_ids if u not in profiles]
    if unknown:
        raise DataError(f"{len(unknown)} users have no profile (e.g. {unknown[:3]})", expected="one per user")
    item_row = {i: n for n, i in enumerate(item_ids)}
    user_row = {u: n for n, u in enumerate(user_ids)}
    split_pairs = {}
    for split in SPLITS:
        part = pairs[pairs["split"] == split]
        try:
            cols = [
                [user_row[str(u)] for u in part["user_id"]],
                [item_row[str(i)] for i in part["pos_item_id"]],
                [item_row[str(i)] for i in part["neg_item_id"]],
            ]
        except KeyError as exc:
            raise DataError(f"pair item {exc} is not in the items table") from exc
        split_pairs[split] = torch.tensor(cols, dtype=torch.long).T.reshape(
            -1, 3
        )  # (P, 3) data building, host
    return RewardData(
        item_ids=item_ids,
        titles=[display_title(str(t)) or "untitled" for t in items["title"]],
        captions=[captions[i] for i in item_ids],
        covers=covers,
        user_ids=user_ids,
        profiles=[profiles[u] for u in user_ids],
        pairs=split_pairs,
    )


@torch.no_grad()
def encode_cache(
    model: PersonalizedRewardModel,
    data: RewardData,
    batch_size: int = 256,
    names: Sequence[str] | None = None,
) -> dict[str, Encoded]:
    """Frozen-stem outputs of every item (title, caption, image) and user, for `names` (default: the model's
    inputs); computed once, then every step runs only the trainable top."""
    sources = {"title": data.titles, "caption": data.captions, "image": data.covers, "user": data.profiles}
    unknown = set(names or ()) - set(sources)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}; expected some of {sorted(sources)}")
    cache = {}
    for name in names if names is not None else model.config.inputs:
        src = sources[name]
        parts = []
        for start in range(0, len(src), batch_size):
            chunk = src[start : start + batch_size]
            parts.append(model.stem(name, chunk.float() / 255.0 if name == "image" else chunk))
        cache[name] = Encoded.cat(parts)
    return cache


def _features(
    model: PersonalizedRewardModel, cache: Mapping[str, Encoded], users: Tensor, items: Tensor
) -> dict:
    """Top features (B, D) per input for rows (users[b], items[b]); each unique item/user computed once."""
    out = {}
    for name in model.config.inputs:
        index = users if name == "user" else items
        uniq, inv = torch.unique(index, return_inverse=True)
        out[name] = model.top(name, cache[name].select(uniq))[inv]
    return out


def pair_scores(
    model: PersonalizedRewardModel, cache: Mapping[str, Encoded], pairs: Tensor
) -> tuple[Tensor, Tensor]:
    """(P, 3) pairs → scores of the preferred and the other item, each (P,)."""
    user, pos, neg = pairs.unbind(1)
    scores = model.preference(_features(model, cache, torch.cat([user, user]), torch.cat([pos, neg])))
    return scores[: len(pos)], scores[len(pos) :]


def pair_accuracy(pos: Tensor, neg: Tensor) -> float:
    """Share of pairs ranked right; a tie counts one half (a constant scorer gets exactly 0.5)."""
    return float(((pos > neg).float() + 0.5 * (pos == neg).float()).mean()) if len(pos) else float("nan")


@torch.no_grad()
def evaluate_pairs(model: PersonalizedRewardModel, cache: Mapping[str, Encoded], pairs: Tensor) -> float:
    """Pair accuracy with the model in eval mode."""
    was_training = model.training
    model.eval()
    pos, neg = zip(*[pair_scores(model, cache, chunk) for chunk in pairs.split(4096)], strict=True)
    model.train(was_training)
    return pair_accuracy(torch.cat(pos), torch.cat(neg))


# --------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RewardTrainConfig:
    """Optimisation of one run (paper: Adam, lr 1e-4)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-4
    patience: int = 4  # epochs without a better validation accuracy before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        loop.check_positive_ints(self, ("epochs", "batch_size", "patience"))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


@dataclass
class EarlyStopping:
    """Keeps the best validation epoch; stops after `patience` epochs without a strictly better value."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    since_best: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch's value; True when it is the new best."""
        if value > self.best:
            self.best, self.best_epoch, self.since_best = value, epoch, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.since_best >= self.patience


def _trainable_state(model: PersonalizedRewardModel) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: PersonalizedRewardModel, state: Mapping[str, Tensor]) -> None:
    own = dict(model.named_parameters())
    wrong = sorted(set(state) ^ {n for n, p in own.items() if p.requires_grad})
    if wrong:
        raise ValueError(f"checkpoint weights do not match the trainable parameters: {wrong[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def _train_epoch(
    model: PersonalizedRewardModel,
    cache: Mapping[str, Encoded],
    pairs: Tensor,
    optimizer: torch.optim.Optimizer,
    sampler: torch.Generator,
    batch_size: int,
) -> float:
    """One shuffled pass over the (P, 3) train pairs with the Bradley-Terry loss; returns its mean."""
    model.train()
    total = 0.0
    for batch in torch.randperm(len(pairs), generator=sampler).split(batch_size):
        pos, neg = pair_scores(model, cache, pairs[batch])
        loss = -F.logsigmoid(pos - neg).mean()  # −log σ(p_m − p_n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(pairs)


def train_reward_model(
    model: PersonalizedRewardModel,
    data: RewardData,
    out_dir: str | Path,
    config: RewardTrainConfig | None = None,
    *,
    cache: Mapping[str, Encoded] | None = None,
    resume: bool = True,
    save: bool = True,
    max_minutes: float | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    info: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Train on data.pairs["train"], early-stop on "val", report "test"; returns (and writes) the metrics.

    `cache` reuses stem outputs computed by `encode_cache` for the same CLIP and k (Table 6 shares one cache
    across variants); `save=False` skips writing the model (Table 6's ablations); `on_epoch_end` is called
    with each epoch's record after its checkpoint is written; `info` is copied into the metrics.
    """
    config = config or RewardTrainConfig()
    loop.check_run_options(max_minutes)
    if any(len(data.pairs.get(s, ())) == 0 for s in SPLITS):
        raise ValueError(
            f"every split needs pairs; got { ({s: len(data.pairs.get(s, ())) for s in SPLITS}) }"
        )
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else encode_cache(model, data)
    if set(model.config.inputs) - set(cache):
        raise ValueError(f"the cache lacks inputs {sorted(set(model.config.inputs) - set(cache))}")
    fingerprint = hashlib.sha256(
        json.dumps([model.config.to_dict(), dataclasses.asdict(config), data.fingerprint()]).encode()
    ).hexdigest()
    checkpoint = out / CHECKPOINT_NAME
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(config.seed)
        params = model.set_trainable()
        optimizer = torch.optim.Adam(params, lr=config.lr)
        sampler = torch.Generator().manual_seed(config.seed + 1)
        stopper, history, start_epoch = EarlyStopping(config.patience), [], 0
        best_state = _trainable_state(model)
        if resume and checkpoint.is_file():
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if state.get("format") != _CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{checkpoint} belongs to another run (model, config or data); use resume=False"
                )
            _load_trainable(model, state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.set_state(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"])
            stopper, history = EarlyStopping(**state["stopper"]), list(state["history"])
            best_state, start_epoch = state["best_model"], state["epoch"]
            logger.info("resuming %s from epoch %d", out, start_epoch)
        epoch_seconds: list[float] = []
        for epoch in range(start_epoch, config.epochs):
            if stopper.should_stop:
                break
            if loop.time_is_up(started, epoch_seconds, max_minutes):
                logger.warning("time budget of %.1f min reached at epoch %d; resumable", max_minutes, epoch)
                break
            tick = time.perf_counter()
            loss = _train_epoch(model, cache, data.pairs["train"], optimizer, sampler, config.batch_size)
            val = evaluate_pairs(model, cache, data.pairs["val"])
            if stopper.update(epoch + 1, val):
                best_state = _trainable_state(model)
            epoch_seconds.append(time.perf_counter() - tick)
            record = {"epoch": epoch + 1, "loss": loss, "val_accuracy": val}
            history.append(record)
            logger.info(
                "reward epoch %d (%.1fs): loss %.4f, val acc %.4f", epoch + 1, epoch_seconds[-1], loss, val
            )
            state = {
                "format": _CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "model": _trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "sampler_rng": sampler.get_state(),
                "torch_rng": torch.get_rng_state(),
                "stopper": dataclasses.asdict(stopper),
                "history": history,
                "best_model": best_state,
            }
            loop.torch_save_atomic(checkpoint, state)
            if on_epoch_end is not None:
                on_epoch_end(record)
    _load_trainable(model, best_state)
    model.freeze()
    finished = stopper.should_stop or (history and history[-1]["epoch"] == config.epochs)
    metrics: dict[str, object] = {
        "test_accuracy": evaluate_pairs(model, cache, data.pairs["test"]),
        "val_accuracy": evaluate_pairs(model, cache, data.pairs["val"]),
        "best_epoch": stopper.best_epoch,
        "epochs_run": history[-1]["epoch"] if history else 0,
        "completed": bool(finished),
        "pairs": {s: len(data.pairs[s]) for s in SPLITS},
        "inputs": list(model.config.inputs),
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "seconds_this_call": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "history": history,
        **dict(info or {}),
    }
    if save:
        model.save_pretrained(out)
    write_text_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2))
    logger.info(
        "reward model %s: test acc %.4f (best val %.4f at epoch %d)",
        "+".join(model.config.inputs),
        metrics["test_accuracy"],
        stopper.best,
        stopper.best_epoch,
    )
    return metrics


# ---------------------------------------------------------------------------------------- presets, datasets
# mini: d = 64 keeps the fusion transformer (the per-pair cost) at ~4 s per ml-100k epoch on one CPU thread;
# k = 1 is the paper's "last layers train" (Table 6 overrides k = 0 to fit its CPU budget, and says so).
REWARD_MODEL_PRESETS: dict[str, tuple[PersonalizedRewardConfig, RewardTrainConfig]] = {
    "mini": (
        PersonalizedRewardConfig(hidden_size=64, num_heads=4, trainable_clip_layers=1),
        RewardTrainConfig(),
    ),
}


def reward_model_preset(name: str) -> tuple[PersonalizedRewardConfig, RewardTrainConfig]:
    if name not in REWARD_MODEL_PRESETS:
        raise ValueError(f"unknown reward-model preset '{name}'; known: {sorted(REWARD_MODEL_PRESETS)}")
    return REWARD_MODEL_PRESETS[name]


def default_clip_path() -> Path:
    """Where the mini preset's trained CLIP is looked for: the shipped `icg/assets/mini/clip`."""
    from icg.presets import mini_assets_dir

    return mini_assets_dir() / "clip"


def resolve_clip(
    clip: str | Path | None, items: pd.DataFrame, seed: int = 0
) -> tuple[CLIPModel, CLIPProcessor, str]:
    """A CLIP folder, or "random" (the mini CLIP's architecture and tokenizer recipe, untrained); None means
    the mini preset's trained CLIP when present, else "random" with a warning → (model, processor, source)."""
    if clip is None:
        clip = default_clip_path() if default_clip_path().is_dir() else "random"
        if clip == "random":
            logger.warning("no trained mini CLIP at %s: using a random-init mini CLIP", default_clip_path())
    if str(clip) != "random":
        model, processor = load_clip(clip)
        return model, processor, str(Path(clip).resolve())
    import tempfile

    from icg.data.covers.render import items_genres
    from icg.training import clip_data as cd
    from icg.training.clip_tokenizer import train_clip_tokenizer
    from icg.training.mini_clip import build_clip_model, build_processor, mini_clip_preset

    config = mini_clip_preset("mini")
    genres = sorted({g for t in items_genres(items) for g in t})
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_clip_tokenizer(
            cd.tokenizer_corpus(items, genres), tmp, config.vocab_size, config.max_text_tokens
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_clip_model(config, tokenizer).eval()
    return model, build_processor(config, tokenizer), "random-init mini CLIP"


def prepare_reward_data(
    data: InteractionData,
    image_size: int,
    cache_dir: str | Path,
    pair_config: PairConfig | None = None,
    captions: Mapping[str, str] | None = None,
    top_genres: int = 3,
) -> tuple[RewardData, pd.DataFrame, dict[str, object]]:
    """Pairs, covers (rendered once, cached), captions (template teacher unless given) and user profiles.

    Returns the RewardData, the pairs table and a description of the sources for the metrics."""
    from icg.data.covers.cache import render_cover_cache

    pairs, summary = build_pairs(data.interactions, pair_config or PairConfig())
    items = data.items.reset_index(drop=True)
    size = max(MIN_SIZE, image_size)  # the renderer's floor; `preprocess` resizes to the CLIP size
    covers = render_cover_cache(items, Path(cache_dir), size, 1, progress=False)[:, 0]  # (N, 3, S, S)
    info = {
        "dataset": data.name,
        "captions": TEMPLATE_TEACHER if captions is None else "given",
        "profile_top_genres": top_genres,
        "pair_config": dataclasses.asdict(pair_config or PairConfig()),
        "pair_summary": summary.to_dict(),
        "cover_size": size,
    }
    captions = captions if captions is not None else template_captions(items)
    return reward_data(items, covers, pairs, captions, user_profiles(data, pairs, top_genres)), pairs, info


def train_from_dataset(
    data: InteractionData,
    out_dir: str | Path,
    preset: str = "mini",
    *,
    clip: str | Path | None = None,
    seed: int = 0,
    epochs: int | None = None,
    trainable_clip_layers: int | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
) -> dict[str, object]:
    """`icg train reward-model`: pairs, covers, template-teacher captions, profiles → trained, saved model."""
    model_config, train_config = reward_model_preset(preset)
    if trainable_clip_layers is not None:
        model_config = dataclasses.replace(model_config, trainable_clip_layers=trainable_clip_layers)
    train_config = dataclasses.replace(train_config, seed=seed, **({"epochs": epochs} if epochs else {}))
    clip_model, processor, source = resolve_clip(clip, data.items, seed)
    out = Path(out_dir)
    rdata, _, info = prepare_reward_data(
        data, clip_model.config.vision_config.image_size, out / "cache", PairConfig(seed=seed)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PersonalizedRewardModel(model_config, clip_model, processor)
    info = {**info, "clip": source, "preset": preset}
    return train_reward_model(
        model, rdata, out, train_config, resume=resume, max_minutes=max_minutes, info=info
    )
