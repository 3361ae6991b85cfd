"""Quality report of the mini preset's diffusion backbone, each figure beside its floor, ceiling or chance.

Measured on the held-out items (validation + test of `split_items(n, 0, 0.1, 0.1)`, the split every mini
model shares), against their reference covers (variant 0 of the rendered cover cache):

- VAE: PSNR/SSIM of encode → decode, beside a bicubic downsample/upsample by the VAE's own factor (the
  cheapest codec at the latent's spatial size).
- Generation: diffusers' `StableDiffusionPipeline` over the backbone's own components, prompt "title + genres"
  (`item_text(..., 0)`), one seeded cover per item. The same pipeline with a randomly initialised UNet of the
  same config is the ceiling (what "no training" scores).
- FD-miniCLIP (`icg.evaluation.fd`): Fréchet distance on the mini CLIP's image embeddings, never called FID.
  Its floor is the distance between two random halves of the reference covers; at a few hundred samples
  and 128-d features FD is biased upward, so the like-for-like comparison uses the same half sizes.
- Zero-shot primary-genre accuracy of the mini CLIP on generated, reference and random-UNet covers, beside
  the majority-genre share and 1/#genres.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image, ImageDraw
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import atomic_path
from icg.data.captions import item_text
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import items_genres
from icg.data.pixels import to_pil
from icg.data.splits import split_items
from icg.evaluation.fd import FD_NAME, ClipImageFeatures, frechet_distance
from icg.loading import load_backbone
from icg.training.clip_data import evaluate_clip

logger = logging.getLogger(__name__)

SAMPLES_NAME = "mini_eval_samples.png"
SPLIT = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}  # the mini CLIP's split, shared by the mini
COVER_VARIANTS = 4  # the mini CLIP's cover cache (variant 0 = reference): the same file is reused
SEED_STRIDE = 1_000_000  # item at row r of the items table is generated with seed * SEED_STRIDE + r
RANDOM_UNET_SEED = 7919  # + seed: apart from 0, the seed a trainer (or a test's dummy UNet) may start from
FD_BIAS_NOTE = (
    "FD is estimated from {n} samples of {d}-d features: the estimate has a positive small-sample bias, so "
    "two halves of the reference covers themselves are {floor:.4g} apart (the floor, measured at the same "
    "half sizes as the 'half' figures). Only FD-miniCLIP figures at equal sample sizes and from the same "
    "CLIP weights compare."
)


def held_out_rows(n_items: int) -> np.ndarray:
    """Sorted row positions of the validation + test items of the shared mini split."""
    split = split_items(n_items, SPLIT["seed"], SPLIT["val_fraction"], SPLIT["test_fraction"])
    return np.sort(np.concatenate([split.val, split.test]))


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def vae_reconstruction(vae, covers: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """PSNR/SSIM of the VAE round trip (latent mean, no sampling) and of a bicubic ÷factor/×factor baseline.

    `covers`: (N, 3, S, S) uint8. Per-image PSNR averaged over images; data range [0, 1].
    """
    target = covers.float() / 255.0  # (N, 3, S, S)
    size = tuple(target.shape[-2:])
    factor = vae_scale_factor(vae)
    recon = []
    for start in range(0, len(target), batch_size):
        x = target[start : start + batch_size] * 2.0 - 1.0  # (B, 3, S, S) in [-1, 1]
        latents = vae.encode(x).latent_dist.mode()  # (B, 4, S/f, S/f)
        recon.append(((vae.decode(latents).sample.clamp(-1, 1) + 1.0) / 2.0).float())
    recon = torch.cat(recon)  # (N, 3, S, S) in [0, 1]
    small = F.interpolate(
        target, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False
    )
    bicubic = F.interpolate(small, size=size, mode="bicubic", align_corners=False).clamp(0, 1)

    def psnr(pred: torch.Tensor) -> float:
        return float(peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3)))

    def ssim(pred: torch.Tensor) -> float:
        return float(structural_similarity_index_measure(pred, target, data_range=1.0))

    return {
        "psnr": round(psnr(recon), 3),
        "ssim": round(ssim(recon), 4),
        "bicubic_psnr": round(psnr(bicubic), 3),
        "bicubic_ssim": round(ssim(bicubic), 4),
        "downsample_factor": factor,
        "latent_shape": [int(vae.config.latent_channels), size[0] // factor, size[1] // factor],
        "n_images": len(target),
    }


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler) -> StableDiffusionPipeline:
    """diffusers' own text-to-image pipeline over the components (a fresh DDIM copy: it keeps state)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_covers(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    *,
    size: int,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
    progress: bool = True,
    desc: str = "generate",
) -> torch.Tensor:
    """(N, 3, size, size) uint8 covers, one per prompt; cover i starts from the noise of `seeds[i]`.

    One generator per cover makes each cover independent of the batch it falls in.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    out = torch.empty((len(prompts), 3, size, size), dtype=torch.uint8)  # host buffer of the finished covers
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        stop = min(start + batch_size, len(prompts))
        images = pipe(
            prompt=prompts[start:stop],
            height=size,
            width=size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(s) for s in seeds[start:stop]],
            output_type="pt",
        ).images  # (B, 3, size, size) float in [0, 1]
        out[start:stop] = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def random_unet(unet: UNet2DConditionModel, seed: int) -> UNet2DConditionModel:
    """An untrained UNet of the same config, initialised under `seed` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2DConditionModel.from_config(unet.config)
    if model.dtype != unet.dtype:
        model = model.to(dtype=unet.dtype)
    return model.requires_grad_(False).eval()


