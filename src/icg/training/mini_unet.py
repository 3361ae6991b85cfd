"""The mini preset's UNet: a small SD1.5-shaped `UNet2DConditionModel` trained on VAE latents of covers.

Conditioning is exactly the generation pipeline's: captions tokenized to `model_max_length` (padded,
truncated), the mini CLIP text tower's last hidden state, "" as the unconditional caption (drawn with
probability `caption_dropout`, so classifier-free guidance works). Captions mix the explicit-prompt teacher
(what the mini's context encoder writes at generation time) with the mini CLIP's templates. Noise schedule,
ε-prediction and `add_noise` are SD1.5's; a matching `DDIMScheduler` is saved for inference.

Speed: the VAE posterior (mean, std; × scaling_factor) of every (item, variant) cover and the hidden states of
every distinct caption are computed once and cached (fp16, atomic files); the loop only runs the UNet. Latents
are *sampled* from the cached posterior (mean + std·ε, like `latent_dist.sample()` in diffusers'
train_text_to_image): free once both are cached, and a little augmentation; held-out numbers use the mean.

Resume: `checkpoint.pt` (model, EMA, optimizer, lr schedule, RNG states, history) is replaced atomically after
every epoch; a re-run with the same items, config, VAE and CLIP ends bit-identical to a straight run (same
machine and thread count). `max_minutes` stops between epochs. Output: unet/ (EMA weights), scheduler/
(DDIM), mini_unet.json, metrics.json (train loss per epoch, held-out ε-MSE at fixed timesteps and noise),
checkpoint.pt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from icg.atomic import write_text_atomic
from icg.context.teacher import explicit_prompt_teacher
from icg.data.captions import TEXT_TEMPLATES, item_text
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import items_genres
from icg.errors import DataError, ICGError
from icg.modules import resolve_device
from icg.training import loop

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "mini_unet.json"
_CHECKPOINT_FORMAT = "icg.training.mini_unet.checkpoint/1"
_DOWN_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D"}
_UP_TYPES = {"CrossAttnUpBlock2D", "UpBlock2D"}
N_TEMPLATES = len(TEXT_TEMPLATES)  # caption columns 0..N-1 are templates, column N the teacher prompt


@dataclasses.dataclass(frozen=True)
class MiniUnetConfig(loop.JsonConfig):
    """Architecture, captions and optimisation of one mini-UNet run (mini_unet.json beside the weights)."""

    sample_size: int = 16  # latent side: 64 px covers through the VAE's factor 4
    in_channels: int = 4
    out_channels: int = 4
    # Timed on the shared 2-core box, 1 thread: (64, 128, 128) with 8 heads costs ~3x (32, 64, 128) with
    # 32-wide heads (most of it 16x16 self-attention with 8-wide heads), so the small one gets 3x the steps:
    # ~22 ms per sample under load 6, a 169-step epoch ~1.5 min + 7 s validation: 24 epochs ≈ 36 minutes.
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int | tuple[int, ...] = (1, 2, 4)  # heads per block (diffusers' historical name)
    norm_num_groups: int = 32
    cross_attention_dim: int | None = None  # None: the text encoder's hidden size (checked when given)
    caption_dropout: float = 0.1  # P(caption = "") for classifier-free guidance
    teacher_fraction: float = 0.5  # P(teacher prompt | kept); otherwise a uniform caption template
    sample_latents: bool = True
    # Min-SNR-γ loss weighting (Hang et al. 2023; diffusers' train_text_to_image `--snr_gamma`): ε-loss
    # weight min(SNR, γ)/SNR, so low-noise steps (where the caption hardly matters) weigh less; None: plain
    snr_gamma: float | None = None
    # training timesteps drawn uniformly from [low, high): a fine-tune can put every step where the cover's
    # layout and palette (hence its genre) are decided, the high-noise end; SD's is (0, 1000)
    timestep_range: tuple[int, int] = (0, 1000)
    # warm start: a saved UNet folder of the same architecture whose weights initialise the run (its files
    # are part of the run's fingerprint); None: random initialisation under `seed`
    init_unet: str | None = None
    bf16_autocast: bool = True  # on CUDA only: the CPU trains in fp32, as every CPU recipe so far
    variants: int = 4
    epochs: int = 24
    # shuffled passes over the (item, variant) pairs per epoch: on a GPU a pass takes a second or two, and
    # the per-epoch validation and checkpoint would otherwise cost more than the training
    passes_per_epoch: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    val_timesteps: tuple[int, ...] = (50, 200, 400, 600, 800, 950)
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_items: int | None = None  # the first N items only (tests, quick looks)

    def __post_init__(self) -> None:
        positive = ("sample_size", "in_channels", "out_channels", "layers_per_block", "norm_num_groups")
        loop.check_positive_ints(self, (*positive, "variants", "epochs", "batch_size", "passes_per_epoch"))
        depth = len(self.block_out_channels)
        if depth < 2 or len(self.down_block_types) != depth or len(self.up_block_types) != depth:
            raise ValueError(
                f"block_out_channels, down_block_types and up_block_types need the same length >= 2, got "
                f"{self.block_out_channels}, {self.down_block_types}, {self.up_block_types}"
            )
        if set(self.down_block_types) - _DOWN_TYPES or set(self.up_block_types) - _UP_TYPES:
            raise ValueError(f"block types must be among {sorted(_DOWN_TYPES | _UP_TYPES)}")
        if self.sample_size % 2 ** (depth - 1):
            raise ValueError(f"sample_size {self.sample_size} must divide by 2^{depth - 1} (the down blocks)")
        heads = self.heads_per_block()
        for channels, n_heads in zip(self.block_out_channels, heads, strict=True):
            if n_heads < 1 or channels % self.norm_num_groups or channels % n_heads:
                raise ValueError(
                    f"block width {channels} must divide by norm_num_groups {self.norm_num_groups} and by "
                    f"its heads {n_heads}"
                )
        if self.cross_attention_dim is not None and self.cross_attention_dim < 1:
            raise ValueError(f"cross_attention_dim must be None or positive, got {self.cross_attention_dim}")
        if not (0.0 <= self.caption_dropout < 1.0 and 0.0 <= self.teacher_fraction <= 1.0):
            raise ValueError("caption_dropout must be in [0, 1) and teacher_fraction in [0, 1]")
        loop.check_schedule(self)
        low, high = self.timestep_range
        if not 0 <= low < high <= 1000:
            raise ValueError(f"timestep_range must be (low, high), 0 <= low < high <= 1000, got {low, high}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be None or > 0, got {self.snr_gamma}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.val_timesteps or any(not 0 <= t < 1000 for t in self.val_timesteps):
            raise ValueError(
                f"val_timesteps must be a non-empty tuple in [0, 1000), got {self.val_timesteps}"
            )
        loop.check_max_items(self)

    def heads_per_block(self) -> tuple[int, ...]:
        if isinstance(self.attention_head_dim, int):
            return (self.attention_head_dim,) * len(self.block_out_channels)
        if len(self.attention_head_dim) != len(self.block_out_channels):
            raise ValueError("attention_head_dim must be an int or one entry per block")
        return tuple(self.attention_head_dim)

    @classmethod
    def _json_values(cls, values: dict[str, object]) -> dict[str, object]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def build_unet(config: MiniUnetConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    """A randomly initialised SD1.5-shaped UNet of the config's size (mid block: cross-attention)."""
    heads = config.heads_per_block()
    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=config.down_block_types,
        up_block_types=config.up_block_types,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=cross_attention_dim,
    )


