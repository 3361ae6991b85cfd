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
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from icg.atomic import write_text_atomic
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import check_size, items_genres
from icg.data.pixels import IMAGE_MEAN, IMAGE_STD, to_pil
from icg.data.records import InteractionData
from icg.training import clip_data as cd
from icg.training import loop
from icg.training.clip_data import evaluate_clip
from icg.training.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, train_clip_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "mini_clip.json"
_CHECKPOINT_FORMAT = "icg.training.mini_clip.checkpoint/1"


@dataclasses.dataclass(frozen=True)
class MiniClipConfig(loop.JsonConfig):
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
        loop.check_positive_ints(self, positive)
        check_size(self.image_size)  # the renderer's range, 64-512 px
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
        loop.check_schedule(self)
        loop.check_max_items(self)


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
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
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


def _optimizer(model: CLIPModel, config: MiniClipConfig, total_steps: int):
    """AdamW without decay on biases, norms, embeddings' 1-D vectors and the temperature; warmup + cosine."""
    return loop.adamw_warmup_cosine(model.parameters(), config, total_steps, betas=(0.9, 0.98), eps=1e-6)


def train_epoch(
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
        loop.optimizer_step(loss, optimizer, scheduler, model.parameters(), config.grad_clip)
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
    loop.check_run_options(max_minutes, threads=threads)
    with loop.torch_threads(threads):
        return _train(data, Path(out_dir), config, resume, progress, max_minutes)


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
    items, split = loop.run_items(data.items, config, min_train=config.batch_size)
    n_train = len(split.train)
    steps_per_epoch = n_train // config.batch_size  # full batches only: every step sees B negatives
    fingerprint = loop.items_fingerprint(items, config)
    checkpoint = out / CHECKPOINT_NAME
    state = loop.load_checkpoint(
        checkpoint, fingerprint, _CHECKPOINT_FORMAT, "mini-CLIP", "items or config", resume=resume
    )
    done = out / METRICS_NAME
    if state is not None and state["epoch"] == config.epochs and done.is_file():
        metrics = json.loads(done.read_text())
        if metrics.get("completed"):  # nothing to do: leave the saved files (and their bytes) as they are
            logger.info("%s: mini CLIP already trained (%d epochs)", out, config.epochs)
            return metrics

    all_genres = sorted({g for t in items_genres(items) for g in t})
    corpus = cd.tokenizer_corpus(items.iloc[split.train], all_genres)
    # vocab.json + merges.txt (OpenAI's layout) stay in out/ beside the tokenizer.json that save_pretrained
    # adds; deterministic, so a resumed run writes the same files.
    tokenizer = train_clip_tokenizer(corpus, out, config.vocab_size, config.max_text_tokens)
    processor = build_processor(config, tokenizer)
    covers = render_cover_cache(items, out / "cache", config.image_size, config.variants, progress)
    val_images = [to_pil(c) for c in covers[split.val, 0]]
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
        modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        generators = {"sampler_rng": sampler}
        run = loop.EpochRun(logger, out, config.epochs, started, max_minutes)
        history = run.restore(state, modules, generators)
        for epoch in run:
            loss = train_epoch(model, optimizer, scheduler, sampler, batches, config, epoch, progress)
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
            logger.info("mini-CLIP epoch %d/%d (%.0fs): %s", epoch + 1, config.epochs, run.lap(), history[-1])
            run.save(checkpoint, _CHECKPOINT_FORMAT, fingerprint, epoch + 1)

    test_items = items.iloc[split.test]
    test = evaluate_clip(
        model, processor, test_items, images=[to_pil(c) for c in covers[split.test, 0]], genres=all_genres
    )
    val = evaluate_clip(model, processor, items.iloc[split.val], images=val_images, genres=all_genres)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_text_atomic(out / CONFIG_NAME, config.to_json())
    metrics = {
        "dataset": data.name,
        **loop.split_sizes(items, split),
        **loop.epoch_counts(history, config.epochs),
        "test": test,
        "val": val,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        **loop.run_seconds(started, run.seconds_before, load_start),
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
