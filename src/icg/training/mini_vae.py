"""The mini preset's VAE: a small diffusers `AutoencoderKL` trained to reconstruct rendered covers.

Stable Diffusion's KL-f8 autoencoder, scaled down: `len(block_out_channels) - 1` downsamples (64² px →
16² × 4 latents by default), trained on every variant of the train items' rendered covers in [-1, 1].
Loss: per-pixel L1 (+ MSE, which is what PSNR measures) of the reconstruction from a *sampled* latent, plus
`kl_weight` × the posterior's KL to N(0, I) with SD's weighting (1e-6 against the rec loss summed over
pixels; here both are divided by the pixel count). SD's VAE also had an LPIPS and a patch-GAN term; the mini
preset has no pretrained perceptual network to measure LPIPS with, so both are left out: reconstructions are
blurrier than a GAN-trained VAE's, and the PSNR/SSIM reported beside a bicubic baseline say by how much.
No augmentation: the covers are the whole distribution the mini UNet will see. AdamW, linear warmup, cosine
decay; convolutions run under bf16 autocast by default (≈1.4× faster on a CPU with AVX512-BF16; weights,
norms and the loss stay fp32). Defaults: 5 epochs of 85 steps × 16 covers, about 9 minutes on one thread of
a 2-core CPU shared with other jobs (90-110 s an epoch, ≈70 ms a cover).

After training, `scaling_factor = 1 / std` of the posterior means of (a seeded sample of) the training covers
is written into the model config, as SD's 0.18215 came about, so `AutoencoderKL.from_pretrained(out_dir)` is
ready for latent diffusion: `latent_dist.mean * vae.config.scaling_factor` has unit variance.

Resume: after every epoch `checkpoint.pt` (model, optimizer, lr schedule, RNG states, history) is replaced
atomically; a later call with the same items and config continues from the last finished epoch and ends with
bit-identical weights to an uninterrupted run (same machine and thread count). `max_minutes` stops between
epochs. Output (`out_dir`): config.json + diffusion_pytorch_model.safetensors, mini_vae.json, metrics.json,
checkpoint.pt, cache/ (rendered covers, unless `cache_dir` is given).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from icg.atomic import write_text_atomic
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import check_size
from icg.modules import resolve_device
from icg.training import loop

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "mini_vae.json"
_CHECKPOINT_FORMAT = "icg.training.mini_vae.checkpoint/1"
_EVAL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class MiniVaeConfig(loop.JsonConfig):
    """Architecture, data and optimisation of one mini-VAE run (mini_vae.json beside the weights)."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # len - 1 downsamples: 64 px → 16² latents
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16  # must divide every entry of block_out_channels
    variants: int = 4  # rendered compositions per item (0 = reference cover); training uses all
    epochs: int = 10  # an epoch visits every train item once per pass, at a random variant
    passes_per_epoch: int = 1  # > 1 on a GPU: per-epoch validation and checkpoint would dominate
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    kl_weight: float = 1e-6  # SD KL-f8's, relative to the reconstruction loss summed over pixels
    l1_weight: float = 1.0  # the per-pixel L1 term beside the MSE term
    bf16_autocast: bool = True
    scale_images: int = 1024  # (item, variant) training covers the scaling factor is measured on
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_items: int | None = None  # train on the first N items of the table only (tests, quick looks)
    seed: int = 0

    def __post_init__(self) -> None:
        channels = tuple(self.block_out_channels)
        object.__setattr__(self, "block_out_channels", channels)  # JSON gives a list
        positive = ("layers_per_block", "latent_channels", "norm_num_groups", "variants", "epochs")
        positive += ("passes_per_epoch",)
        positive += ("batch_size", "scale_images")
        loop.check_positive_ints(self, positive)
        check_size(self.image_size)  # the renderer's range, 64-512 px
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"block_out_channels must be positive integers, got {channels!r}")
        factor = 2 ** (len(channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} does not divide by the VAE's factor {factor}")
        if any(c % self.norm_num_groups for c in channels):
            raise ValueError(
                f"norm_num_groups {self.norm_num_groups} must divide every block_out_channels {channels}"
            )
        if (
            self.lr <= 0
            or self.weight_decay < 0
            or not 0.0 <= self.warmup_fraction < 1.0
            or self.grad_clip <= 0
            or self.kl_weight < 0
            or self.l1_weight < 0
        ):
            raise ValueError(
                "lr and grad_clip must be > 0, weight_decay, kl_weight and l1_weight >= 0, "
                "warmup_fraction in [0, 1)"
            )
        loop.check_max_items(self)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.block_out_channels) - 1)


