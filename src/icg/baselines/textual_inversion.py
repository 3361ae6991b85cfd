"""Textual Inversion baseline (Gal et al. 2022; paper §4.2): one learned word `<user-{id}>` per user.

Recipe (diffusers' examples/textual_inversion at our scale): a new token per user, its embedding initialised
from `init_word` ("poster"; a word the tokenizer splits starts from the mean of its pieces — diffusers
insists on one piece, the mini's BPE splits "poster" into "po" + "ster"), trained so that the frozen UNet
denoises the VAE latents of the user's covers (the reference covers of the k items the user rated highest,
training-split items only) under prompts such as "a movie poster in the style of <user-42>": loss = MSE to
the noise (or to v / x0, per the scheduler's `prediction_type`) at uniform timesteps; the latent is sampled
from the VAE posterior as diffusers does. Covers are not flipped (diffusers' default flip_p 0.5 would mirror
the title). ICG's adapter is off: the UNet gets the plain text embeddings (`personalized_unet_inputs(c_t)`).

All users train in one loop: each batch mixes samples of several users, each prompt carries its own user's
token, so a step costs the same for 1 or 100 users. Each user's row has its own AdamW (diffusers' optimizer,
betas, eps and weight decay), stepped only when the batch holds one of that user's covers: its trajectory is
that of a solo run on its own samples (one shared AdamW would keep moving absent rows on stale momentum,
with an inflated step from their small second moment). Only the new rows train, by construction: they are
appended to the frozen embedding matrix inside the forward (`torch.func.functional_call`), the equivalent
of diffusers' resize + "restore every other row after each step", with optimizer state for U rows instead
of the whole vocabulary (38 M floats for SD1.5).

The caller's pipeline is never modified: tokens are added to a copy of its tokenizer. The trained words are
saved in diffusers' format (`tokens/{user_id}/learned_embeds.safetensors` = {token: (1, D)}, what its
training script writes) and loaded with diffusers' own `pipe.load_textual_inversion` (`load_user_tokens`);
`user_tokens(...)` loads them for a block and restores the tokenizer and text encoder after it, so the
tokens never leak into another method's covers. Generation: `pipe(items, [CoverUser(u)], adapter_scale=0.0,
prompt_suffixes=[ti_suffix(u)])`.

Resume: sample order, template, posterior sample, noise and timestep of step s are pure functions of
(seed, s); `checkpoint.pt` (rows, each row's AdamW state, history) is replaced atomically every
`checkpoint_every` steps and when a call stops early (`max_minutes`, `max_steps`), so a re-run ends
bit-identical to a straight run (same machine and thread count).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import safetensors.torch
import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from icg.adapter.attention import personalized_unet_inputs
from icg.atomic import atomic_path, write_text_atomic
from icg.baselines.pmg import user_history
from icg.data.covers.cache import render_cover_cache
from icg.data.records import InteractionData
from icg.errors import ICGError
from icg.training import loop

logger = logging.getLogger(__name__)

TOKEN_FORMAT = "<user-{user_id}>"
SUFFIX_FORMAT = "in the style of {token}"
STYLE_TEMPLATES = (
    "a movie poster in the style of {}",
    "a poster in the style of {}",
    "a movie cover in the style of {}",
    "a film poster in the style of {}",
    "a cover in the style of {}",
    "an illustration in the style of {}",
    "the poster of a movie in the style of {}",
    "a painting in the style of {}",
)  # diffusers' imagenet_style_templates_small, for posters
TOKENS_DIR = "tokens"
EMBEDS_NAME = "learned_embeds.safetensors"  # diffusers' TEXT_INVERSION_NAME_SAFE
CHECKPOINT_NAME, METRICS_NAME, CONFIG_NAME = "checkpoint.pt", "metrics.json", "textual_inversion.json"
_CHECKPOINT_FORMAT = "icg.baselines.textual_inversion.checkpoint/1"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
RESUMABLE_CHANGES = ("checkpoint_every",)  # config fields outside the fingerprint: they change no value


@dataclasses.dataclass(frozen=True)
class TextualInversionConfig(loop.JsonConfig):
    """One Textual Inversion run over many users (textual_inversion.json beside the tokens)."""

    init_word: str = "poster"
    # passes over every (user, cover) sample: 4 covers × 30 epochs = 120 denoising samples per user
    epochs: int = 30
    batch_size: int = 4
    # mini probe (12 users, 360 steps): 1e-3 moves a word ~1 token norm (0.21), 5e-3 by 3-5 norms, no better
    lr: float = 1e-3
    weight_decay: float = 1e-2  # diffusers' default; applied only in the steps that update the row
    sample_latents: bool = True  # posterior sample (diffusers) instead of its mean
    templates: tuple[str, ...] = STYLE_TEMPLATES
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        loop.check_positive_ints(self, ("epochs", "batch_size", "checkpoint_every"))
        if not self.init_word.strip():
            raise ValueError("init_word must be a non-empty word")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError("templates must be a non-empty tuple of strings with exactly one '{}' each")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def _json_values(cls, values: dict[str, object]) -> dict[str, object]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def user_token(user_id: str) -> str:
    """The learned word of a user: '<user-42>'."""
    return TOKEN_FORMAT.format(user_id=user_id)


def ti_suffix(user_id: str) -> str:
    """The prompt suffix that puts a user's word into the explicit prompt: 'in the style of <user-42>'."""
    return SUFFIX_FORMAT.format(token=user_token(user_id))


