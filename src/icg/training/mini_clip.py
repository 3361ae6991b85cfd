"""The mini preset's CLIP: a small transformers `CLIPModel` trained contrastively on rendered covers + texts.

The mini preset has no pretrained CLIP, so this one serves as its CLIP score, reconstruction target and reward
backbone. Pairs are (rendered cover of an item, variant 0..V-1, mildly augmented; "{title}, a {genres} movie"
style caption); loss is CLIP's symmetric InfoNCE with the learned temperature (`CLIPModel(return_loss=True)`),
the temperature clamped at 100 as OpenAI did; AdamW, linear warmup then cosine decay.

Resume: after every epoch `checkpoint.pt` (model, optimizer, scheduler, the sampler's and the augmentations'
RNG states, history) is replaced atomically. A later call with the same items and config continues from the
last finished epoch, and ends with bit-identical weights to an uninterrupted run on the same machine and
thread count. `max_minutes` stops between epochs once the next epoch would overrun it (at least one epoch
runs per call; checkpoint kept, resumable); it is not part of the config, so the schedule ignores it.

Output (`out_dir`): config.json + model.safetensors (`CLIPModel.from_pretrained`), the processor files
(`CLIPProcessor.from_pretrained`: preprocessor/processor config, vocab.json, merges.txt, tokenizer.json,
tokenizer_config.json), mini_clip.json (`MiniClipConfig`), metrics.json, checkpoint.pt and
cache/ (rendered covers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from icg.atomic import atomic_path, write_text_atomic
from icg.data.records import InteractionData
from icg.errors import DataError
from icg.training import clip_data as cd
from icg.training.clip_data import evaluate_clip
from icg.training.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, train_clip_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "mini_clip.json"
_CHECKPOINT_FORMAT = "icg.training.mini_clip.checkpoint/1"


@dataclasses.dataclass(frozen=True)
class MiniClipConfig:
    """Architecture, data and optimisation of one mini-CLIP run (mini_clip.json beside the weights)."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 4
    heads: int = 4
    max_text_tokens: int = 32
    # BPE target; the learned vocabulary is smaller when the texts run out of pairs to merge
    vocab_size: int = 2048
    projection_dim: int = 128
    variants: int = 4  # rendered compositions per item (0 = reference cover)
    epochs: int = 24
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    crop_scale_min: float = 0.8
    color_jitter: float = 0.1
    hue_jitter: float = 0.01
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_items: int | None = None  # train on the first N items of the table only (tests, quick looks)
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("patch_size", "vision_width", "vision_layers", "text_width", "text_layers", "heads")
        positive += ("projection_dim", "variants", "epochs", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        cd.check_size(self.image_size)  # the renderer's range, 64-512 px
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ValueError(
                f"widths {self.vision_width}, {self.text_width} must divide by heads {self.heads}"
            )
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size}")
        if (
            self.lr <= 0
            or self.weight_decay < 0
            or not 0.0 <= self.warmup_fraction < 1.0
            or self.grad_clip <= 0
        ):
            raise ValueError("lr and grad_clip must be > 0, weight_decay >= 0, warmup_fraction in [0, 1)")
        if self.max_items is not None and self.max_items < 6:
            raise ValueError(f"max_items must be None or >= 6, got {self.max_items}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MiniClipConfig:
        values = json.loads(text)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown MiniClipConfig fields {sorted(unknown)}")
        return cls(**values)


MINI_CLIP_PRESETS: dict[str, MiniClipConfig] = {"mini": MiniClipConfig()}


def mini_clip_preset(name: str) -> MiniClipConfig:
    if name not in MINI_CLIP_PRESETS:
        raise ValueError(f"unknown mini-CLIP preset '{name}'; known: {sorted(MINI_CLIP_PRESETS)}")
    return MINI_CLIP_PRESETS[name]


def build_processor(config: MiniClipConfig, tokenizer: CLIPTokenizer) -> CLIPProcessor:
    """CLIPProcessor at the mini size: resize the short side to image_size, centre-crop, OpenAI mean/std."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=list(cd.IMAGE_MEAN),
        image_std=list(cd.IMAGE_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_clip_model(config: MiniClipConfig, tokenizer: CLIPTokenizer) -> CLIPModel:
    """A randomly initialised `CLIPModel` of the config's size over the tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    text = {
        "vocab_size": len(vocab),
        "hidden_size": config.text_width,
        "intermediate_size": 4 * config.text_width,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.heads,
        "max_position_embeddings": config.max_text_tokens,
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }
    vision = {
        "hidden_size": config.vision_width,
        "intermediate_size": 4 * config.vision_width,
        "num_hidden_layers": config.vision_layers,
        "num_attention_heads": config.heads,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
    }
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim))