def build_vae(config: MiniVaeConfig) -> AutoencoderKL:
    """A randomly initialised `AutoencoderKL` of the config's size (SD's block types, scaling_factor 1)."""
    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.image_size,
        scaling_factor=1.0,
    )


def to_pixels(covers: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 → float in [-1, 1], what diffusers' VaeImageProcessor hands a VAE."""
    return covers.float() / 127.5 - 1.0


@torch.no_grad()
def evaluate_vae(vae: AutoencoderKL, covers: torch.Tensor) -> dict[str, float | int]:
    """Reconstruction PSNR (dB) and SSIM of (N, 3, S, S) uint8 covers, beside a bicubic baseline.

    The VAE decodes the posterior mean; the baseline shrinks the RGB cover bicubically (antialiased) to the
    latent side and back up, i.e. the same spatial compression with 3 instead of latent_channels numbers
    per position. Both on [0, 1] with data_range 1.0; PSNR is the mean of per-image PSNRs (> 100 dB for an
    exact copy), SSIM torchmetrics' mean over the images.
    """
    if covers.dtype != torch.uint8 or covers.ndim != 4 or covers.shape[1] != 3 or len(covers) < 1:
        raise ValueError(
            f"covers must be (N, 3, S, S) uint8 with N >= 1, got {tuple(covers.shape)} {covers.dtype}"
        )
    was_training = vae.training
    vae.eval()
    weight = next(vae.parameters())
    recs, lows = [], []
    try:
        for start in range(0, len(covers), _EVAL_BATCH):
            pixels = to_pixels(covers[start : start + _EVAL_BATCH])  # (b, 3, S, S) host
            latents = vae.encode(pixels.to(weight.device, weight.dtype)).latent_dist.mean  # (b, C, S/f, S/f)
            recs.append(((vae.decode(latents).sample.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0))
            side = tuple(latents.shape[-2:])
            small = F.interpolate((pixels + 1.0) / 2.0, size=side, mode="bicubic", antialias=True)
            lows.append(F.interpolate(small, size=pixels.shape[-2:], mode="bicubic").clamp(0.0, 1.0))
    finally:
        vae.train(was_training)
    target = covers.float() / 255.0
    rec, low = torch.cat(recs), torch.cat(lows)

    def psnr(pred: torch.Tensor) -> float:
        return round(float(peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3))), 3)

    def ssim(pred: torch.Tensor) -> float:
        return round(float(structural_similarity_index_measure(pred, target, data_range=1.0)), 4)

    return {
        "psnr": psnr(rec),
        "ssim": ssim(rec),
        "baseline_psnr": psnr(low),
        "baseline_ssim": ssim(low),
        "n_items": len(covers),
    }


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, covers: torch.Tensor) -> dict[str, object]:
    """Std (all elements) and per-channel mean/std of the posterior means of (N, 3, S, S) uint8 covers."""
    vae.eval()
    device = next(vae.parameters()).device
    means = torch.cat(
        [
            vae.encode(to_pixels(covers[s : s + _EVAL_BATCH]).to(device)).latent_dist.mean.float().cpu()
            for s in range(0, len(covers), _EVAL_BATCH)
        ]
    )  # (N, C, h, w)
    per_channel = means.transpose(0, 1).flatten(1)  # (C, N·h·w)
    return {
        "std": float(means.std()),
        "mean": float(means.mean()),
        "channel_mean": [round(float(v), 4) for v in per_channel.mean(1)],
        "channel_std": [round(float(v), 4) for v in per_channel.std(1)],
    }


def _optimizer(model: AutoencoderKL, config: MiniVaeConfig, total_steps: int):
    """AdamW (decay on ≥2-D weights only), linear warmup, then cosine decay to 0."""
    return loop.adamw_warmup_cosine(model.parameters(), config, total_steps)