# ------------------------------------------------------------------------------------------------ data
def user_inversion_images(
    data: InteractionData,
    user_id: str,
    k: int,
    item_ids_allowed: Collection[str],
    *,
    cache_dir: str | Path,
    size: int = 64,
) -> torch.Tensor:
    """Reference covers (N ≤ k, 3, S, S) uint8 of the k allowed items the user rated highest.

    Ranking (`pmg.user_history`): rating, then recency (latest first), then item id. Allowed items are the
    training split for evaluation (`pmg.train_item_ids`). Covers come from `render_cover_cache` of the
    whole items table (variant 0, cached in `cache_dir`).
    """
    return inversion_covers(data, [user_id], k, item_ids_allowed, cache_dir=cache_dir, size=size)[user_id]


def inversion_covers(
    data: InteractionData,
    user_ids: Collection[str],
    k: int,
    item_ids_allowed: Collection[str],
    *,
    cache_dir: str | Path,
    size: int = 64,
) -> dict[str, torch.Tensor]:
    """`user_inversion_images` for many users, rendering (or reading) the cover cache once."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    items = data.items.reset_index(drop=True)
    covers = render_cover_cache(items, Path(cache_dir), size, 1, progress=False)[:, 0]  # (N, 3, S, S)
    row_of = {str(i): n for n, i in enumerate(items["item_id"])}
    out = {}
    for user_id in user_ids:
        top = user_history(data, str(user_id), item_ids_allowed).head(k)
        if top.empty:
            raise ValueError(f"user {user_id} rated none of the allowed items: no covers to invert")
        out[str(user_id)] = covers[[row_of[i] for i in top["item_id"]]]
    return out


# --------------------------------------------------------------------------------------------- training
def _weights_digest(*modules: torch.nn.Module) -> str:
    """sha256 of the frozen weights (names + bytes); adapter processors excluded (TI never uses them)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            if ".processor." in name:
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(pipe, users: Mapping[str, torch.Tensor], config: TextualInversionConfig) -> str:
    covers = {u: hashlib.sha256(c.numpy().tobytes()).hexdigest() for u, c in users.items()}
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}
    vocab = sorted(pipe.tokenizer.get_vocab().items())
    weights = _weights_digest(pipe.text_encoder, pipe.vae, pipe.unet)
    payload = [list(users), covers, fields, hashlib.sha256(json.dumps(vocab).encode()).hexdigest(), weights]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _check_users(pipe, users: Mapping[str, torch.Tensor], size: int) -> list[str]:
    if not users:
        raise ValueError("users is empty: give {user_id: covers (N, 3, S, S) uint8}")
    vocab = pipe.tokenizer.get_vocab()
    for user_id, covers in users.items():
        if not _SAFE_ID.match(str(user_id)):
            raise ValueError(f"user id {user_id!r} must match {_SAFE_ID.pattern} (it names a folder)")
        if user_token(user_id) in vocab:
            raise ValueError(
                f"{user_token(user_id)} is already in the tokenizer (loaded tokens?); use a fresh pipeline"
            )
        if not isinstance(covers, torch.Tensor) or covers.dtype != torch.uint8 or covers.ndim != 4:
            raise ValueError(f"covers of user {user_id} must be a uint8 tensor (N, 3, S, S)")
        if len(covers) == 0 or covers.shape[1:] != (3, size, size):
            raise ValueError(
                f"covers of user {user_id} have shape {tuple(covers.shape)}; expected (N ≥ 1, 3, {size}, "
                f"{size}), the pipeline's cover size"
            )
    return sorted(map(str, users), key=lambda u: (len(u), u))


