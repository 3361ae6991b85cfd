"""The mini preset's context encoder: a tiny `Qwen2_5_VLForConditionalGeneration` trained by our own code.

Objective per step (paper §3.1, Multimodal Generative Learning Stage), on the train items' reference covers:

    loss = meta_weight · L_meta + lm_weight · LM(P_teacher | prompt, meta)
           + prompt_lm_weight · LM(P_teacher | prompt)

`meta_token_loss` gives the first two terms: the MLLM sees a degraded cover (mask / blur / crop) and its meta
tokens, through a D → CLIP head, must recover the mini CLIP's embedding of the clean cover; the teacher's
explicit prompt (`explicit_prompt_teacher`, a documented template, no MLLM knowledge) follows the meta tokens.
The third term is the same text right after the generation prompt, the layout `explicit_prompt` decodes from:
on 8 items, training with the first two terms only reached LM loss 0.01 after the meta tokens but 1.0 without
them, and greedy decoding (which never sees meta tokens) wrote no prompt exactly; with the third, all 8.

The whole tiny MLLM trains (it has to learn the template from scratch) with the meta tokens and the head.
Resume, time budget and output follow `mini_clip.py`: `checkpoint.pt` after every epoch (atomic), identical
weights after a resume on the same machine and thread count, `max_minutes` stops between epochs.

Output (`out_dir`): `ContextEncoder.save_pretrained` (Qwen config + weights, processor, meta tokens,
icg_context.json), so `ContextEncoder.from_pretrained(out_dir)` is the trained encoder; meta_head.safetensors
(the D → CLIP head, `load_meta_head`), mini_context.json, metrics.json, checkpoint.pt, base/ (random start).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import atomic_path, write_text_atomic
from icg.context import (
    SYSTEM_INSTRUCTION,
    TRANSFORMS,
    ContextEncoder,
    build_tiny_context_encoder,
    meta_token_loss,
    transform_images,
)
from icg.context.meta_tokens import append_meta_placeholders
from icg.context.teacher import explicit_prompt_teacher
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import check_size, display_title, items_genres
from icg.data.pixels import to_pil
from icg.errors import DataError
from icg.training import clip_data as cd
from icg.training import loop

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "mini_context.json"
HEAD_NAME = "meta_head.safetensors"
BASE_DIR = "base"
_CHECKPOINT_FORMAT = "icg.training.mini_context.checkpoint/1"
VAL_ITEMS = 64  # validation items scored after every epoch (the test split is scored in full at the end)
_CHAT_WORDS = ("system", "user", "assistant", "Title:", "You are a helpful assistant.", SYSTEM_INSTRUCTION)


@dataclasses.dataclass(frozen=True)
class MiniContextConfig(loop.JsonConfig):
    """Architecture, data and optimisation of one mini context-encoder run (mini_context.json)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vocab_size: int = 2000  # BPE target over train titles, teacher prompts and the chat words
    max_pixels: int = 56 * 56  # a 64² cover → 4×4 patches of 14 px → 4 merged image tokens
    num_meta_tokens: int = 4
    cover_size: int = 64
    variants: int = 4  # rendered per item (the mini CLIP's cover cache); variant 0 is the reference
    input_variants: int = 1  # variants 0..k-1 fed as inputs, always with the variant-0 CLIP target
    transform: str = "random"
    lm_weight: float = 1.0  # next-token loss on the teacher text after the meta tokens
    prompt_lm_weight: float = 1.0  # next-token loss on it right after the prompt (what greedy decoding sees)
    meta_weight: float = 1.0  # the meta-token (CLIP target) loss; 0 = Table 3's "no meta-token stage"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    eval_generate: int = 50  # test items decoded greedily for metrics.json
    val_generate: int = 16  # validation items decoded after every epoch
    max_items: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_layers", "num_heads", "vision_hidden_size", "vision_depth")
        positive += ("vocab_size", "num_meta_tokens", "variants", "input_variants", "epochs", "batch_size")
        positive += ("eval_generate", "val_generate")
        loop.check_positive_ints(self, positive)
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} / num_heads {self.num_heads} must be an even int"
            )
        if self.vision_hidden_size % 16:
            raise ValueError(f"vision_hidden_size must be a multiple of 16, got {self.vision_hidden_size}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}")
        if self.max_pixels < 28 * 28:
            raise ValueError(f"max_pixels must be >= {28 * 28} (one merged patch), got {self.max_pixels}")
        check_size(self.cover_size)
        if self.input_variants > self.variants:
            raise ValueError(f"input_variants {self.input_variants} exceeds variants {self.variants}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.lm_weight < 0 or self.prompt_lm_weight < 0 or self.meta_weight < 0:
            raise ValueError("lm_weight, prompt_lm_weight and meta_weight must be >= 0")
        loop.check_schedule(self)
        loop.check_max_items(self)


# ------------------------------------------------------------------------------------------------ pieces
def clip_fingerprint(clip_dir: Path) -> str:
    """Digest of the CLIP's config and weights: the meta-token targets change with them."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        file = clip_dir / name
        if not file.is_file():
            raise DataError("not a CLIPModel folder (config.json, model.safetensors)", path=clip_dir)
        digest.update(file.read_bytes())
    return digest.hexdigest()


def clip_targets(clip_dir: Path, covers: torch.Tensor) -> torch.Tensor:
    """(N, P) L2-normalised CLIP image embeddings of the clean reference covers (N, 3, S, S) uint8."""
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    return cd.embed_images(clip, processor, [to_pil(c) for c in covers])


def tokenizer_corpus(titles: list[str], teachers: list[str]) -> list[str]:
    """BPE corpus: the words (whitespace-split) of the title lines, the teacher prompts and the chat texts.

    Single words, so no merge joins a leading space to letters: " Dead Man" is [Ġ, Dead, Ġ, Man] in the prompt
    and "Dead Man" [Dead, Ġ, Man] at the start of the answer: the same word tokens, so writing the title is
    copying (a space-prefixed vocabulary tokenizes an unseen first word differently in the two places).
    """
    texts = [f"Title: {t}" for t in titles] + teachers + list(_CHAT_WORDS) * len(titles)
    return [word for text in texts for word in text.split()]


def prompt_lm_loss(encoder: ContextEncoder, images: list[Image.Image], titles: list[str], texts: list[str]):
    """Next-token loss on `texts` right after the generation prompt (no meta tokens), as `generate` sees it.

    Uses the encoder's own chat template + processor batch (left-padded): the layout is `explicit_prompt`'s.
    """
    batch = encoder.processor_batch(encoder.check_inputs(images, titles), titles)
    tok = encoder.processor.tokenizer
    answers = [tok(t.strip() + tok.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    pad = encoder.placeholder_id
    seq = append_meta_placeholders(
        batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], 0, pad, pad, answers
    )  # [left pad][prompt][answer], labels on the answer only
    ids, mask, types, grid = seq.input_ids, seq.attention_mask, seq.mm_token_type_ids, batch["image_grid_thw"]
    position_ids, _ = encoder.model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=mask)
    device = encoder.device  # the layout is built on the CPU (see ContextEncoder.processor_batch), then moved
    out = encoder.model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),  # (3, B, L)
        pixel_values=batch["pixel_values"].to(device),
        image_grid_thw=grid.to(device),
        mm_token_type_ids=types.to(device),
        labels=seq.labels.to(device),
        use_cache=False,
    )
    return out.loss


def primary_genre_word(prompt: str) -> str | None:
    """'an animation, children's and comedy movie poster in …' → 'animation' (None if no match).

    The genres are the words between the last leading or ", "-preceded "a(n) " and the last " movie poster"
    (a title before them may hold both).
    """
    head, found, _ = prompt.rpartition(" movie poster")
    parts = re.split(r"(?:^|,\s+)an?\s+", head)
    if not found or len(parts) < 2:
        return None
    return re.split(r", | and ", parts[-1])[0].strip()


# ------------------------------------------------------------------------------------------------ evaluation
class _Data:
    """Per-item inputs and targets of one run (row positions index the items table)."""

    def __init__(self, items: pd.DataFrame, covers: torch.Tensor, targets: torch.Tensor) -> None:
        # the title as the cover prints it ("Usual Suspects, The" → "The Usual Suspects"): the teacher starts
        # with that form, so the MLLM learns to copy the title rather than to move articles
        raw = [str(t) for t in items["title"]]
        self.titles = [display_title(t) or "untitled" for t in raw]
        self.genres = items_genres(items)
        self.teachers = [explicit_prompt_teacher(t, g) for t, g in zip(raw, self.genres, strict=True)]
        self.covers = covers  # (N, V, 3, S, S) uint8
        self.targets = targets  # (N, P) normalised CLIP embeddings of variant 0

    def images(self, rows, variants=None) -> list[Image.Image]:
        variants = [0] * len(rows) if variants is None else variants
        return [to_pil(self.covers[r, v]) for r, v in zip(rows, variants, strict=True)]


@torch.no_grad()
def evaluate_meta(
    encoder: ContextEncoder,
    head: nn.Module,
    data: _Data,
    rows: np.ndarray,
    batch_size: int,
    image: str = "clean",
) -> dict[str, float]:
    """Cosine of head(C_ref) (mean over meta tokens) with CLIP(clean cover), retrieval among `rows`, and the
    LM losses of the teacher prompt. `image`: "clean" covers, "degraded" (seeded random transform) or "black"
    (a title-only control)."""
    encoder.eval()
    preds, lm_meta, lm_prompt = [], [], []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        titles, texts = [data.titles[r] for r in part], [data.teachers[r] for r in part]
        images = data.images(part)
        if image == "black":
            images = [Image.new("RGB", im.size) for im in images]
        elif image == "degraded":
            images = transform_images(images, "random", seed=start)
        out = encoder(images, titles, texts)
        preds.append(F.normalize(head(out.context).mean(1), dim=-1))  # (b, P)
        lm_meta.append(float(out.lm_loss) * len(part))
        lm_prompt.append(float(prompt_lm_loss(encoder, images, titles, texts)) * len(part))
    pred, target = torch.cat(preds), data.targets[rows]  # (n, P), (n, P)
    sims = pred @ target.T  # (n, n)
    rivals = (sims >= sims.diagonal()[:, None]).sum(1) - 1  # ties count against the item
    return {
        "meta_cosine": round(float(sims.diagonal().mean()), 4),
        "meta_r1": round(float((rivals < 1).float().mean()), 4),
        "meta_r5": round(float((rivals < 5).float().mean()), 4),
        "lm_loss_meta_path": round(sum(lm_meta) / len(rows), 4),
        "lm_loss_prompt_path": round(sum(lm_prompt) / len(rows), 4),
    }


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / max(1, len(flags)), 4)


def evaluate_generation(
    encoder: ContextEncoder, data: _Data, rows: np.ndarray, black: bool = False, examples: int = 0
) -> dict[str, object]:
    """Greedy `explicit_prompt` against the teacher: exact match, title right, primary genre word right
    (beside the majority-genre chance on the same items)."""
    encoder.eval()
    tok = encoder.processor.tokenizer
    max_new = max(len(tok(data.teachers[r])["input_ids"]) for r in rows) + 4
    images = data.images(rows)
    if black:
        images = [Image.new("RGB", im.size) for im in images]
    titles = [data.titles[r] for r in rows]
    generated = encoder.explicit_prompt(images, titles, max_new_tokens=max_new)
    teachers = [data.teachers[r] for r in rows]
    truth = [data.genres[r][0].lower() for r in rows]
    _, counts = np.unique(truth, return_counts=True)
    result: dict[str, object] = {
        "n_items": len(rows),
        "exact_match": _rate(g == t for g, t in zip(generated, teachers, strict=True)),
        "title_correct": _rate(g.startswith(f"{t}, ") for g, t in zip(generated, titles, strict=True)),
        "primary_genre_correct": _rate(
            primary_genre_word(g) == t for g, t in zip(generated, truth, strict=True)
        ),
        "primary_genre_chance_majority": round(float(counts.max() / len(rows)), 4),
    }
    if examples:
        result["examples"] = [
            {"title": titles[i], "teacher": teachers[i], "generated": generated[i]} for i in range(examples)
        ]
    return result


def target_baselines(data: _Data, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Cosines that need no model: the mean train embedding, and the mean of the item's primary genre."""
    mean = F.normalize(data.targets[train].mean(0), dim=-1)  # (P,)
    by_genre: dict[str, torch.Tensor] = {}
    for genre in {data.genres[r][0] for r in train}:
        rows = [r for r in train if data.genres[r][0] == genre]
        by_genre[genre] = F.normalize(data.targets[rows].mean(0), dim=-1)
    genre_pred = torch.stack([by_genre.get(data.genres[r][0], mean) for r in test])  # (n, P)
    return {
        "meta_cosine_constant_mean": round(float((data.targets[test] @ mean).mean()), 4),
        "meta_cosine_genre_mean": round(float((data.targets[test] * genre_pred).sum(-1).mean()), 4),
    }


# ------------------------------------------------------------------------------------------------ training
def _optimizer(params: list[nn.Parameter], config: MiniContextConfig, total_steps: int):
    """AdamW (no decay on 1-D weights: norms, biases), linear warmup then cosine decay to 0."""
    return loop.adamw_warmup_cosine(params, config, total_steps, betas=(0.9, 0.98), eps=1e-6)


def _build_base(
    out: Path, config: MiniContextConfig, data: _Data, train: np.ndarray, fingerprint: str
) -> Path:
    """The random tiny Qwen2.5-VL + processor (BPE on the train items' texts), built once per fingerprint."""
    base = out / BASE_DIR
    marker = base / "mini_context_base.json"
    if marker.is_file() and json.loads(marker.read_text())["fingerprint"] == fingerprint:
        return base
    corpus = tokenizer_corpus([data.titles[r] for r in train], [data.teachers[r] for r in train])
    sizes = ("hidden_size", "num_layers", "num_heads", "vision_hidden_size", "vision_depth", "vocab_size")
    sizes += ("max_pixels", "seed")
    build_tiny_context_encoder(base, corpus=corpus, **{name: getattr(config, name) for name in sizes})
    write_text_atomic(marker, json.dumps({"fingerprint": fingerprint}))
    return base


def train_epoch(encoder, head, optimizer, scheduler, sampler, data, train, config, epoch, progress) -> dict:
    """One pass over the train items in full batches; returns the mean losses."""
    encoder.train()
    n = len(train)
    order = torch.randperm(n, generator=sampler).numpy()  # (N_train,)
    variant = torch.randint(0, config.input_variants, (n,), generator=sampler).tolist()  # host draw, seeded
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums = {"loss": 0.0, "meta_loss": 0.0, "lm_loss": 0.0, "prompt_lm_loss": 0.0}
    steps = range(0, n - config.batch_size + 1, config.batch_size)
    desc = f"context epoch {epoch + 1}/{config.epochs}"
    bar = tqdm(steps, desc=desc, unit="step", disable=not progress, leave=False)
    for start in bar:
        pos = order[start : start + config.batch_size]
        rows = train[pos]
        images = data.images(rows, [variant[p] for p in pos])
        titles, texts = [data.titles[r] for r in rows], [data.teachers[r] for r in rows]
        targets = texts if config.lm_weight > 0 else None
        out = meta_token_loss(
            encoder,
            images,
            titles,
            data.targets[rows],
            head,
            config.transform,
            targets,
            lm_weight=config.lm_weight,
            meta_weight=config.meta_weight,
        )
        loss = out["loss"]
        prompt_loss = torch.zeros((), device=loss.device)
        if config.prompt_lm_weight > 0:
            prompt_loss = prompt_lm_loss(encoder, images, titles, texts)
            loss = loss + config.prompt_lm_weight * prompt_loss
        loop.optimizer_step(loss, optimizer, scheduler, params, config.grad_clip)
        for key, value in (("loss", loss), ("meta_loss", out["meta_loss"]), ("prompt_lm_loss", prompt_loss)):
            sums[key] += value.item()
        sums["lm_loss"] += out["lm_loss"].item() if out["lm_loss"] is not None else 0.0
        bar.set_postfix(loss=f"{sums['loss'] / (bar.n + 1):.3f}")
    return {k: round(v / max(1, len(steps)), 4) for k, v in sums.items()}


def train_mini_context(
    items: pd.DataFrame,
    out_dir: str | Path,
    config: MiniContextConfig | None = None,
    *,
    clip_dir: str | Path,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Train the mini context encoder on `items` (item_id, title, genres, year), evaluate it on held-out
    items, save it; returns the metrics. `clip_dir` is the mini CLIP whose image embeddings are the
    meta-token targets; `cache_dir` holds the rendered covers (default out_dir/cache). `threads` sets torch's
    intra-op threads for this call; a resumed run must use the same count for bit-identical weights.
    """
    config = config or MiniContextConfig()
    loop.check_run_options(max_minutes, threads=threads)
    with loop.torch_threads(threads):
        out = Path(out_dir)
        cache = Path(cache_dir) if cache_dir is not None else out / "cache"
        return _train(items, out, config, Path(clip_dir), cache, resume, progress, max_minutes)


def _train(items, out: Path, config, clip_dir: Path, cache: Path, resume, progress, max_minutes) -> dict:
    started, load_start = time.perf_counter(), os.getloadavg()
    items, split = loop.run_items(items, config, min_train=config.batch_size)
    train, n_train = split.train, len(split.train)
    fingerprint = loop.items_fingerprint(items, config, clip_fingerprint(clip_dir))
    metrics_file = out / METRICS_NAME
    done = loop.finished_metrics(metrics_file, fingerprint, resume)
    if done is not None:
        logger.info("%s is complete; nothing to do", out)
        return done
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    what, inputs = "mini context-encoder", "items, config or CLIP"
    state = loop.load_checkpoint(checkpoint, fingerprint, _CHECKPOINT_FORMAT, what, inputs, resume=resume)

    covers = render_cover_cache(items, cache, config.cover_size, config.variants, progress)
    data = _Data(items, covers, clip_targets(clip_dir, covers[:, 0]))
    base = _build_base(out, config, data, train, fingerprint)
    steps_per_epoch = n_train // config.batch_size
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(config.seed)
        encoder = ContextEncoder.from_pretrained(
            base, num_meta_tokens=config.num_meta_tokens, train_backbone=True, seed=config.seed
        )
        head = nn.Linear(config.hidden_size, data.targets.shape[1])  # D → CLIP projection dim
        params = list(encoder.parameters()) + list(head.parameters())
        optimizer, scheduler = _optimizer(params, config, config.epochs * steps_per_epoch)
        sampler = torch.Generator().manual_seed(config.seed + 1)
        stateful = {"encoder": encoder, "head": head, "optimizer": optimizer, "scheduler": scheduler}
        generators = {"sampler_rng": sampler}
        run = loop.EpochRun(logger, out, config.epochs, started, max_minutes, epochs_in_log=False)
        history = run.restore(state, stateful, generators)
        if state is None:  # the untrained model's scores, the baseline metrics.json shows beside the trained
            untrained, step_seconds = evaluate_meta(encoder, head, data, split.test, config.batch_size), []
        else:
            untrained, step_seconds = state["untrained"], list(state["step_seconds"])
        for epoch in run:
            losses = train_epoch(
                encoder, head, optimizer, scheduler, sampler, data, train, config, epoch, progress
            )
            step_seconds.append(run.elapsed() / max(1, steps_per_epoch))
            val = evaluate_meta(encoder, head, data, split.val[:VAL_ITEMS], config.batch_size)
            gen = evaluate_generation(encoder, data, split.val[: config.val_generate])
            history.append({
                "epoch": epoch + 1, **losses, "val_meta_cosine": val["meta_cosine"],
                "val_lm_loss_prompt_path": val["lm_loss_prompt_path"], "val_exact_match": gen["exact_match"],
                "val_title_correct": gen["title_correct"], "val_genre_correct": gen["primary_genre_correct"],
            })  # fmt: skip
            logger.info("context epoch %d/%d (%.0fs): %s", epoch + 1, config.epochs, run.lap(), history[-1])
            # the module states first, where this checkpoint format has always had them
            state = {name: obj.state_dict() for name, obj in stateful.items()} | loop.epoch_checkpoint(
                _CHECKPOINT_FORMAT, fingerprint, epoch + 1, {}, generators, history, run.seconds(),
                untrained=untrained, step_seconds=step_seconds,
            )  # fmt: skip
            loop.torch_save_atomic(checkpoint, state)

        test = evaluate_meta(encoder, head, data, split.test, config.batch_size)
        degraded = evaluate_meta(encoder, head, data, split.test, config.batch_size, image="degraded")
        black = evaluate_meta(encoder, head, data, split.test, config.batch_size, image="black")
        gen_rows = split.test[: config.eval_generate]
        generation = evaluate_generation(encoder, data, gen_rows, examples=min(5, len(gen_rows)))
        generation_black = evaluate_generation(encoder, data, gen_rows, black=True)

    encoder.save_pretrained(out)
    weights = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(out / HEAD_NAME) as tmp:
        save_file(weights, str(tmp))
    write_text_atomic(out / CONFIG_NAME, config.to_json())
    n_test = len(split.test)
    metrics = {
        **loop.split_sizes(items, split),
        **loop.epoch_counts(history, config.epochs),
        "fingerprint": fingerprint,
        "teacher": "template-teacher: '{title}, a {genres} movie poster in {palette words}'",
        "test": {
            **test,
            "meta_cosine_untrained": untrained["meta_cosine"],
            "meta_cosine_title_only": black["meta_cosine"],
            "meta_cosine_degraded": degraded["meta_cosine"],
            **target_baselines(data, train, split.test),
            "meta_r1_untrained": untrained["meta_r1"],
            "meta_r1_title_only": black["meta_r1"],
            "chance_r1": round(1 / n_test, 4),
            "chance_r5": round(min(5, n_test) / n_test, 4),
            "lm_loss_prompt_path_untrained": untrained["lm_loss_prompt_path"],
            "lm_loss_prompt_path_title_only": black["lm_loss_prompt_path"],
            "generation": generation,
            "generation_title_only": generation_black,
        },
        "parameters": sum(p.numel() for p in params),
        "vocab_size": len(encoder.processor.tokenizer),
        "seconds_per_step": round(float(np.mean(step_seconds)), 3) if step_seconds else None,
        "steps_per_epoch": steps_per_epoch,
        **loop.run_seconds(started, run.seconds_before, load_start),
        "history": history,
        "config": dataclasses.asdict(config),
    }
    write_text_atomic(metrics_file, json.dumps(metrics, indent=2))
    logger.info(
        "mini context test metrics: %s", {k: v for k, v in metrics["test"].items() if "generation" not in k}
    )
    return metrics


def load_meta_head(out_dir: str | Path) -> nn.Linear:
    """The trained D → CLIP head saved beside the encoder (meta_head.safetensors)."""
    weights = load_file(str(Path(out_dir) / HEAD_NAME))
    head = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
    head.load_state_dict(weights)
    return head