def vae_loss(vae: AutoencoderKL, pixels: torch.Tensor, config: MiniVaeConfig) -> dict[str, torch.Tensor]:
    """Loss of one batch of (B, 3, S, S) pixels in [-1, 1]: L1 + MSE per pixel + KL at SD's weighting."""
    autocast = torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast)
    with autocast:
        moments = vae.encode(pixels).latent_dist.parameters  # (B, 2C, h, w)
    posterior = DiagonalGaussianDistribution(moments.float())  # sample and KL in fp32
    with autocast:
        # posterior.sample() on the host RNG (what it draws from on a CPU) on every device: the checkpoint
        # holds that RNG's state, not a GPU's
        draw = torch.randn(posterior.mean.shape).to(posterior.mean.device)
        rec = vae.decode(posterior.mean + posterior.std * draw).sample  # (B, 3, S, S)
    err = rec.float() - pixels
    l1, mse = err.abs().mean(), err.square().mean()
    kl = posterior.kl().mean()  # summed over the latent per image, as SD's
    loss = config.l1_weight * l1 + mse + config.kl_weight * kl / pixels[0].numel()
    return {"loss": loss, "l1": l1, "mse": mse, "kl": kl}


def train_epoch(
    vae: AutoencoderKL,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: torch.Generator,
    covers: torch.Tensor,
    train_rows: np.ndarray,
    config: MiniVaeConfig,
    epoch: int,
    progress: bool,
) -> dict[str, float]:
    """Every train item once per pass, at a random variant, in batches (last may be short); mean losses."""
    vae.train()
    plan = []  # (item rows, variants) per batch: the host draws of every pass, seeded
    for _ in range(config.passes_per_epoch):
        order = torch.randperm(len(train_rows), generator=sampler)  # (N_train,)
        variant = torch.randint(0, config.variants, (len(train_rows),), generator=sampler)
        for start in range(0, len(train_rows), config.batch_size):
            pos = order[start : start + config.batch_size]
            plan.append((torch.from_numpy(train_rows[pos.numpy()]), variant[pos]))
    device = next(vae.parameters()).device
    sums = {key: torch.zeros((), device=device) for key in ("loss", "l1", "mse", "kl")}  # read once an epoch
    bar = tqdm(
        plan, desc=f"vae epoch {epoch + 1}/{config.epochs}", unit="step", disable=not progress, leave=False
    )
    for step, (rows, variants) in enumerate(bar):
        batch = covers[rows, variants]  # (B, 3, S, S) uint8 host
        parts = vae_loss(vae, to_pixels(batch.to(device)), config)
        loop.optimizer_step(parts["loss"], optimizer, scheduler, vae.parameters(), config.grad_clip)
        for key, value in parts.items():
            sums[key] += value.detach()
        if device.type == "cpu" or step % 50 == 0:  # a GPU reads the loss back rarely (no sync per step)
            bar.set_postfix(loss=f"{float(sums['loss']) / (step + 1):.4f}")
    return {key: round(float(value) / len(plan), 5) for key, value in sums.items()}


def train_mini_vae(
    items: pd.DataFrame,
    out_dir: str | Path,
    config: MiniVaeConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, object]:
    """Train the mini VAE on `items`' rendered covers, measure it on held-out items, save it; returns metrics.

    `device` ("cpu", "cuda", "auto") runs the VAE there; the covers stay on the host and every random draw
    on seeded host generators, so a run resumes bit-identically on the device type it started on (the
    device type is part of the checkpoint's fingerprint).

    `cache_dir` holds the rendered covers (default out_dir/cache; share the mini CLIP's to skip rendering).
    `threads` sets torch's intra-op threads for this call (restored afterwards); a resumed run must use the
    same count as the first one for bit-identical weights. A complete run with the same items and config is
    not redone (its metrics are returned).
    """
    config = config or MiniVaeConfig()
    loop.check_run_options(max_minutes, threads=threads)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    with loop.torch_threads(threads):
        return _train(items, out, config, cache, resume, progress, max_minutes, resolve_device(device))


