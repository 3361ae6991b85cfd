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
- Does the cover follow its prompt (issue 17, item 3)?
  - prompt swap: each item again from the same noise, its genre words replaced by one other genre (seeded,
    uniform among the genres it does not have) → share of covers the mini CLIP now calls that new genre,
    beside 1/#genres and beside the proper baseline: how often the unswapped cover is already called the
    new genre (exact McNemar on the paired outcomes). Reference covers re-rendered with the swapped genre
    give what a cover that follows its genre scores under this CLIP.
  - guidance effect: zero-shot genre accuracy of the same items and seeds at guidance 1 (no classifier-free
    guidance) vs the evaluation's guidance, paired; exact McNemar test (two-sided binomial sign test on the
    discordant pairs).
  - item retrieval: each generated cover ranks the held-out reference covers by mini-CLIP image-embedding
    cosine → R@1, R@10 of its own item, beside k/N, beside a genre-only oracle (a cover that carries its
    primary genre and nothing else of its item) and beside the references' own figure: the renderer's
    variant 1 of each item (another composition of the same title, genres, year) retrieving variant 0.
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
from scipy.stats import binomtest
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import atomic_path
from icg.data.captions import genre_prompt, item_text
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import items_genres, render_cover
from icg.data.pixels import to_pil
from icg.data.splits import split_items
from icg.evaluation.fd import FD_NAME, ClipImageFeatures, frechet_distance
from icg.loading import load_backbone
from icg.presets_spec import GenerationConfig
from icg.training.clip_data import embed_images, embed_texts, evaluate_clip

logger = logging.getLogger(__name__)

SAMPLES_NAME = "mini_eval_samples.png"
SPLIT = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}  # the mini CLIP's split, shared by the mini
COVER_VARIANTS = 4  # the mini CLIP's cover cache (variant 0 = reference): the same file is reused
SEED_STRIDE = 1_000_000  # item at row r of the items table is generated with seed * SEED_STRIDE + r
RANDOM_UNET_SEED = 7919  # + seed: apart from 0, the seed a trainer (or a test's dummy UNet) may start from
SWAP_SEED = 104_729  # + seed: the draw of each item's swapped genre
RETRIEVAL_KS = (1, 10)
REFERENCE_QUERY_VARIANT = 1  # the references' own item-retrieval figure: variant 1 queries variant 0
DEFAULTS = GenerationConfig()  # the SD1.5 generation defaults; `icg evaluate mini` passes the preset's
LOW_GUIDANCE = 1.0  # diffusers skips classifier-free guidance at 1: the conditional prediction alone
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


# ------------------------------------------------------------------------------------------- prompt following
def genre_candidates(tuples: list[tuple[str, ...]]) -> list[str]:
    """The zero-shot genres: every genre of the items, sorted (what `evaluate_clip` uses by default)."""
    return sorted({g for t in tuples for g in t})


@torch.no_grad()
def zero_shot_genres(
    clip: CLIPModel,
    processor: CLIPProcessor,
    images: torch.Tensor,
    candidates: list[str],
    batch_size: int = 256,
) -> list[str]:
    """The mini CLIP's zero-shot genre of each (N, 3, H, W) uint8 cover among `candidates` (processor)."""
    img = embed_images(clip, processor, [to_pil(c) for c in images], batch_size)  # (N, P)
    prompts = embed_texts(clip, processor, [genre_prompt(g) for g in candidates], batch_size)  # (G, P)
    return [candidates[i] for i in (img @ prompts.T).argmax(dim=1).tolist()]


def swap_targets(tuples: list[tuple[str, ...]], candidates: list[str], seed: int) -> list[str]:
    """For each item one genre it does not have, uniform among `candidates` ('unknown' excluded), seeded."""
    rng = np.random.default_rng([seed, SWAP_SEED])
    out = []
    for genres in tuples:
        options = [g for g in candidates if g not in genres and g != "unknown"]
        if not options:
            raise ValueError(f"no genre to swap {genres} to among {candidates}")
        out.append(options[int(rng.integers(len(options)))])
    return out


def exact_mcnemar(first: np.ndarray, second: np.ndarray) -> dict[str, object]:
    """Exact McNemar test of paired booleans: two-sided binomial sign test on the discordant pairs.

    `first_only` pairs are True in `first` only, `second_only` in `second` only; p = 1 if none.
    """
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"paired outcomes must be two 1-d arrays of one length, got {first.shape}, {second.shape}"
        )
    first_only, second_only = int((first & ~second).sum()), int((~first & second).sum())
    n = first_only + second_only
    p = 1.0 if n == 0 else float(binomtest(first_only, n, 0.5, alternative="two-sided").pvalue)
    return {
        "first_only": first_only,
        "second_only": second_only,
        "p_value": p,
        "test": "exact McNemar (two-sided binomial sign test on discordant pairs)",
    }