def noise_schedulers() -> tuple[DDPMScheduler, DDIMScheduler]:
    """SD1.5's training schedule (scaled_linear 0.00085 → 0.012, 1000 steps, ε) and its inference DDIM."""
    train = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    ddim = DDIMScheduler.from_config(train.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return train, ddim


# ------------------------------------------------------------------------------------------------- captions
def caption_table(items: pd.DataFrame) -> tuple[list[str], torch.Tensor]:
    """Distinct captions ("" first) and an (N, N_TEMPLATES + 1) index into them: templates, then teacher."""
    texts: dict[str, int] = {"": 0}
    rows = []
    for title, genres in zip(items["title"], items_genres(items), strict=True):
        title = "" if pd.isna(title) else str(title)
        row = [item_text(title, genres, k) for k in range(N_TEMPLATES)]
        row.append(explicit_prompt_teacher(title, genres))
        rows.append([texts.setdefault(t, len(texts)) for t in row])
    # data building: the caption table stays on the host (indexed by host rows)
    return list(texts), torch.tensor(rows, dtype=torch.long).reshape(len(items), N_TEMPLATES + 1)


def sample_caption_ids(
    table: torch.Tensor, rows: torch.Tensor, config: MiniUnetConfig, generator: torch.Generator
) -> torch.Tensor:
    """(B,) caption ids for items `rows`: "" (id 0) with P = caption_dropout, else teacher or a template."""
    n = len(rows)  # host draws from a seeded CPU generator, by design (the mini trainer runs on the CPU)
    dropped = torch.rand(n, generator=generator) < config.caption_dropout
    teacher = torch.rand(n, generator=generator) < config.teacher_fraction
    template = torch.randint(0, N_TEMPLATES, (n,), generator=generator)
    ids = table[rows, torch.where(teacher, N_TEMPLATES, template)]
    return ids.masked_fill(dropped, 0)


# ------------------------------------------------------------------------------------- frozen parts + cache
def _folder_digest(folder: Path, names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        for file in sorted(folder.glob(name)):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def load_text_encoder(clip_dir: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """The text tower of a saved `CLIPModel` folder, refusing any newly initialised weight.

    The vision tower's weights are reported as unexpected keys by transformers; that report is silenced here
    because the check that matters (no missing text weight) is made explicitly.
    """
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        encoder, info = CLIPTextModel.from_pretrained(clip_dir, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["mismatched_keys"]:
        missing = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
        raise DataError(f"text weights missing or mis-shaped: {missing[:5]}", path=clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    if tokenizer.model_max_length > encoder.config.max_position_embeddings:
        raise DataError(
            f"tokenizer model_max_length {tokenizer.model_max_length} exceeds the text encoder's "
            f"{encoder.config.max_position_embeddings} positions",
            path=clip_dir,
        )
    return encoder.eval().requires_grad_(False), tokenizer


@torch.no_grad()
def _encode_latents(vae: AutoencoderKL, covers: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    """(N, V, 3, P, P) uint8 → posterior mean and std × scaling_factor, each (N, V, C, S, S) fp16."""
    flat = covers.flatten(0, 1)
    means, stds = [], []
    for start in tqdm(range(0, len(flat), 64), desc="vae latents", unit="batch", disable=not progress):
        pixels = flat[start : start + 64].float() / 127.5 - 1.0  # [-1, 1], as VaeImageProcessor gives
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean * vae.config.scaling_factor)
        stds.append(posterior.std * vae.config.scaling_factor)
    shape = (*covers.shape[:2], *means[0].shape[1:])
    return {"mean": torch.cat(means).reshape(shape).half(), "std": torch.cat(stds).reshape(shape).half()}


@torch.no_grad()
def encode_captions(
    encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: list[str], batch: int = 256
) -> torch.Tensor:
    """The pipeline's `encode_text`: max-length padding, truncation, last hidden state → (N, L, W)."""
    out = []
    for start in range(0, len(captions), batch):
        ids = tokenizer(
            captions[start : start + batch],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out.append(encoder(ids)[0])
    return torch.cat(out)


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        logger.info("from cache %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    loop.torch_save_atomic(path, value)
    return value


# ------------------------------------------------------------------------------------------ frozen features
@dataclasses.dataclass(frozen=True)
class FrozenFeatures:
    """Everything the UNet loop needs from the frozen VAE and text encoder, computed once per items table."""

    latent_mean: torch.Tensor  # (N, V, C, S, S) fp16, × scaling_factor
    latent_std: torch.Tensor  # (N, V, C, S, S) fp16, × scaling_factor
    captions: list[str]  # distinct captions, "" first
    table: torch.Tensor  # (N, N_TEMPLATES + 1) caption ids per item
    hidden: torch.Tensor  # (N_captions, L, W) fp16 last hidden states
    pixels: int  # cover side the VAE encodes
    scaling_factor: float
    text_max_length: int
    digest: str  # of the VAE and CLIP files: part of the run's fingerprint

    def to(self, device: torch.device) -> FrozenFeatures:
        """The tables the loop indexes every step, moved to `device` once (the caption table stays on the
        host: the caption draws index it there)."""
        moved = {k: getattr(self, k).to(device) for k in ("latent_mean", "latent_std", "hidden")}
        return dataclasses.replace(self, **moved)


def frozen_features(
    items: pd.DataFrame,
    config: MiniUnetConfig,
    vae_dir: Path,
    clip_dir: Path,
    cache_dir: Path,
    progress: bool,
) -> FrozenFeatures:
    """Load the VAE and text tower, check them against the config, encode (or read cached) features."""
    for folder, what in ((vae_dir, "VAE"), (clip_dir, "CLIP")):
        if not (folder / "config.json").is_file():
            raise DataError(f"no saved {what} here (config.json missing); train it first", path=folder)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    encoder, tokenizer = load_text_encoder(clip_dir)
    width = encoder.config.hidden_size
    if config.cross_attention_dim is not None and config.cross_attention_dim != width:
        raise ICGError(
            f"cross_attention_dim {config.cross_attention_dim} does not match the text encoder's hidden "
            f"size {width} ({clip_dir}); set it to {width} or None"
        )
    if vae.config.latent_channels != config.in_channels:
        raise ICGError(
            f"the VAE has {vae.config.latent_channels} latent channels, in_channels is {config.in_channels}"
        )
    pixels = config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    vae_digest = _folder_digest(vae_dir, ("config.json", "*.safetensors"))
    clip_digest = _folder_digest(
        clip_dir, ("config.json", "*.safetensors", "*.txt", "vocab.json", "tok*.json")
    )

    covers = render_cover_cache(items, cache_dir, pixels, config.variants, progress)  # (N, V, 3, P, P)
    key = hashlib.sha256(covers.numpy().tobytes() + vae_digest.encode()).hexdigest()[:16]
    latents = _cached(cache_dir / f"unet_latents_{key}.pt", lambda: _encode_latents(vae, covers, progress))
    if latents["mean"].shape[-2:] != (config.sample_size, config.sample_size):
        raise ICGError(
            f"VAE latents of {pixels} px covers are {tuple(latents['mean'].shape[-2:])}, sample_size is "
            f"{config.sample_size}"
        )
    captions, table = caption_table(items)
    key = hashlib.sha256(json.dumps([captions, clip_digest]).encode()).hexdigest()[:16]
    text = _cached(
        cache_dir / f"unet_text_{key}.pt",
        lambda: {"captions": captions, "hidden": encode_captions(encoder, tokenizer, captions).half()},
    )
    if text["captions"] != captions:
        raise DataError("caption cache does not match these items; delete it", path=cache_dir)
    return FrozenFeatures(
        latent_mean=latents["mean"],
        latent_std=latents["std"],
        captions=captions,
        table=table,
        hidden=text["hidden"],
        pixels=pixels,
        scaling_factor=float(vae.config.scaling_factor),
        text_max_length=tokenizer.model_max_length,
        digest=hashlib.sha256((vae_digest + clip_digest).encode()).hexdigest(),
    )


# ----------------------------------------------------------------------------------------------- training
@torch.no_grad()
def eps_mse(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    timesteps: tuple[int, ...],
    scheduler: DDPMScheduler,
    seed: int,
) -> dict[str, object]:
    """Held-out ε-prediction MSE at fixed timesteps with fixed noise (same seed → same noise every call, on
    any device: the noise is drawn on the host). Runs in fp32 on the UNet's device."""
    device = unet.device
    generator = torch.Generator().manual_seed(seed)
    by_t = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)  # (N, C, S, S) host draw, seeded by design
        total = torch.zeros((), device=device)
        for start in range(0, len(latents), 64):
            x, eps, cond = (v[start : start + 64].to(device).float() for v in (latents, noise, hidden))
            step = torch.full((len(x),), t, dtype=torch.long, device=device)
            pred = unet(scheduler.add_noise(x, eps, step), step, encoder_hidden_states=cond).sample
            total += torch.nn.functional.mse_loss(pred.float(), eps, reduction="sum")
        by_t[str(t)] = round(float(total) / noise.numel(), 5)
    return {"mean": round(sum(by_t.values()) / len(by_t), 5), "by_t": by_t}


def train_mini_unet(
    items: pd.DataFrame,
    out_dir: str | Path,
    config: MiniUnetConfig | None = None,
    *,
    vae_dir: str | Path,
    clip_dir: str | Path,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, object]:
    """Train the mini UNet on `items`' covers through the saved VAE and CLIP text tower; returns the metrics.

    `threads` sets torch's intra-op threads for this call (restored afterwards); a resumed run must use the
    same count as the first for bit-identical weights. `device` ("cpu", "cuda", "auto") runs the UNet there,
    under bf16 autocast on CUDA when `config.bf16_autocast`; every random draw stays on a seeded host
    generator, so a run resumes bit-identically on the device type it started on (the device type is part
    of the checkpoint's fingerprint).
    """
    config = config or MiniUnetConfig()
    loop.check_run_options(max_minutes, threads=threads)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    run = _Run(resolve_device(device), resume, max_minutes, progress)
    # the caller's global RNG is left as it was
    with loop.torch_threads(threads), torch.random.fork_rng(devices=[]):
        return _train(items, out, config, Path(vae_dir), Path(clip_dir), cache, run)


@dataclasses.dataclass(frozen=True)
class _Run:
    """How a run executes (not what it learns): the device and the resume/time/progress options."""

    device: torch.device
    resume: bool
    max_minutes: float | None
    progress: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.device.type == "cuda" else None


def _train(
    items: pd.DataFrame,
    out: Path,
    config: MiniUnetConfig,
    vae_dir: Path,
    clip_dir: Path,
    cache_dir: Path,
    run: _Run,
) -> dict[str, object]:
    started, load_start = time.perf_counter(), os.getloadavg()
    resume, max_minutes, progress, device = run.resume, run.max_minutes, run.progress, run.device
    items, split = loop.run_items(items, config)
    feats = frozen_features(items, config, vae_dir, clip_dir, cache_dir, progress)
    precompute_seconds = time.perf_counter() - started
    # a CPU run keeps its fingerprint of before devices existed; another device type resumes only itself
    extra = () if device.type == "cpu" else (device.type,)
    if config.init_unet is not None:
        extra += (_folder_digest(Path(config.init_unet), ("config.json", "*.safetensors")),)
    fingerprint = loop.items_fingerprint(items, config, feats.digest, *extra)
    metrics_file = out / METRICS_NAME
    done = loop.finished_metrics(metrics_file, fingerprint, resume and (out / "unet").is_dir())
    if done is not None:
        logger.info("mini UNet in %s is complete; nothing to do", out)
        return done
    latent_std = float(feats.latent_mean[split.train].float().std())
    if not 0.5 < latent_std < 2.0:
        logger.warning("scaled latents have std %.3f; is the VAE's scaling_factor set for it?", latent_std)

    # model, EMA, optimizer, schedule, RNG: fresh, or from the checkpoint
    pairs = torch.cartesian_prod(torch.from_numpy(split.train), torch.arange(config.variants))  # (P, 2) host
    steps_per_epoch = -(-len(pairs) // config.batch_size) * config.passes_per_epoch
    total_steps = config.epochs * steps_per_epoch
    noise_scheduler, ddim = noise_schedulers()
    torch.manual_seed(config.seed)
    unet = build_unet(config, feats.hidden.shape[-1])
    if config.init_unet is not None:
        _warm_start(unet, Path(config.init_unet))
    unet = unet.to(device)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, foreach=device.type == "cuda")
    train_feats = feats.to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = round(config.warmup_fraction * total_steps)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    generator = torch.Generator().manual_seed(config.seed + 1)
    val_latents = feats.latent_mean[split.val, 0].float()  # (N_val, C, S, S): reference covers
    val_hidden = feats.hidden[feats.table[split.val, N_TEMPLATES]].float()  # teacher prompts, as generated

    def evaluate(hidden: torch.Tensor = val_hidden) -> dict[str, object]:
        """ε-MSE of the EMA weights (the ones saved) on the validation covers."""
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        unet.eval()
        result = eps_mse(unet, val_latents, hidden, config.val_timesteps, noise_scheduler, config.seed + 2)
        ema.restore(unet.parameters())
        return result

    checkpoint = out / CHECKPOINT_NAME
    modules = {"model": unet, "ema": ema, "optimizer": optimizer, "lr_schedule": lr_schedule}
    generators = {"generator": generator}
    inputs = "items, config, VAE or CLIP"
    state = loop.load_checkpoint(
        checkpoint, fingerprint, _CHECKPOINT_FORMAT, "mini-UNet", inputs, resume=resume
    )
    epochs = loop.EpochRun(logger, out, config.epochs, started, max_minutes)  # `run` is taken
    history = epochs.restore(state, modules, generators)
    ema.to(device=device)  # EMAModel.load_state_dict keeps the checkpoint's (host) shadow tensors
    if state is None:
        history.append({"epoch": 0, "val_eps_mse": evaluate()})  # the untrained model: where the curve starts

    for epoch in epochs:
        batches = [
            batch
            for _ in range(config.passes_per_epoch)
            for batch in pairs[torch.randperm(len(pairs), generator=generator)].split(config.batch_size)
        ]
        bar = tqdm(batches, desc=f"unet epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        loss = train_epoch(
            unet, ema, optimizer, lr_schedule, noise_scheduler, train_feats, bar, config, generator,
            run.autocast_dtype if config.bf16_autocast else None,
        )  # fmt: skip
        val = evaluate()
        history.append({"epoch": epoch + 1, "loss": round(loss, 5), "val_eps_mse": val,
                        "lr": lr_schedule.get_last_lr()[0]})  # fmt: skip
        logger.info(
            "mini-UNet epoch %d/%d (%.0fs): loss %.4f, val ε-MSE %.4f",
            epoch + 1, config.epochs, epochs.lap(), loss, val["mean"],
        )  # fmt: skip
        epochs.save(checkpoint, _CHECKPOINT_FORMAT, fingerprint, epoch + 1)

    # the EMA weights + the inference scheduler; held-out ε-MSE with and without the text, and on test items
    empty_caption = evaluate(feats.hidden[:1].float().expand_as(val_hidden))
    ema.copy_to(unet.parameters())
    unet.eval()
    loop.replace_folder(out / "unet", unet.save_pretrained)
    loop.replace_folder(out / "scheduler", ddim.save_pretrained)
    write_text_atomic(out / CONFIG_NAME, config.to_json())
    test_latents = feats.latent_mean[split.test, 0].float()
    test_hidden = feats.hidden[feats.table[split.test, N_TEMPLATES]].float()
    test = eps_mse(unet, test_latents, test_hidden, config.val_timesteps, noise_scheduler, config.seed + 3)
    metrics = {
        **loop.split_sizes(items, split), "train_pairs": len(pairs), "steps_per_epoch": steps_per_epoch,
        **loop.epoch_counts(history, config.epochs),
        "val_eps_mse": history[-1]["val_eps_mse"], "val_eps_mse_empty_caption": empty_caption,
        "test_eps_mse": test, "cross_attention_dim": unet.config.cross_attention_dim,
        "text_max_length": feats.text_max_length, "n_captions": len(feats.captions),
        "pixels": feats.pixels, "scaling_factor": feats.scaling_factor, "latent_std": round(latent_std, 4),
        "parameters": sum(p.numel() for p in unet.parameters()), "device": str(device),
        "ema": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"},
        "precompute_seconds": round(precompute_seconds, 1),
        **loop.run_seconds(started, epochs.seconds_before, load_start),
        "fingerprint": fingerprint, "history": history, "config": dataclasses.asdict(config),
    }  # fmt: skip
    text = json.dumps(metrics, indent=2)
    write_text_atomic(metrics_file, text)
    return json.loads(text)  # what a later call that finds the run complete returns


def _warm_start(unet: UNet2DConditionModel, folder: Path) -> None:
    """Copy a saved UNet's weights into `unet`, refusing another architecture (clear message, no partial
    load)."""
    if not (folder / "config.json").is_file():
        raise DataError("init_unet: no saved UNet here (config.json missing)", path=folder)
    source = UNet2DConditionModel.from_pretrained(folder)
    theirs, ours = source.state_dict(), unet.state_dict()
    if theirs.keys() != ours.keys() or any(theirs[k].shape != v.shape for k, v in ours.items()):
        raise DataError("init_unet: another architecture than the config's; use its config", path=folder)
    unet.load_state_dict(theirs)


def eps_loss(
    pred: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    scheduler: DDPMScheduler,
    snr_gamma: float | None,
) -> torch.Tensor:
    """ε-prediction MSE, plain or Min-SNR-γ weighted per sample as in diffusers' train_text_to_image."""
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(pred, noise)
    snr = compute_snr(scheduler, t)  # (B,)
    weights = snr.clamp(max=snr_gamma) / snr  # ε-prediction: min(SNR, γ) / SNR
    per_sample = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def train_epoch(
    unet: UNet2DConditionModel,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    noise_scheduler: DDPMScheduler,
    feats: FrozenFeatures,
    batches,
    config: MiniUnetConfig,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """One pass over the (item, variant) pairs: ε-prediction MSE at uniform timesteps; the mean loss.

    The draws come from the seeded host `generator` (the same on every device: bit-identical resume) and
    are copied to the features' device; the loss is summed there and read once per epoch (no host sync
    per step on a GPU; the progress bar shows the loss every 50 steps)."""
    unet.train()
    device = feats.latent_mean.device
    total, steps = torch.zeros((), device=device), 0
    for pair in batches:  # (B, 2): item row, variant
        rows, variants = pair[:, 0], pair[:, 1]
        index = (rows.to(device), variants.to(device))
        x0 = feats.latent_mean[index].float()  # (B, C, S, S)
        if config.sample_latents:
            draw = torch.randn(x0.shape, generator=generator).to(device)
            x0 = x0 + feats.latent_std[index].float() * draw
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(*config.timestep_range, (len(x0),), generator=generator)
        caption_ids = sample_caption_ids(feats.table, rows, config, generator).to(device)
        cond = feats.hidden[caption_ids].float()  # (B, L, W)
        t = t.to(device)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = eps_loss(pred.float(), noise, t, noise_scheduler, config.snr_gamma)
        loop.optimizer_step(loss, optimizer, lr_schedule, unet.parameters(), config.grad_clip)
        ema.step(unet.parameters())
        total, steps = total + loss.detach(), steps + 1
        if hasattr(batches, "set_postfix") and (steps % 50 == 0 or device.type == "cpu"):
            batches.set_postfix(loss=f"{float(total) / steps:.4f}")
    return float(total) / max(1, steps)