def fd_figures(
    references: torch.Tensor,
    generated: torch.Tensor,
    random_covers: torch.Tensor,
    features: ClipImageFeatures,
    seed: int,
    batch_size: int,
) -> dict[str, object]:
    """FD-miniCLIP of generated / random-UNet covers against the references, and the reference-halves floor.

    'half' figures use disjoint item halves A, B (seeded): FD(x[A], ref[B]) is measured exactly like the
    floor FD(ref[A], ref[B]), so the three compare; the full-set figures use every item on both sides.
    """
    n = len(references)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    half = n // 2
    a, b = order[:half], order[half : 2 * half]

    def fd(x: torch.Tensor, y: torch.Tensor) -> float:
        return round(frechet_distance(x, y, features, batch_size=batch_size), 4)

    floor = fd(references[a], references[b])
    return {
        "generated": fd(references, generated),
        "random_unet": fd(references, random_covers),
        "generated_half": fd(references[b], generated[a]),
        "random_unet_half": fd(references[b], random_covers[a]),
        "floor_reference_halves": floor,
        "n_full": n,
        "n_half": half,
        "feature_dim": features.num_features,
        "note": FD_BIAS_NOTE.format(n=n, d=features.num_features, floor=floor),
    }


def genre_figures(
    clip: CLIPModel, processor: CLIPProcessor, items: pd.DataFrame, covers: dict[str, torch.Tensor]
) -> dict[str, object]:
    """Zero-shot primary-genre accuracy (and caption retrieval R@1) of the mini CLIP on each cover set."""
    out: dict[str, object] = {}
    for name, images in covers.items():
        res = evaluate_clip(clip, processor, items, images=[to_pil(c) for c in images])
        out[name] = res["genre_accuracy"]
        out[f"{name}_caption_r1"] = res["i2t_r1"]
        chance = res
    out |= {
        "chance_majority": chance["genre_chance_majority"],
        "chance_uniform": chance["genre_chance_uniform"],
        "caption_r1_chance": chance["chance_r1"],
        "n_genres": chance["n_genres"],
    }
    return out