def prompt_swap_figures(
    new_genres: list[str],
    primary: list[str],
    swapped: list[str],
    unswapped: list[str],
    reference_swapped: list[str],
    reference: list[str],
    n_genres: int,
) -> dict[str, object]:
    """Prompt-swap figures from zero-shot predictions (all lists over the same items, in one order).

    `swapped`/`unswapped`: predictions on covers generated from the swapped/original prompt with the same
    noise; `reference_swapped`/`reference`: on reference covers rendered with the swapped/original genres.
    """
    n = len(new_genres)
    if not n or any(len(x) != n for x in (primary, swapped, unswapped, reference_swapped, reference)):
        raise ValueError("prompt-swap predictions must be non-empty lists of one length")
    new = np.array(new_genres)
    follows = np.array(swapped) == new  # (N,) the swapped cover is called the new genre
    already = np.array(unswapped) == new  # (N,) the unswapped cover is already called the new genre
    ref_follows = np.array(reference_swapped) == new
    return {
        "follows_new_genre": round(float(follows.mean()), 4),
        "baseline_unswapped_is_new_genre": round(float(already.mean()), 4),
        "chance_uniform": round(1 / n_genres, 4),
        "keeps_original_genre": round(float((np.array(swapped) == np.array(primary)).mean()), 4),
        "unswapped_original_genre": round(float((np.array(unswapped) == np.array(primary)).mean()), 4),
        "reference_follows_new_genre": round(float(ref_follows.mean()), 4),
        "reference_baseline_is_new_genre": round(float((np.array(reference) == new).mean()), 4),
        "paired_test": exact_mcnemar(follows, already),
        "n_items": n,
        "n_genres": n_genres,
    }


def guidance_figures(
    low: list[str], high: list[str], primary: list[str], low_scale: float, high_scale: float
) -> dict[str, object]:
    """Zero-shot genre accuracy at two guidance scales on the same items and seeds, paired (exact McNemar)."""
    if not primary or len(low) != len(primary) or len(high) != len(primary):
        raise ValueError("guidance predictions must be non-empty lists of one length")
    truth = np.array(primary)
    hit_low, hit_high = np.array(low) == truth, np.array(high) == truth
    test = exact_mcnemar(hit_high, hit_low)
    return {
        "low_guidance": low_scale,
        "high_guidance": high_scale,
        "accuracy_low": round(float(hit_low.mean()), 4),
        "accuracy_high": round(float(hit_high.mean()), 4),
        "only_high_correct": test["first_only"],
        "only_low_correct": test["second_only"],
        "p_value": test["p_value"],
        "test": test["test"],
        "n_items": len(primary),
    }


def recall_at_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> float:
    """Share of queries i whose key i is among their k most cosine-similar keys; ties count against it."""
    if queries.shape != keys.shape or queries.dim() != 2:
        raise ValueError(f"queries and keys must be (N, D) of one shape, got {queries.shape}, {keys.shape}")
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # (N, N)
    rivals = (sims >= sims.diagonal()[:, None]).sum(dim=1) - 1  # (N,) other keys at least as similar
    return float((rivals < k).float().mean())


def genre_oracle_recall(primary: list[str], k: int) -> float:
    """R@k of a cover that carries its primary genre and nothing else: random among same-genre references."""
    counts = pd.Series(primary).map(pd.Series(primary).value_counts()).to_numpy(dtype=float)  # (N,)
    return float(np.mean(np.minimum(1.0, k / counts)))


