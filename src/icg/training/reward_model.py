"""Training of the personalized preference reward model (paper §3.4.1) on user-disjoint preference pairs.

Data (`prepare_reward_data`): pairs of three kinds from `build_taste_pairs` — the paper's (`build_pairs`:
top-k1 vs bottom-k2 items per user, 80/10/10 users), debiased and same-item (issue 18) — each (P, 4):
preferred (user, item), other (user, item); `RewardTrainConfig.train_kinds` picks what trains, every kind is
reported;
per item its title, a caption and its reference cover (rendered once at the CLIP image size, cached on disk);
per user a profile sentence. Captions are a `Mapping[item_id, str]` so the context encoder's cached explicit
prompts plug in; until the mini preset has a trained MLLM they come from the *template teacher*
(`template_captions`: "a {genres} movie poster in {palette words}", from the genres and the genre style's
colours — no MLLM involved, and every output says so). Profiles (`icg.training.reward_profiles`) come from
the user's interactions *outside all their pairs*, so no pair label leaks into the input: the paper's style
names the three most watched genres, the taste style the liked and disliked ones (from ratings).

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
from icg.context.teacher import TEMPLATE_TEACHER, template_captions
from icg.data.covers.render import MIN_SIZE, display_title
from icg.data.pairs import SPLITS, PairConfig
from icg.data.records import InteractionData
from icg.data.taste_pairs import (
    KINDS,
    TastePairConfig,
    build_taste_pairs,
)
from icg.errors import DataError
from icg.rewards.personalized import Encoded, PersonalizedRewardConfig, PersonalizedRewardModel, load_clip
from icg.training import loop
from icg.training.reward_profiles import PROFILE_STYLES, dataset_genres, user_profiles

__all__ = ["PROFILE_STYLES", "dataset_genres", "user_profiles"]  # re-exported: the profiles live beside

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
_CHECKPOINT_FORMAT = "icg.training.reward_model.checkpoint/1"


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
    # split → (P, 4) int64: preferred (user, item), other (user, item); within-user kinds repeat the user
    pairs: dict[str, Tensor] = field(default_factory=dict)
    kinds: dict[str, Tensor] = field(default_factory=dict)  # split → (P,) int64 index into KINDS

    def __post_init__(self) -> None:
        for split, pairs in list(self.pairs.items()):
            if pairs.ndim != 2 or pairs.shape[1] not in (3, 4):
                raise ValueError(f"{split} pairs must be (P, 3) or (P, 4), got {tuple(pairs.shape)}")
            if pairs.shape[1] == 3:  # the paper's (user, pos item, neg item): one user on both sides
                self.pairs[split] = pairs[:, [0, 1, 0, 2]]

    def fingerprint(self) -> str:
        h = hashlib.sha256(
            json.dumps([self.item_ids, self.titles, self.captions, self.user_ids, self.profiles]).encode()
        )
        for split in SPLITS:
            h.update(self.pairs[split].numpy().tobytes())
            h.update(self.kind_codes(split).numpy().tobytes())
        h.update(self.covers.numpy().tobytes())
        return h.hexdigest()

    def kind_codes(self, split: str) -> Tensor:
        """(P,) kind codes of a split's pairs; all "paper" when none were given."""
        codes = self.kinds.get(split)
        return codes if codes is not None else torch.zeros(len(self.pairs[split]), dtype=torch.long)

    def select(self, split: str, kinds: Sequence[str]) -> Tensor:
        """The (P', 4) pairs of `split` whose kind is in `kinds`."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown pair kinds {sorted(unknown)}; expected some of {list(KINDS)}")
        keep = torch.isin(self.kind_codes(split), torch.tensor([KINDS.index(k) for k in kinds]))
        return self.pairs[split][keep]


def reward_data(
    items: pd.DataFrame,
    covers: Tensor,
    pairs: pd.DataFrame,
    captions: Mapping[str, str],
    profiles: Mapping[str, str],
) -> RewardData:
    """Index the pairs against the items table (row order = covers order) and the profiles.

    `pairs` has the paper's columns (user_id, pos_item_id, neg_item_id, split) or the two-user columns of
    `icg.data.taste_pairs` (pos_user_id, pos_item_id, neg_user_id, neg_item_id, kind, split)."""
    if "pos_user_id" not in pairs.columns:
        pairs = pairs.assign(pos_user_id=pairs["user_id"], neg_user_id=pairs["user_id"], kind="paper")
    item_ids = [str(i) for i in items["item_id"]]
    if covers.dtype != torch.uint8 or covers.ndim != 4 or covers.shape[0] != len(item_ids):
        raise ValueError(
            f"covers must be uint8 (N_items={len(item_ids)}, 3, S, S), got {tuple(covers.shape)}"
        )
    missing = [i for i in item_ids if i not in captions]
    if missing:
        raise DataError(f"{len(missing)} items have no caption (e.g. {missing[:3]})", expected="one per item")
    user_ids = sorted({str(u) for c in ("pos_user_id", "neg_user_id") for u in pairs[c]})
    unknown = [u for u in user_ids if u not in profiles]
    if unknown:
        raise DataError(f"{len(unknown)} users have no profile (e.g. {unknown[:3]})", expected="one per user")
    item_row = {i: n for n, i in enumerate(item_ids)}
    user_row = {u: n for n, u in enumerate(user_ids)}
    unknown_kinds = set(pairs["kind"].astype(str)) - set(KINDS)
    if unknown_kinds:
        raise DataError(f"unknown pair kinds {sorted(unknown_kinds)}", expected=f"some of {list(KINDS)}")
    split_pairs, split_kinds = {}, {}
    for split in SPLITS:
        part = pairs[pairs["split"].astype(str) == split]
        try:
            cols = [
                [user_row[str(u)] for u in part["pos_user_id"]],
                [item_row[str(i)] for i in part["pos_item_id"]],
                [user_row[str(u)] for u in part["neg_user_id"]],
                [item_row[str(i)] for i in part["neg_item_id"]],
            ]
        except KeyError as exc:
            raise DataError(f"pair item {exc} is not in the items table") from exc
        # (P, 4) and (P,): data building, host
        split_pairs[split] = torch.tensor(cols, dtype=torch.long).T.reshape(-1, 4)
        split_kinds[split] = torch.tensor([KINDS.index(str(k)) for k in part["kind"]], dtype=torch.long)
    return RewardData(
        item_ids=item_ids,
        titles=[display_title(str(t)) or "untitled" for t in items["title"]],
        captions=[captions[i] for i in item_ids],
        covers=covers,
        user_ids=user_ids,
        profiles=[profiles[u] for u in user_ids],
        pairs=split_pairs,
        kinds=split_kinds,
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
    sources = {
        "title": data.titles, "caption": data.captions, "image": data.covers, "user": data.profiles,
        "taste": data.profiles,
    }  # fmt: skip
    unknown = set(names or ()) - set(sources)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}; expected some of {sorted(sources)}")
    cache = {}
    for name in names if names is not None else model.config.features:
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
    for name in model.config.features:
        index = users if name in ("user", "taste") else items
        uniq, inv = torch.unique(index, return_inverse=True)
        out[name] = model.top(name, cache[name].select(uniq))[inv]
    return out


def pair_scores(
    model: PersonalizedRewardModel, cache: Mapping[str, Encoded], pairs: Tensor
) -> tuple[Tensor, Tensor]:
    """(P, 4) pairs → scores of the preferred and the other (user, item), each (P,)."""
    pos_user, pos, neg_user, neg = pairs.unbind(1)
    users, items = torch.cat([pos_user, neg_user]), torch.cat([pos, neg])
    scores = model.preference(_features(model, cache, users, items))
    return scores[: len(pos)], scores[len(pos) :]


def pair_accuracy(pos: Tensor, neg: Tensor) -> float:
    """Share of pairs ranked right; a tie counts one half (a constant scorer gets exactly 0.5)."""
    return float(((pos > neg).float() + 0.5 * (pos == neg).float()).mean()) if len(pos) else float("nan")


@torch.no_grad()
def evaluate_pairs(model: PersonalizedRewardModel, cache: Mapping[str, Encoded], pairs: Tensor) -> float:
    """Pair accuracy with the model in eval mode (NaN without pairs)."""
    if len(pairs) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    pos, neg = zip(*[pair_scores(model, cache, chunk) for chunk in pairs.split(4096)], strict=True)
    model.train(was_training)
    return pair_accuracy(torch.cat(pos), torch.cat(neg))


def accuracy_by_kind(
    model: PersonalizedRewardModel, cache: Mapping[str, Encoded], data: RewardData, split: str
) -> dict[str, float]:
    """Pair accuracy per pair kind present in `split`."""
    codes = data.kind_codes(split)
    return {
        k: evaluate_pairs(model, cache, data.select(split, [k]))
        for n, k in enumerate(KINDS)
        if (codes == n).any()
    }


def selection_score(by_kind: Mapping[str, float], kinds: Sequence[str]) -> float:
    """Mean accuracy over `kinds` (those with pairs): what early stopping reads on the validation users."""
    values = [by_kind[k] for k in kinds if k in by_kind and not math.isnan(by_kind[k])]
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RewardTrainConfig:
    """Optimisation of one run (paper: Adam, lr 1e-4)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-4
    patience: int = 4  # epochs without a better validation accuracy before stopping
    seed: int = 0
    # pair kinds trained on (icg.data.taste_pairs.KINDS); early stopping reads their mean val accuracy
    train_kinds: tuple[str, ...] = ("paper",)

    def __post_init__(self) -> None:
        loop.check_positive_ints(self, ("epochs", "batch_size", "patience"))
        object.__setattr__(self, "train_kinds", tuple(self.train_kinds))
        if not self.train_kinds or set(self.train_kinds) - set(KINDS):
            raise ValueError(
                f"train_kinds must be a non-empty subset of {list(KINDS)}, got {self.train_kinds}"
            )
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

    def state_dict(self) -> dict[str, float | int]:
        """What the checkpoint keeps (under "stopper")."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Continue from a checkpoint's "stopper" (a resumed run stops where the uninterrupted one would)."""
        for name, value in state.items():
            setattr(self, name, value)


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


