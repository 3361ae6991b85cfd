"""Train the two-tower user encoder on interactions and measure it against a popularity baseline.

Data: a rating ≥ `positive_threshold` is a positive (MovieLens); for data whose signal is not a rating (views,
clicks) or with `positive_threshold=None`, every interaction is a positive. Per user, `test_fraction` of the
positives (at least one when the user has two or more) is held out, chosen by `seed`.
Training: BCE on each train positive against `negatives_per_positive` items drawn uniformly from the items
that user has no train interaction with, redrawn every epoch; Adam.
Evaluation: every test positive is paired with `eval_negatives_per_positive` items the user never interacted
with; AUC = share of pairs the model ranks right (ties count half). The popularity baseline (an item's train
interaction count) and the cold-start model (user ids masked, profile only) are scored on the same pairs.

Resume: after every epoch `checkpoint.pt` (weights, optimizer, history) is replaced atomically (temp file
+ os.replace). A later call with the same data and settings continues from the last finished epoch; with
`epochs` larger than a finished run it trains the extra epochs. Every epoch's randomness derives from
(seed, epoch), so an interrupted-and-resumed run ends with the same weights as an uninterrupted one. Different
data or settings in the same folder are a ValueError; `resume=False` starts over. `max_minutes` stops between
epochs (resumable). The loop is `icg.fit.EpochRun`, the one the other resumable trainers run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icg import fit
from icg.atomic import write_text_atomic
from icg.data.records import InteractionData
from icg.users.features import FeatureVocab
from icg.users.split import Split, split_interactions  # noqa: F401  (public here since the start)
from icg.users.two_tower import TwoTowerConfig, TwoTowerModel

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
_CHECKPOINT_FORMAT = "icg.users.checkpoint/1"


def sample_negatives(
    users: np.ndarray, k: int, seen: np.ndarray, n_items: int, rng: np.random.Generator, max_rounds: int = 50
) -> np.ndarray:
    """(len(users), k) items drawn uniformly from 1..n_items-1 that are not in `seen` for that user.

    Rejection sampling over the whole array at once; a user who has seen nearly every item may keep a seen
    item after `max_rounds` (logged).
    """
    items = rng.integers(1, n_items, size=(len(users), k))  # (N, k); 0 is <unk>
    if len(seen) == 0:
        return items
    for _ in range(max_rounds):
        keys = users[:, None] * n_items + items
        hit = np.searchsorted(seen, keys).clip(max=len(seen) - 1)
        bad = seen[hit] == keys
        if not bad.any():
            break
        items[bad] = rng.integers(1, n_items, size=int(bad.sum()))
    else:
        logger.warning("%d negatives are still seen items after %d rounds", int(bad.sum()), max_rounds)
    return items


def pair_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """AUC over pairs: pos_scores (T,), neg_scores (T, K); ties count half."""
    diff = pos_scores[:, None] - neg_scores
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@torch.no_grad()
def _model_scores(model: TwoTowerModel, users: np.ndarray, items: np.ndarray, cold: bool) -> np.ndarray:
    """Scores of users (N,) against items (N,) or (N, K), in eval mode, in chunks."""
    model.eval()
    device = model.user_profiles.device
    all_users = torch.arange(model.config.n_users, device=device)
    features = model.features_for_users(all_users)
    user_emb = model.user_tower(features.without_ids() if cold else features)  # (n_users, D_u)
    item_emb = model.item_tower(torch.arange(model.config.n_items, device=device))  # (n_items, D_u)
    u = user_emb[torch.tensor(users, device=device)]  # (N, D_u)
    v = item_emb[torch.tensor(items, device=device)]  # (N, D_u) or (N, K, D_u)
    scores = torch.einsum("nd,nkd->nk", u, v) if v.dim() == 3 else (u * v).sum(-1)
    return scores.cpu().numpy()


def _fingerprint(data: InteractionData, settings: dict[str, object]) -> str:
    """Hash of the interactions and run settings, so a resume never mixes two different runs."""
    inter = data.interactions[["user_id", "item_id", "signal"]]
    digest = hashlib.sha256(pd.util.hash_pandas_object(inter, index=False).to_numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def train_user_encoder(
    data: InteractionData,
    out_dir: str | Path,
    *,
    epochs: int = 24,
    seed: int = 0,
    negatives_per_positive: int = 4,
    positive_threshold: float | None = 4.0,
    device: str = "cpu",
    progress: bool = True,
    batch_size: int = 1024,
    lr: float = 5e-3,
    weight_decay: float = 0.0,
    test_fraction: float = 0.1,
    eval_negatives_per_positive: int = 10,
    config: TwoTowerConfig | None = None,
    resume: bool = True,
    num_threads: int | None = 1,
    max_minutes: float | None = None,
) -> dict[str, object]:
    """Train, evaluate and save the encoder into `out_dir`; see the module doc. Returns the metrics.

    Writes model.safetensors, config.json, vocab.json (loadable by `TwoTowerModel.from_pretrained`),
    checkpoint.pt and metrics.json. `config` sets layer sizes and dropouts; its vocabulary sizes are replaced
    by the data's. `num_threads` sets torch's CPU threads for the call (restored after; None leaves them): the
    model is small, and on a busy 2-core machine 1 thread measured 2-4x faster per epoch than 2.
    `max_minutes` stops between epochs once the next one would overrun it (at least one epoch runs per call);
    the model so far is evaluated and saved, metrics.json says `"completed": false`; a later call resumes.
    """
    for name, value in (("epochs", epochs), ("negatives_per_positive", negatives_per_positive)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if batch_size < 1 or lr <= 0 or not 0.0 < test_fraction < 1.0 or eval_negatives_per_positive < 1:
        raise ValueError(
            "batch_size, lr and eval_negatives_per_positive must be positive, test_fraction in (0, 1)"
        )
    fit.check_run_options(max_minutes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch_device = torch.device(device)

    vocab = FeatureVocab.from_data(data)
    sizes = vocab.sizes()
    config = dataclasses.replace(config, **sizes) if config is not None else TwoTowerConfig(**sizes)
    split = split_interactions(
        data, vocab, seed=seed, positive_threshold=positive_threshold, test_fraction=test_fraction
    )
    if len(split.test_users) == 0:
        raise ValueError(f"{data.name}: no user has two positives, so nothing can be held out")
    settings = {
        "seed": seed,
        "negatives_per_positive": negatives_per_positive,
        "positive_threshold": positive_threshold,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "test_fraction": test_fraction,
        "config": dataclasses.asdict(config),
    }
    fingerprint = _fingerprint(data, settings)

    checkpoint = out / CHECKPOINT_NAME
    state = fit.load_checkpoint(
        checkpoint, fingerprint, _CHECKPOINT_FORMAT, "user-encoder", "data or settings", resume=resume
    )
    if state is not None and state["epoch"] > epochs:
        raise ValueError(f"{checkpoint} has {state['epoch']} epochs, more than the {epochs} asked for")

    # fork_rng leaves the caller's global RNG untouched
    with fit.torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TwoTowerModel(config, vocab)
        genres, titles = vocab.item_tables(data.items)
        model.set_tables(
            torch.from_numpy(vocab.user_table(data.users)), torch.from_numpy(genres), torch.from_numpy(titles)
        )
        model.to(torch_device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

        # every epoch seeds itself from (seed, epoch): the global RNG has no place in the checkpoint
        run = fit.EpochRun(logger, out, epochs, started, max_minutes, global_rng=False)
        history = run.restore(state, {"model": model, "optimizer": optimizer}, {})
        for epoch in run:
            loss = train_epoch(
                model, optimizer, split, epoch, seed, negatives_per_positive, batch_size, progress
            )
            history.append({"epoch": epoch + 1, "loss": loss})
            logger.info("epoch %d/%d (%.1fs): loss %.4f", epoch + 1, epochs, run.lap(), loss)
            run.save(checkpoint, _CHECKPOINT_FORMAT, fingerprint, epoch + 1)

        metrics = evaluate_split(
            model, split, seed=seed, eval_negatives_per_positive=eval_negatives_per_positive
        )
    metrics.update(
        dataset=data.name,
        n_train=int(len(split.train_users)),
        n_test=int(len(split.test_users)),
        **fit.epoch_counts(history, epochs),
        seed=seed,
        negatives_per_positive=negatives_per_positive,
        positive_threshold=positive_threshold,
        device=str(torch_device),
        seconds=round(run.seconds(), 2),
        seconds_this_call=round(time.perf_counter() - started, 2),
        history=history,
    )
    from icg.users.taste_table import taste_table

    # the cold-start taste table (issue 18), from the same split's training ratings; no weight depends on it
    model.set_taste_table(
        taste_table(
            data, vocab, seed=seed, positive_threshold=positive_threshold, test_fraction=test_fraction
        )
    )
    model.save_pretrained(out)
    write_text_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2))
    logger.info(
        "AUC %.4f (popularity %.4f, cold start %.4f) on %d held-out pairs",
        metrics["auc"],
        metrics["popularity_auc"],
        metrics["cold_start_auc"],
        metrics["n_test_pairs"],
    )
    return metrics


def train_epoch(
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    split: Split,
    epoch: int,
    seed: int,
    k: int,
    batch_size: int,
    progress: bool,
) -> float:
    """One pass over the train positives with fresh negatives; randomness from (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch])
    torch.manual_seed(seed * 1_000_003 + epoch)
    order = rng.permutation(len(split.train_users))
    users, items = split.train_users[order], split.train_items[order]
    negatives = sample_negatives(users, k, split.train_seen, split.n_items, rng)  # (P, k)
    device = model.user_profiles.device
    users_t, items_t = torch.tensor(users, device=device), torch.tensor(items, device=device)
    neg_t = torch.tensor(negatives, device=device)
    labels = torch.zeros(1 + k, device=device)
    labels[0] = 1.0
    model.train()
    total, count = 0.0, 0
    batches = range(0, len(users), batch_size)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", disable=not progress, leave=False)
    for start in bar:
        sl = slice(start, start + batch_size)
        batch_items = torch.cat([items_t[sl, None], neg_t[sl]], dim=1)  # (B, 1 + k)
        logits = model(model.features_for_users(users_t[sl]), batch_items)  # (B, 1 + k)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.expand_as(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(logits)
        count += len(logits)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


def evaluate_split(
    model: TwoTowerModel, split: Split, *, seed: int, eval_negatives_per_positive: int = 10
) -> dict[str, float]:
    """Model, cold-start and popularity AUC on the same (test positive, sampled negative) pairs."""
    rng = np.random.default_rng([seed, 104729])
    negatives = sample_negatives(
        split.test_users, eval_negatives_per_positive, split.all_seen, split.n_items, rng
    )
    counts = np.bincount(split.train_seen % split.n_items, minlength=split.n_items).astype(float)
    pos_model = _model_scores(model, split.test_users, split.test_items, cold=False)
    neg_model = _model_scores(model, split.test_users, negatives, cold=False)
    pos_cold = _model_scores(model, split.test_users, split.test_items, cold=True)
    neg_cold = _model_scores(model, split.test_users, negatives, cold=True)
    return {
        "auc": round(pair_auc(pos_model, neg_model), 4),
        "popularity_auc": round(pair_auc(counts[split.test_items], counts[negatives]), 4),
        "cold_start_auc": round(pair_auc(pos_cold, neg_cold), 4),
        "n_test_pairs": int(negatives.size),
    }