@torch.no_grad()
def item_retrieval_figures(
    features: ClipImageFeatures,
    references: torch.Tensor,
    queries: dict[str, torch.Tensor],
    primary: list[str],
    batch_size: int = 256,
    ks: tuple[int, ...] = RETRIEVAL_KS,
) -> dict[str, object]:
    """R@k of each query cover set retrieving its own item among `references` (row i ↔ item i)."""

    def embed(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([features(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])

    keys = embed(references)  # (N, P)
    n = len(references)
    out: dict[str, object] = {}
    for name, images in queries.items():
        emb = embed(images)
        for k in ks:
            out[f"{name}_r{k}"] = round(recall_at_k(emb, keys, k), 4)
    for k in ks:
        out[f"chance_r{k}"] = round(min(k, n) / n, 4)
        out[f"genre_oracle_r{k}"] = round(genre_oracle_recall(primary, k), 4)
    out["n_items"] = n
    return out


def render_references(items: pd.DataFrame, genres: list[tuple[str, ...]], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 variant-0 reference covers of `items`, drawn with `genres` for theirs."""
    years = items["year"] if "year" in items.columns else pd.Series([None] * len(items))
    covers = torch.empty((len(items), 3, size, size), dtype=torch.uint8)  # host buffer of rendered covers
    rows = zip(items["item_id"], items["title"], genres, years, strict=True)
    for n, (item_id, title, g, year) in enumerate(rows):
        year = None if year is None or pd.isna(year) else int(year)
        title = "" if pd.isna(title) else str(title)
        img = render_cover(str(item_id), title, g, year, size, 0)
        covers[n] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return covers


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
    num_inference_steps: int = DEFAULTS.num_inference_steps,
    guidance_scale: float = DEFAULTS.guidance_scale,
    seed: int = 0,
    max_items: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    out_dir: Path | None = None,
) -> dict[str, object]:
    """Measure the backbone at `backbone_dir` on the held-out items of `items` (see the module docstring).

    Returns a JSON-able dict with `fd_miniclip`, `genre_accuracy`, `prompt_swap`, `guidance_effect`,
    `item_retrieval`, `vae`, `n_items`, `settings`, `seconds`; `max_items` keeps the first N held-out rows;
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
    cache = render_cover_cache(items, Path(cache_dir), size, COVER_VARIANTS, progress=progress)
    references = cache[torch.from_numpy(rows), 0]  # (N, 3, S, S) uint8
    reference_queries = cache[torch.from_numpy(rows), REFERENCE_QUERY_VARIANT]  # (N, 3, S, S) uint8
    del cache
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
    mini_pipe = build_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    generated = generate_covers(mini_pipe, prompts, seeds, desc="generate (mini UNet)", **gen_kwargs)
    timings["generate"] = time.perf_counter() - t

    # prompt swap: the same seeds, each item's genres replaced by one genre it does not have
    tuples = items_genres(held)
    primary = [g[0] for g in tuples]
    candidates = genre_candidates(tuples)
    new_genres = swap_targets(tuples, candidates, seed)
    swap_prompts = [
        item_text(str(title), (g,), 0) for title, g in zip(held["title"], new_genres, strict=True)
    ]
    t = time.perf_counter()
    swapped = generate_covers(mini_pipe, swap_prompts, seeds, desc="generate (swapped genre)", **gen_kwargs)
    timings["generate_swapped"] = time.perf_counter() - t
    t = time.perf_counter()
    low_guidance = generate_covers(
        mini_pipe,
        prompts,
        seeds,
        desc=f"generate (guidance {LOW_GUIDANCE})",
        **(gen_kwargs | {"guidance_scale": LOW_GUIDANCE}),
    )
    timings["generate_low_guidance"] = time.perf_counter() - t
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
    reference_swapped = render_references(held, [(g,) for g in new_genres], size)
    predict = {
        name: zero_shot_genres(clip, processor, images, candidates, batch_size)
        for name, images in {
            "generated": generated,
            "swapped": swapped,
            "low_guidance": low_guidance,
            "reference": references,
            "reference_swapped": reference_swapped,
        }.items()
    }
    swap_result = prompt_swap_figures(
        new_genres,
        primary,
        predict["swapped"],
        predict["generated"],
        predict["reference_swapped"],
        predict["reference"],
        len(candidates),
    )
    guidance_result = guidance_figures(
        predict["low_guidance"], predict["generated"], primary, LOW_GUIDANCE, guidance_scale
    )
    retrieval_result = item_retrieval_figures(
        features,
        references,
        {"generated": generated, "random_unet": random_covers, "reference_variant": reference_queries},
        primary,
        batch_size,
    )
    timings["measure"] = time.perf_counter() - t

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(out_dir) / SAMPLES_NAME) as tmp:
            sample_grid(references, generated, random_covers).save(tmp, format="PNG")

    from icg.machine import machine

    return {
        "fd_miniclip": fd_result,
        "genre_accuracy": genre_result,
        "prompt_swap": swap_result,
        "guidance_effect": guidance_result,
        "item_retrieval": retrieval_result | {"reference_query_variant": REFERENCE_QUERY_VARIANT},
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
            "swap": "each item's genres → one genre it lacks, uniform ('unknown' excluded), "
            f"np.random.default_rng([{seed}, {SWAP_SEED}]); prompt item_text(title, (new genre,), 0)",
            "low_guidance": LOW_GUIDANCE,
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
        f"{result['n_items']} held-out items"
        + (f" (the first {s['max_items']} by row, --max-items)" if s.get("max_items") else "")
        + f", {s['image_size']}² px, DDIM {s['num_inference_steps']} steps, "
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
        *prompt_following_markdown(result),
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


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def prompt_following_markdown(result: dict) -> list[str]:
    """Prompt-following table (prompt swap, guidance effect, item retrieval) and notes; [] if absent."""
    if not {"prompt_swap", "guidance_effect", "item_retrieval"} <= set(result):
        return []
    swap, guide, ret = result["prompt_swap"], result["guidance_effect"], result["item_retrieval"]
    n = ret["n_items"]
    test = swap["paired_test"]
    return [
        "## Does the cover follow its prompt?",
        "",
        "| figure | mini backbone | baseline | reference covers | ceiling: random UNet | chance |",
        "|---|---|---|---|---|---|",
        f"| prompt swap: cover called the swapped-in genre ↑ | {_fmt(swap['follows_new_genre'])} "
        f"| {_fmt(swap['baseline_unswapped_is_new_genre'])} (unswapped cover called it; "
        f"p = {_p(test['p_value'])}, {test['first_only']} vs {test['second_only']} discordant) "
        f"| {_fmt(swap['reference_follows_new_genre'])} (re-rendered with it; "
        f"{_fmt(swap['reference_baseline_is_new_genre'])} unswapped) | – "
        f"| {_fmt(swap['chance_uniform'])} uniform ({swap['n_genres']} genres) |",
        f"| prompt swap: cover still called its own primary genre | {_fmt(swap['keeps_original_genre'])} "
        f"| {_fmt(swap['unswapped_original_genre'])} (unswapped) | – | – | – |",
        f"| genre accuracy at guidance {guide['high_guidance']:g} vs {guide['low_guidance']:g} ↑ "
        f"| {_fmt(guide['accuracy_high'])} vs {_fmt(guide['accuracy_low'])} "
        f"(p = {_p(guide['p_value'])}; {guide['only_high_correct']} items right only at "
        f"{guide['high_guidance']:g}, {guide['only_low_correct']} only at {guide['low_guidance']:g}) "
        "| – | – | – | – |",
        f"| item retrieval R@1 ↑ (among {n} references) | {_fmt(ret['generated_r1'])} "
        f"| {_fmt(ret['genre_oracle_r1'])} (genre-only oracle) | {_fmt(ret['reference_variant_r1'])} "
        f"(variant {ret.get('reference_query_variant', 1)}) | {_fmt(ret['random_unet_r1'])} "
        f"| {_fmt(ret['chance_r1'])} |",
        f"| item retrieval R@10 ↑ (among {n} references) | {_fmt(ret['generated_r10'])} "
        f"| {_fmt(ret['genre_oracle_r10'])} (genre-only oracle) | {_fmt(ret['reference_variant_r10'])} "
        f"(variant {ret.get('reference_query_variant', 1)}) | {_fmt(ret['random_unet_r10'])} "
        f"| {_fmt(ret['chance_r10'])} |",
        "",
        "- Prompt swap: each item generated again from the same noise with its genres replaced by one genre "
        "it does not have (seeded, uniform, 'unknown' excluded); prompt 'title, a {new genre} movie'. "
        "The proper baseline is how often the unswapped cover is already called the new genre; "
        "p is the exact McNemar test (two-sided binomial sign test on discordant pairs) of swapped vs "
        "unswapped. 'Reference covers' re-renders each item's reference with the swapped genre: what a "
        "cover that follows it scores.",
        f"- Guidance: the same items, prompts and seeds at guidance {guide['low_guidance']:g} (no classifier-"
        f"free guidance) and {guide['high_guidance']:g}; p is the exact McNemar test (two-sided) on the "
        "paired correct/incorrect outcomes.",
        "- Item retrieval: each cover ranks the held-out variant-0 reference covers by mini-CLIP "
        "image-embedding cosine (ties count against it); R@k is the share whose own item is in the top k. "
        "The references' own figure queries with the renderer's variant "
        f"{ret.get('reference_query_variant', 1)} "
        "of each item (another composition of the same title, genres and year). The genre-only oracle ranks "
        "its item at random among the items of the same primary genre: a cover that carries its genre and "
        "nothing else of its item.",
        "",
    ]