def _train(
    items: pd.DataFrame,
    out: Path,
    config: MiniVaeConfig,
    cache: Path,
    resume: bool,
    progress: bool,
    max_minutes: float | None,
    device: torch.device,
) -> dict[str, object]:
    started, load_start = time.perf_counter(), os.getloadavg()
    items, split = loop.run_items(items, config, min_train=config.batch_size)
    n_train = len(split.train)
    # a CPU run keeps its fingerprint of before devices existed; another device type resumes only itself
    fingerprint = loop.items_fingerprint(items, config, *(() if device.type == "cpu" else (device.type,)))
    metrics_file = out / METRICS_NAME
    done = loop.finished_metrics(metrics_file, fingerprint, resume and (out / "config.json").is_file())
    if done is not None:
        logger.info("%s is complete; nothing to do", out)
        return done
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    state = loop.load_checkpoint(
        checkpoint, fingerprint, _CHECKPOINT_FORMAT, "mini-VAE", "items or config", resume=resume
    )

    covers = render_cover_cache(items, cache, config.image_size, config.variants, progress)  # (N, V, 3, S, S)
    val_covers = covers[split.val, 0]
    steps_per_epoch = math.ceil(n_train / config.batch_size) * config.passes_per_epoch

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(config.seed)
        vae = build_vae(config).to(device)
        optimizer, scheduler = _optimizer(vae, config, config.epochs * steps_per_epoch)
        sampler = torch.Generator().manual_seed(config.seed + 1)
        modules = {"model": vae, "optimizer": optimizer, "scheduler": scheduler}
        generators = {"sampler_rng": sampler}
        run = loop.EpochRun(logger, out, config.epochs, started, max_minutes)
        history = run.restore(state, modules, generators)
        for epoch in run:
            losses = train_epoch(
                vae, optimizer, scheduler, sampler, covers, split.train, config, epoch, progress
            )
            val = evaluate_vae(vae, val_covers)
            history.append({"epoch": epoch + 1, **losses, "val_psnr": val["psnr"], "val_ssim": val["ssim"]})
            logger.info("mini-VAE epoch %d/%d (%.0fs): %s", epoch + 1, config.epochs, run.lap(), history[-1])
            run.save(checkpoint, _CHECKPOINT_FORMAT, fingerprint, epoch + 1)
        # the scaling factor's sample: seeded, so a resumed run measures the same covers
        pairs = torch.randperm(
            n_train * config.variants, generator=torch.Generator().manual_seed(config.seed)
        )
        pairs = pairs[: config.scale_images]
        scale_covers = covers[
            torch.from_numpy(split.train)[pairs // config.variants], pairs % config.variants
        ]

    stats = latent_statistics(vae, scale_covers)
    scaling_factor = 1.0 / stats["std"]
    vae.register_to_config(scaling_factor=scaling_factor)
    test = evaluate_vae(vae, covers[split.test, 0])
    val = evaluate_vae(vae, val_covers)
    vae.save_pretrained(out)
    write_text_atomic(out / CONFIG_NAME, config.to_json())
    metrics = {
        **loop.split_sizes(items, split),
        **loop.epoch_counts(history, config.epochs),
        "test": test,
        "val": val,
        "scaling_factor": round(scaling_factor, 6),
        "latent_statistics": {**stats, "n_covers": len(scale_covers)},
        "latent_shape": [config.latent_channels, config.latent_size, config.latent_size],
        "parameters": sum(p.numel() for p in vae.parameters()),
        "device": str(device),
        **loop.run_seconds(started, run.seconds_before, load_start, threads_key="threads"),
        "fingerprint": fingerprint,
        "history": history,
        "config": dataclasses.asdict(config),
    }
    write_text_atomic(metrics_file, json.dumps(metrics, indent=2))
    logger.info(
        "mini-VAE test: PSNR %.2f dB, SSIM %.3f (bicubic to %d² and back: %.2f dB, %.3f); scaling %.4f",
        test["psnr"],
        test["ssim"],
        config.latent_size,
        test["baseline_psnr"],
        test["baseline_ssim"],
        scaling_factor,
    )
    return metrics