def sample_grid(
    references: torch.Tensor, generated: torch.Tensor, random_covers: torch.Tensor, n: int = 16, cols: int = 4
) -> Image.Image:
    """A grid of up to `n` items, each a triplet reference | generated | random UNet, under a header row."""
    n = min(n, len(references))
    size = references.shape[-1]
    rows = max(1, -(-n // cols))
    cols = min(cols, n)
    header, gap = 14, 4
    cell_w = 3 * size + gap
    sheet = Image.new("RGB", (cols * cell_w, header + rows * (size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c in range(cols):
        for k, label in enumerate(("ref", "gen", "rand")):
            draw.text((c * cell_w + k * size + 2, 1), label, fill="black")
    for i in range(n):
        x0, y0 = (i % cols) * cell_w, header + (i // cols) * (size + gap)
        for k, images in enumerate((references, generated, random_covers)):
            sheet.paste(to_pil(images[i]), (x0 + k * size, y0))
    return sheet


def evaluate_mini(
    backbone_dir: Path,
    clip_dir: Path,
    items: pd.DataFrame,
    *,
    cache_dir: Path,
    num_inference_steps: int = 15,
    guidance_scale: float = 7.0,
    seed: int = 0,
    max_items: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    out_dir: Path | None = None,
) -> dict[str, object]:
    """Measure the backbone at `backbone_dir` on the held-out items of `items` (see the module docstring).

    Returns a JSON-able dict with `fd_miniclip`, `genre_accuracy`, `vae`, `n_items`, `settings`, `seconds`;
    with `out_dir`, also writes `mini_eval_samples.png` there (reference | generated | random UNet).
    """
    if num_inference_steps < 1 or batch_size < 1:
        raise ValueError(
            f"num_inference_steps and batch_size must be >= 1, got {num_inference_steps}, {batch_size}"
        )
    if max_items is not None and max_items < 4:
        raise ValueError(f"max_items must be >= 4 (two halves of >= 2 covers for {FD_NAME}), got {max_items}")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    items = items.reset_index(drop=True)
    rows = held_out_rows(len(items))[:max_items]
    if len(rows) < 4:
        raise ValueError(f"{len(rows)} held-out items: {FD_NAME} halves need at least 4")
    held = items.iloc[rows].reset_index(drop=True)

    unet, vae, text_encoder, tokenizer, scheduler = load_backbone(str(backbone_dir))
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    size = int(unet.config.sample_size) * vae_scale_factor(vae)
    references = render_cover_cache(items, Path(cache_dir), size, COVER_VARIANTS, progress=progress)
    references = references[torch.from_numpy(rows), 0]  # (N, 3, S, S) uint8
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    vae_result = vae_reconstruction(vae, references, batch_size)
    timings["vae"] = time.perf_counter() - t

    prompts = [
        item_text(str(title), g, 0) for title, g in zip(held["title"], items_genres(held), strict=True)
    ]
    seeds = [seed * SEED_STRIDE + int(r) for r in rows]
    gen_kwargs = {
        "size": size,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "batch_size": batch_size,
        "progress": progress,
    }
    t = time.perf_counter()
    pipe = build_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    generated = generate_covers(pipe, prompts, seeds, desc="generate (mini UNet)", **gen_kwargs)
    timings["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    pipe = build_pipeline(random_unet(unet, RANDOM_UNET_SEED + seed), vae, text_encoder, tokenizer, scheduler)
    random_covers = generate_covers(pipe, prompts, seeds, desc="generate (random UNet)", **gen_kwargs)
    timings["generate_random_unet"] = time.perf_counter() - t

    t = time.perf_counter()
    image_processor = processor.image_processor
    features = ClipImageFeatures(clip, image_processor.image_mean, image_processor.image_std)
    fd_result = fd_figures(references, generated, random_covers, features, seed, batch_size)
    covers = {"generated": generated, "reference": references, "random_unet": random_covers}
    genre_result = genre_figures(clip, processor, held, covers)
    timings["measure"] = time.perf_counter() - t

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(out_dir) / SAMPLES_NAME) as tmp:
            sample_grid(references, generated, random_covers).save(tmp, format="PNG")

    from icg.machine import machine

    return {
        "fd_miniclip": fd_result,
        "genre_accuracy": genre_result,
        "vae": vae_result,
        "n_items": len(rows),
        "settings": {
            "backbone": str(backbone_dir),
            "clip": str(clip_dir),
            "items": "held-out (val + test) of split_items({}, {})".format(
                len(items), ", ".join(f"{k}={v}" for k, v in SPLIT.items())
            ),
            "prompt": "item_text(title, genres, 0)",
            "image_size": size,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "scheduler": "DDIMScheduler",
            "seed": seed,
            "seeds": f"item at row r: {seed} * {SEED_STRIDE} + r",
            "random_unet_seed": RANDOM_UNET_SEED + seed,
            "max_items": max_items,
            "batch_size": batch_size,
            "machine": machine(),
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_by_stage": {k: round(v, 1) for k, v in timings.items()},
    }


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mini_report_markdown(result: dict) -> str:
    """The report as Markdown: one table, each measured figure beside its floor, ceiling or chance."""
    fd, genre, vae, s = result["fd_miniclip"], result["genre_accuracy"], result["vae"], result["settings"]
    half, full = fd["n_half"], fd["n_full"]
    factor = vae["downsample_factor"]
    lines = [
        "# Mini backbone quality",
        "",
        f"{result['n_items']} held-out items, {s['image_size']}² px, DDIM {s['num_inference_steps']} steps, "
        f"guidance {s['guidance_scale']}, seed {s['seed']}; prompt 'title, genres movie'.",
        "",
        "| figure | mini backbone | floor / baseline | ceiling: random UNet | chance |",
        "|---|---|---|---|---|",
        f"| {FD_NAME} ↓, halves ({half} vs {half} disjoint items) | {_fmt(fd['generated_half'])} "
        f"| {_fmt(fd['floor_reference_halves'])} (reference vs reference) "
        f"| {_fmt(fd['random_unet_half'])} | – |",
        f"| {FD_NAME} ↓, all ({full} vs {full} references) | {_fmt(fd['generated'])} | – "
        f"| {_fmt(fd['random_unet'])} | – |",
        f"| zero-shot primary-genre accuracy ↑ (mini CLIP) | {_fmt(genre['generated'])} "
        f"| {_fmt(genre['reference'])} (reference covers) | {_fmt(genre['random_unet'])} "
        f"| {_fmt(genre['chance_majority'])} majority, {_fmt(genre['chance_uniform'])} uniform "
        f"({genre['n_genres']} genres) |",
        f"| caption retrieval R@1 ↑ (mini CLIP, among {result['n_items']}) | "
        f"{_fmt(genre['generated_caption_r1'])} | {_fmt(genre['reference_caption_r1'])} (reference covers) "
        f"| {_fmt(genre['random_unet_caption_r1'])} | {_fmt(genre['caption_r1_chance'])} |",
        f"| VAE PSNR ↑ (dB) | {_fmt(vae['psnr'], 2)} | {_fmt(vae['bicubic_psnr'], 2)} (bicubic ÷{factor}) "
        "| – | – |",
        f"| VAE SSIM ↑ | {_fmt(vae['ssim'])} | {_fmt(vae['bicubic_ssim'])} (bicubic ÷{factor}) | – | – |",
        "",
        f"- {fd['note']}",
        f"- {FD_NAME} is the Fréchet distance on the mini CLIP's {fd['feature_dim']}-d image embeddings "
        "in place of Inception-v3 features: its scale is its own.",
        f"- VAE latents {'×'.join(map(str, vae['latent_shape']))}; the bicubic baseline keeps 3 channels at "
        "the same spatial size.",
    ]
    m = s.get("machine", {})
    if m:
        lines.append(
            f"- machine: {m.get('processor')}, {m.get('cpu_count')} cores, torch {m.get('torch')} with "
            f"{m.get('torch_threads')} threads; {result['seconds']} s."
        )
    if "command" in result:
        lines.append(f"- command: `{result['command']}`")
    return "\n".join(lines) + "\n"