def _fingerprint(items: pd.DataFrame, config: MiniClipConfig) -> str:
    payload = [list(map(str, items["item_id"])), list(map(str, items["title"])), cd.items_genres(items)]
    return hashlib.sha256(json.dumps([payload, dataclasses.asdict(config)]).encode()).hexdigest()


def _optimizer(model: CLIPModel, config: MiniClipConfig, total_steps: int):
    """AdamW without decay on biases, norms, embeddings' 1-D vectors and the temperature; warmup + cosine."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, round(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_checkpoint(path: Path, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise DataError(f"cannot read checkpoint ({exc}); delete it or pass resume=False", path=path) from exc
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise DataError("not a mini-CLIP checkpoint; delete it or pass resume=False", path=path)
    if state["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} belongs to a run with other items or config; use another out_dir or resume=False"
        )
    return state


def _train_epoch(
    model: CLIPModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: torch.Generator,
    batches: cd.PairSampler,
    config: MiniClipConfig,
    epoch: int,
    progress: bool,
) -> float:
    """One pass over the train items in full batches; returns the mean loss."""
    model.train()
    plan = batches.epoch_plan(config.batch_size, config.variants, sampler)
    total = 0.0
    bar = tqdm(
        plan, desc=f"clip epoch {epoch + 1}/{config.epochs}", unit="step", disable=not progress, leave=False
    )
    for step, batch in enumerate(bar):
        pixels, tokens = batches.batch(*batch)  # (B, 3, S, S), input_ids/attention_mask (B, L)
        loss = model(**tokens, pixel_values=pixels, return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # OpenAI's cap on the temperature
            model.logit_scale.clamp_(0.0, math.log(100.0))
        total += loss.item()
        bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / max(1, len(plan))


def train_mini_clip(
    data: InteractionData,
    out_dir: str | Path,
    config: MiniClipConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    *,
    max_minutes: float | None = None,
    threads: int | None = None,
) -> dict[str, object]:
    """Train the mini CLIP on `data.items`, evaluate it on held-out items, save it; returns the metrics.

    `threads` sets torch's intra-op threads for this call (restored afterwards). On a machine shared with
    other jobs, 1 thread is several times faster than 2 busy-waiting ones; a resumed run must use the same
    count as the first one for bit-identical weights.
    """
    config = config or mini_clip_preset("mini")
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(data, Path(out_dir), config, resume, progress, max_minutes)
    finally:
        torch.set_num_threads(previous)


def _train(
    data: InteractionData,
    out: Path,
    config: MiniClipConfig,
    resume: bool,
    progress: bool,
    max_minutes: float | None,
) -> dict[str, object]:
    started, load_start = time.perf_counter(), os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    items = data.items if config.max_items is None else data.items.iloc[: config.max_items]
    items = items.reset_index(drop=True)
    split = cd.split_items(len(items), config.seed, config.val_fraction, config.test_fraction)
    n_train = len(split.train)
    if n_train < config.batch_size:
        raise ValueError(f"{n_train} training items are fewer than batch_size {config.batch_size}")
    steps_per_epoch = n_train // config.batch_size  # full batches only: every step sees B negatives
    fingerprint = _fingerprint(items, config)
    checkpoint = out / CHECKPOINT_NAME
    state = _load_checkpoint(checkpoint, fingerprint) if resume and checkpoint.is_file() else None
    done = out / METRICS_NAME
    if state is not None and state["epoch"] == config.epochs and done.is_file():
        metrics = json.loads(done.read_text())
        if metrics.get("completed"):  # nothing to do: leave the saved files (and their bytes) as they are
            logger.info("%s: mini CLIP already trained (%d epochs)", out, config.epochs)
            return metrics

    all_genres = sorted({g for t in cd.items_genres(items) for g in t})
    corpus = cd.tokenizer_corpus(items.iloc[split.train], all_genres)
    # vocab.json + merges.txt (OpenAI's layout) stay in out/ beside the tokenizer.json that save_pretrained
    # adds; deterministic, so a resumed run writes the same files.
    tokenizer = train_clip_tokenizer(corpus, out, config.vocab_size, config.max_text_tokens)
    processor = build_processor(config, tokenizer)
    covers = cd.render_cover_cache(items, out / "cache", config.image_size, config.variants, progress)
    val_images = [cd.to_pil(c) for c in covers[split.val, 0]]
    augment = cd.build_augment(
        config.image_size, config.crop_scale_min, config.color_jitter, config.hue_jitter
    )
    batches = cd.PairSampler(items, split.train, covers, augment, tokenizer)
    total_steps = config.epochs * steps_per_epoch

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(config.seed)
        model = build_clip_model(config, tokenizer)
        optimizer, scheduler = _optimizer(model, config, total_steps)
        sampler = torch.Generator().manual_seed(config.seed + 1)
        start_epoch, history, seconds_before = 0, [], 0.0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.set_state(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, history, seconds_before = state["epoch"], list(state["history"]), state["seconds"]
            logger.info("resuming %s from epoch %d of %d", out, start_epoch, config.epochs)
        epoch_seconds: list[float] = []
        for epoch in range(start_epoch, config.epochs):
            elapsed = time.perf_counter() - started
            if max_minutes is not None and epoch_seconds and elapsed + max(epoch_seconds) > 60 * max_minutes:
                logger.warning(
                    "time budget %.1f min reached at epoch %d/%d; resumable",
                    max_minutes,
                    epoch,
                    config.epochs,
                )
                break
            tick = time.perf_counter()
            loss = _train_epoch(model, optimizer, scheduler, sampler, batches, config, epoch, progress)
            val = evaluate_clip(model, processor, items.iloc[split.val], images=val_images, genres=all_genres)
            logit_scale = round(float(model.logit_scale.detach().exp()), 2)
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": round(loss, 4),
                    "val_i2t_r1": val["i2t_r1"],
                    "val_i2t_r5": val["i2t_r5"],
                    "val_genre_accuracy": val["genre_accuracy"],
                    "logit_scale": logit_scale,
                }
            )
            epoch_seconds.append(time.perf_counter() - tick)
            logger.info(
                "mini-CLIP epoch %d/%d (%.0fs): %s", epoch + 1, config.epochs, epoch_seconds[-1], history[-1]
            )
            state = {
                "format": _CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler_rng": sampler.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "seconds": seconds_before + time.perf_counter() - started,
            }
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)

    test_items = items.iloc[split.test]
    test = evaluate_clip(
        model, processor, test_items, images=[cd.to_pil(c) for c in covers[split.test, 0]], genres=all_genres
    )
    val = evaluate_clip(model, processor, items.iloc[split.val], images=val_images, genres=all_genres)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_text_atomic(out / CONFIG_NAME, config.to_json())
    epochs_done = history[-1]["epoch"] if history else 0
    metrics = {
        "dataset": data.name,
        "n_items": len(items),
        "n_train": n_train,
        "n_val": len(split.val),
        "n_test": len(split.test),
        "epochs": config.epochs,
        "epochs_completed": epochs_done,
        "completed": epochs_done == config.epochs,
        "test": test,
        "val": val,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seconds": round(seconds_before + time.perf_counter() - started, 1),
        "seconds_this_call": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "history": history,
        "config": dataclasses.asdict(config),
    }
    write_text_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2))
    logger.info(
        "mini-CLIP test: i2t R@1 %.3f (chance %.3f), R@5 %.3f (chance %.3f), genre acc %.3f (chance %.3f)",
        test["i2t_r1"],
        test["chance_r1"],
        test["i2t_r5"],
        test["chance_r5"],
        test["genre_accuracy"],
        test["genre_chance_majority"],
    )
    return metrics