class _TrainableWeights:
    """The model's trainable weights as one checkpoint entry ("model"): the frozen CLIP stays out of it."""

    def __init__(self, model: PersonalizedRewardModel) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Tensor]:
        return _trainable_state(self.model)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        _load_trainable(self.model, state)


def train_epoch(
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
    train_pairs = data.select("train", config.train_kinds)
    if len(train_pairs) == 0:
        raise ValueError(f"no train pairs of kinds {list(config.train_kinds)}")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else encode_cache(model, data)
    if set(model.config.features) - set(cache):
        raise ValueError(f"the cache lacks inputs {sorted(set(model.config.features) - set(cache))}")
    fingerprint = hashlib.sha256(
        json.dumps([model.config.to_dict(), dataclasses.asdict(config), data.fingerprint()]).encode()
    ).hexdigest()
    checkpoint = out / CHECKPOINT_NAME
    inputs = "model, config or data"
    state = loop.load_checkpoint(
        checkpoint, fingerprint, _CHECKPOINT_FORMAT, "reward-model", inputs, resume=resume
    )
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(config.seed)
        params = model.set_trainable()
        optimizer = torch.optim.Adam(params, lr=config.lr)
        sampler = torch.Generator().manual_seed(config.seed + 1)
        stopper = EarlyStopping(config.patience)
        best_state = state["best_model"] if state is not None else _trainable_state(model)
        modules = {"model": _TrainableWeights(model), "optimizer": optimizer, "stopper": stopper}
        run = loop.EpochRun(
            logger, out, config.epochs, started, max_minutes, until=lambda: stopper.should_stop
        )
        history = run.restore(state, modules, {"sampler_rng": sampler})
        for epoch in run:
            loss = train_epoch(model, cache, train_pairs, optimizer, sampler, config.batch_size)
            val = selection_score(accuracy_by_kind(model, cache, data, "val"), config.train_kinds)
            if stopper.update(epoch + 1, val):
                best_state = _trainable_state(model)
            record = {"epoch": epoch + 1, "loss": loss, "val_accuracy": val}
            history.append(record)
            logger.info("reward epoch %d (%.1fs): loss %.4f, val acc %.4f", epoch + 1, run.lap(), loss, val)
            run.save(checkpoint, _CHECKPOINT_FORMAT, fingerprint, epoch + 1, best_model=best_state)
            if on_epoch_end is not None:
                on_epoch_end(record)
    _load_trainable(model, best_state)
    model.freeze()
    finished = stopper.should_stop or (history and history[-1]["epoch"] == config.epochs)
    val_by_kind = accuracy_by_kind(model, cache, data, "val")
    test_by_kind = accuracy_by_kind(model, cache, data, "test")
    metrics: dict[str, object] = {
        "test_accuracy": selection_score(test_by_kind, config.train_kinds),
        "val_accuracy": selection_score(val_by_kind, config.train_kinds),
        "test_by_kind": test_by_kind,
        "val_by_kind": val_by_kind,
        "best_epoch": stopper.best_epoch,
        "epochs_run": history[-1]["epoch"] if history else 0,
        "completed": bool(finished),
        "pairs": {s: len(data.pairs[s]) for s in SPLITS},
        "train_pairs": len(train_pairs),
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
# "taste" (issue 18, beyond the paper; the mini's since then): p = FC_per(Transformer(item tokens)) +
# ⟨P·stated taste, Q·image token⟩, the stated taste parsed from the "taste" profile (the profile's CLIP
# feature is not read: with it, or with the user token inside the fusion, the model memorised the training
# users and stopped at epoch 2-4 with 65 % on the paper's val pairs); trained on the mixture of the paper's,
# debiased and same-item pairs; CLIP frozen (k = 0: an epoch takes seconds). Chosen on the validation users
# (mean of the three kinds' val accuracies; results/table6_ml100k.md). `taste_genres` are the dataset's
# (`dataset_genres`), filled in by `train_from_dataset`.
REWARD_MODEL_PRESETS: dict[str, tuple[PersonalizedRewardConfig, RewardTrainConfig]] = {
    "mini": (
        PersonalizedRewardConfig(hidden_size=64, num_heads=4, trainable_clip_layers=1),
        RewardTrainConfig(),
    ),
    "taste": (
        PersonalizedRewardConfig(
            hidden_size=64,
            num_heads=4,
            trainable_clip_layers=0,
            taste_genres=("drama",),  # placeholder: the dataset's genres replace it
            interaction=True,
            user_text=False,
            fuse_user=False,
        ),
        RewardTrainConfig(epochs=30, patience=5, lr=3e-4, train_kinds=KINDS),
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
    *,
    profile_style: str = "watched",
) -> tuple[RewardData, pd.DataFrame, dict[str, object]]:
    """Pairs of every kind (`build_taste_pairs`: the paper's, debiased, same-item), covers (rendered once,
    cached), captions (template teacher unless given) and user profiles (`user_profiles(style=…)`, from the
    interactions outside all the user's pairs). Which kinds a model trains on is its RewardTrainConfig's.

    Returns the RewardData, the pairs table and a description of the sources for the metrics."""
    from icg.data.covers.cache import render_cover_cache

    pair_config = pair_config or PairConfig()
    pairs, _, pair_info = build_taste_pairs(data.interactions, TastePairConfig(pairs=pair_config))
    items = data.items.reset_index(drop=True)
    size = max(MIN_SIZE, image_size)  # the renderer's floor; `preprocess` resizes to the CLIP size
    covers = render_cover_cache(items, Path(cache_dir), size, 1, progress=False)[:, 0]  # (N, 3, S, S)
    per_kind: dict = pair_info["pairs"]  # type: ignore[assignment]
    info = {
        "dataset": data.name,
        "captions": TEMPLATE_TEACHER if captions is None else "given",
        "profile_top_genres": top_genres,
        "profile_style": profile_style,
        "pair_config": dataclasses.asdict(pair_config),
        "pair_summary": {
            "pairs_per_split": per_kind["paper"],
            "users_per_split": pair_info["users_per_split"],
        },
        "pairs_per_kind": per_kind,
        "taste_pairs": pair_info["config"],
        "cover_size": size,
    }
    captions = captions if captions is not None else template_captions(items)
    profiles = user_profiles(data, pairs, top_genres, style=profile_style)
    return reward_data(items, covers, pairs, captions, profiles), pairs, info


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
    if model_config.taste_genres:
        model_config = dataclasses.replace(model_config, taste_genres=dataset_genres(data.items))
    if trainable_clip_layers is not None:
        model_config = dataclasses.replace(model_config, trainable_clip_layers=trainable_clip_layers)
    train_config = dataclasses.replace(train_config, seed=seed, **({"epochs": epochs} if epochs else {}))
    clip_model, processor, source = resolve_clip(clip, data.items, seed)
    out = Path(out_dir)
    rdata, _, info = prepare_reward_data(
        data,
        clip_model.config.vision_config.image_size,
        out / "cache",
        PairConfig(seed=seed),
        profile_style="taste" if model_config.taste_genres else "watched",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PersonalizedRewardModel(model_config, clip_model, processor)
    info = {**info, "clip": source, "preset": preset}
    return train_reward_model(
        model, rdata, out, train_config, resume=resume, max_minutes=max_minutes, info=info
    )