@contextlib.contextmanager
def _frozen_eval(*modules: torch.nn.Module) -> Iterator[None]:
    """Modules in eval mode without parameter gradients for the block; flags restored afterwards."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    for module in modules:
        module.eval().requires_grad_(False)
    try:
        yield
    finally:
        for module, training, flags in saved:
            module.train(training)
            for param, flag in flags:
                param.requires_grad_(flag)


@torch.no_grad()
def cover_posteriors(vae, covers: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 → posterior mean and std × scaling_factor, each (N, C, h, w) float32 on the CPU
    (the per-step noise is drawn there from a CPU generator, then moved to the UNet's device)."""
    means, stds = [], []
    for start in range(0, len(covers), batch):
        pixels = covers[start : start + batch].float().to(vae.device) / 127.5 - 1.0  # [-1, 1]
        posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu() * vae.config.scaling_factor)
        stds.append(posterior.std.float().cpu() * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


def _sample_order(n: int, seed: int, first: int, count: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """Sample indices at stream positions [first, first + count): epoch e = a seeded permutation of n."""
    out = []
    for position in range(first, first + count):
        epoch = position // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(cache[epoch][position % n])
    return torch.stack(out)


class TokenBatch:
    """Tokenized template prompts for every (user, template) on a tokenizer copy with the user words."""

    def __init__(self, pipe, user_ids: list[str], config: TextualInversionConfig) -> None:
        tokenizer = copy.deepcopy(pipe.tokenizer)
        embedding = pipe.text_encoder.get_input_embeddings()
        self.base = len(tokenizer)
        if self.base != embedding.num_embeddings:
            raise ICGError(
                f"the tokenizer has {self.base} tokens but the text encoder {embedding.num_embeddings} "
                "embeddings; diffusers' load_textual_inversion would resize the matrix to the tokenizer"
            )
        tokens = [user_token(u) for u in user_ids]
        tokenizer.add_tokens(tokens)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        if ids != list(range(self.base, self.base + len(tokens))):
            raise ICGError(f"new tokens got ids {ids[:3]}…, expected {self.base}… in order")
        prompts = [t.format(token) for token in tokens for t in config.templates]
        input_ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        self.ids = input_ids.view(len(tokens), len(config.templates), -1)  # (U, T, L)
        for u, row in enumerate(self.ids):
            if not (row == self.base + u).any(dim=-1).all():
                raise ICGError(
                    f"{tokens[u]} was truncated away from a template prompt; shorten the templates"
                )
        init = tokenizer(config.init_word, add_special_tokens=False).input_ids
        if not init:
            raise ValueError(f"init_word {config.init_word!r} gives no token")
        self.init = embedding.weight.detach()[init].float().mean(0)  # (D,)
        self.param_name = next(n for n, p in pipe.text_encoder.named_parameters() if p is embedding.weight)


def step_loss(
    pipe,
    tokens: TokenBatch,
    rows: torch.nn.ParameterList,
    frozen: torch.Tensor,
    posteriors: tuple[torch.Tensor, torch.Tensor],
    owners: torch.Tensor,
    sample: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    config: TextualInversionConfig,
    step: int,
) -> torch.Tensor:
    """The denoising loss of step `step` on the samples `sample` (owned by users `owners`), with the users'
    rows appended to the frozen embedding matrix `frozen` (V, D); differentiable w.r.t. the rows only."""
    device = pipe.unet.device
    mean, std = posteriors  # (S_all, C, h, w) each, on the CPU
    # template, posterior sample, noise and timestep are drawn on the CPU from a generator seeded by (seed,
    # step), by design: a resumed run redraws them bit-identically on any device; they are moved below
    generator = torch.Generator().manual_seed((config.seed + 1) * 1_000_003 + step)
    template = torch.randint(0, len(config.templates), (len(sample),), generator=generator)
    x0 = mean[sample]  # (B, C, h, w)
    if config.sample_latents:
        x0 = x0 + std[sample] * torch.randn(x0.shape, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(sample),), generator=generator)
    ids = tokens.ids[owners, template].to(device)  # (B, L)
    weight = torch.cat([frozen, torch.stack(list(rows)).to(frozen.dtype)])  # (V + U, D)
    text = torch.func.functional_call(pipe.text_encoder, {tokens.param_name: weight}, (ids,))[0]
    x0, noise, t = x0.to(device, text.dtype), noise.to(device, text.dtype), t.to(device)
    noisy = noise_scheduler.add_noise(x0, noise, t)
    pred = pipe.unet(noisy, t, **personalized_unet_inputs(text)).sample  # adapter off: plain c_t
    target = {"epsilon": noise, "sample": x0}.get(noise_scheduler.config.prediction_type)
    if target is None:
        target = noise_scheduler.get_velocity(x0, noise, t)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def train_user_tokens(
    pipe,
    users: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    config: TextualInversionConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    threads: int | None = None,
) -> dict[str, object]:
    """Learn one word per user from their covers ({user_id: (N, 3, S, S) uint8}); returns the metrics.

    Writes `out_dir/tokens/{user_id}/learned_embeds.safetensors` when complete, metrics.json,
    textual_inversion.json and checkpoint.pt. `max_minutes` / `max_steps` stop this call between steps
    (checkpoint saved, resumable). `threads` sets torch's intra-op threads for the call; a resumed run must
    use the same count for bit-identical words. `pipe` is left unchanged.
    """
    config = config or TextualInversionConfig()
    loop.check_run_options(max_minutes, max_steps=max_steps, threads=threads)
    frozen = _frozen_eval(pipe.text_encoder, pipe.unet, pipe.vae)
    with loop.torch_threads(threads), torch.random.fork_rng(devices=[]), frozen:
        return _train(pipe, users, Path(out_dir), config, resume, progress, max_minutes, max_steps)


def _train(pipe, users, out: Path, config, resume, progress, max_minutes, max_steps) -> dict[str, object]:
    started, load_start = time.perf_counter(), os.getloadavg()
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    user_ids = _check_users(pipe, users, size)
    users = {u: users[u] for u in user_ids}
    fingerprint = _fingerprint(pipe, users, config)
    token_files = [out / TOKENS_DIR / u / EMBEDS_NAME for u in user_ids]
    done = loop.finished_metrics(
        out / METRICS_NAME, fingerprint, resume and all(f.is_file() for f in token_files)
    )
    if done is not None:
        logger.info("textual inversion in %s is complete; nothing to do", out)
        return done

    device = pipe.unet.device
    covers = torch.cat([users[u] for u in user_ids])  # (S_all, 3, S, S)
    # (S_all,) on the CPU by design: it indexes the host-side token table and picks each user's optimizer
    owner = torch.cat([torch.full((len(users[u]),), n) for n, u in enumerate(user_ids)])
    mean, std = cover_posteriors(pipe.vae, covers)  # (S_all, C, h, w)
    tokens = TokenBatch(pipe, user_ids, config)
    n_samples = len(covers)
    total = math.ceil(config.epochs * n_samples / config.batch_size)
    rows = torch.nn.ParameterList(torch.nn.Parameter(tokens.init.clone().to(device)) for _ in user_ids)
    optimizers = [torch.optim.AdamW([r], lr=config.lr, weight_decay=config.weight_decay) for r in rows]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    frozen = pipe.text_encoder.get_input_embeddings().weight.detach()  # (V, D)

    state = loop.load_checkpoint(
        out / CHECKPOINT_NAME, fingerprint, _CHECKPOINT_FORMAT, "textual-inversion", "users, covers, "
        "config or weights", resume=resume,
    )  # fmt: skip
    step, history, seconds_before, losses = 0, [], 0.0, []  # losses: per step since the last history record
    if state is not None:
        with torch.no_grad():
            for row, saved_row in zip(rows, state["rows"], strict=True):
                row.copy_(saved_row)
        for optimizer, saved_state in zip(optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        step, history, seconds_before = state["step"], list(state["history"]), state["seconds"]
        losses = list(state["pending_losses"])
        logger.info("resuming %s from step %d of %d", out, step, total)

    def save_checkpoint() -> None:
        seconds = seconds_before + time.perf_counter() - started
        loop.torch_save_atomic(out / CHECKPOINT_NAME, {
            "format": _CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step,
            "rows": torch.stack(list(rows)).detach().cpu(), "history": history,
            "optimizers": [optimizer.state_dict() for optimizer in optimizers],
            "pending_losses": list(losses), "seconds": seconds,
        })  # fmt: skip

    order_cache: dict[int, torch.Tensor] = {}
    step_seconds: list[float] = []
    start, saved = step, step
    bar = tqdm(total=total, initial=step, desc="textual inversion", unit="step", disable=not progress)
    while step < total:
        if loop.time_is_up(started, step_seconds, max_minutes) or (
            max_steps is not None and step - start >= max_steps
        ):
            logger.warning("stopping %s at step %d/%d (budget); resumable", out, step, total)
            break
        tick = time.perf_counter()
        sample = _sample_order(
            n_samples, config.seed, step * config.batch_size, config.batch_size, order_cache
        )
        loss = step_loss(pipe, tokens, rows, frozen, (mean, std), owner[sample], sample, noise_scheduler,
                          config, step)  # fmt: skip
        loss.backward()  # only the new rows carry gradients
        for u in owner[sample].unique().tolist():  # the users in this batch, each with its own AdamW
            optimizers[u].step()
            optimizers[u].zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        step_seconds.append(time.perf_counter() - tick)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if step % config.checkpoint_every == 0 or step == total:
            history.append({"step": step, "loss": round(sum(losses) / len(losses), 5)})
            losses = []
            save_checkpoint()
            saved = step
    bar.close()
    if step != saved:
        save_checkpoint()

    learned = torch.stack(list(rows)).detach().cpu().float()  # (U, D)
    if step == total:
        for user_id, vector, file in zip(user_ids, learned, token_files, strict=True):
            with atomic_path(file) as tmp:  # diffusers' save_progress: {token: (num_vectors, D)}
                safetensors.torch.save_file(
                    {user_token(user_id): vector[None].clone()}, tmp, {"format": "pt"}
                )
        write_text_atomic(out / CONFIG_NAME, config.to_json())
    moved = (learned - tokens.init.cpu()).norm(dim=-1)  # (U,)
    metrics = {
        "completed": step == total, "steps": total, "steps_completed": step, "users": len(user_ids),
        "samples": n_samples, "samples_per_user": round(config.epochs * n_samples / len(user_ids), 1),
        "seconds_per_step": round(sum(step_seconds) / len(step_seconds), 4) if step_seconds else None,
        "init_norm": round(float(tokens.init.norm()), 4),
        "moved_from_init": {"mean": round(float(moved.mean()), 4), "min": round(float(moved.min()), 4),
                            "max": round(float(moved.max()), 4)},
        "prediction_type": prediction, "token_format": TOKEN_FORMAT,
        **loop.run_seconds(started, seconds_before, load_start),
        "fingerprint": fingerprint, "history": history, "config": dataclasses.asdict(config),
    }  # fmt: skip
    text = json.dumps(metrics, indent=2)
    write_text_atomic(out / METRICS_NAME, text)
    return json.loads(text)


# ---------------------------------------------------------------------------------------------- loading
def load_user_tokens(pipe, folder: str | Path, user_ids: Collection[str]) -> dict[str, str]:
    """Load the users' words from a `train_user_tokens` folder with diffusers' `load_textual_inversion`;
    returns {user_id: token}. The pipeline keeps them until `user_tokens` restores it (or it is discarded)."""
    user_ids = [str(u) for u in user_ids]
    paths = [Path(folder) / TOKENS_DIR / u for u in user_ids]
    missing = [str(p) for p in paths if not (p / EMBEDS_NAME).is_file()]
    if missing:
        raise ICGError(f"no learned word for {len(missing)} user(s), e.g. {missing[0]}; train them first")
    tokens = [user_token(u) for u in user_ids]
    pipe.load_textual_inversion([str(p) for p in paths], token=tokens, local_files_only=True)
    return dict(zip(user_ids, tokens, strict=True))


@contextlib.contextmanager
def user_tokens(pipe, folder: str | Path, user_ids: Collection[str]) -> Iterator[dict[str, str]]:
    """`load_user_tokens` for the block; afterwards the tokenizer and the embedding matrix are the originals
    again (bit-identical), so other methods' covers never see the words."""
    tokenizer = copy.deepcopy(pipe.tokenizer)
    n_embeddings = pipe.text_encoder.get_input_embeddings().num_embeddings
    try:
        yield load_user_tokens(pipe, folder, user_ids)
    finally:
        pipe.text_encoder.resize_token_embeddings(n_embeddings)  # keeps the first rows: the originals
        pipe.tokenizer = tokenizer
