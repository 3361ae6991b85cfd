"""One reward protocol: `score(images, texts, users=None) -> (B,)`, differentiable w.r.t. the images.

Every reward (HPSv2, PickScore, CLIP similarity, LAION aesthetic, the personalized reward model) takes
images as a float tensor (B, 3, H, W) in [0, 1] — what the VAE decoder gives after `(x / 2 + 0.5)` — and
does its own resizing and CLIP normalisation here with differentiable ops, so reward-feedback training
backpropagates through it (the official scripts go through PIL, which cuts the graph). The model is loaded
once and scores a whole batch per call.

Also here: the loss helpers (`RewardLoss`: `margin − r` or ReFL's `relu(margin − r)`, each with its scale),
the `WeightedRewards` combiner L = Σ λ_i · loss_i, and the checkpoint-reading helper shared by the loaders.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.errors import ICGError
from icg.modules import DeviceDtypeMixin, has_values
from icg.rewards.fast import (
    AttachGrad,
    RewardSpeed,
    cast_tower,
    current_tape,
    move_tensors,
    resize_matmul,
    share_equal_towers,
    tape,
    text_caches,
    warm_reward_texts,
)

logger = logging.getLogger(__name__)

Texts = Sequence[str] | Mapping[str, Sequence[str]]  # one list for all rewards, or name → list
Users = (
    Sequence[str] | Tensor | None
)  # profile sentences or (B, D_u) user embeddings; public rewards ignore it
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, also used by HPSv2 and LAION ViT-H/L
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardCheckpointError(ICGError):
    """A reward checkpoint is missing, unreadable or not in the official layout; the message names it."""


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImageSpec:
    """How a reward's own processor turns an image into pixels, redone with differentiable tensor ops.

    mode "crop": resize the shortest side to `resize` then center-crop `size` (CLIPProcessor, OpenAI `clip`).
    mode "pad": resize the longest side to fit `size` then zero-pad (black) to `size` (HPSv2's ResizeMaxSize).
    Interpolation is bicubic with antialias, like PIL's BICUBIC; values are clamped to [0, 1] afterwards as
    PIL's uint8 output is, so scores match the official PIL path closely but not bit for bit.
    """

    size: tuple[int, int]  # (H, W) fed to the vision tower
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: Literal["crop", "pad"] = "crop"
    resize: int | None = None  # shortest edge for "crop"; None = min(size)


@dataclass(frozen=True)
class PixelPlan:
    """The ops `preprocess` runs for one input size: resize to `resize`, then crop (top, left, h, w) or pad
    (left, right, top, bottom), then normalise. Specs with equal plans give equal pixels (HPSv2's pad and
    CLIP's crop on a square image), so a shared call computes them once."""

    resize: tuple[int, int]
    crop: tuple[int, int, int, int] | None
    pad: tuple[int, int, int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def pixel_plan(spec: ImageSpec, h: int, w: int) -> PixelPlan:
    th, tw = spec.size
    crop = pad = None
    if spec.mode == "crop":
        short = spec.resize if spec.resize is not None else min(th, tw)
        new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        if new[0] < th or new[1] < tw:
            raise ValueError(f"image {new} after resizing is smaller than the crop {th}x{tw}")
        if new != (th, tw):
            crop = ((new[0] - th) // 2, (new[1] - tw) // 2, th, tw)
    elif spec.mode == "pad":
        scale = min(th / h, tw / w)
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        pad_h, pad_w = th - new[0], tw - new[1]
        if pad_h or pad_w:
            pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    else:
        raise ValueError(f"unknown ImageSpec mode {spec.mode!r}; expected 'crop' or 'pad'")
    return PixelPlan(new, crop, pad, tuple(spec.mean), tuple(spec.std))


def _resize(images: Tensor, hw: tuple[int, int], matmul: bool = False) -> Tensor:
    if tuple(images.shape[-2:]) == hw:
        return images
    if matmul:
        out = resize_matmul(images, hw)
    else:
        out = F.interpolate(images, size=hw, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def run_plan(images: Tensor, plan: PixelPlan, matmul: bool = False) -> Tensor:
    images = _resize(images.float(), plan.resize, matmul)
    if plan.crop is not None:
        top, left, th, tw = plan.crop
        images = images[..., top : top + th, left : left + tw]  # (B, 3, th, tw)
    if plan.pad is not None:
        images = F.pad(images, plan.pad, value=0.0)
    mean = images.new_tensor(plan.mean).view(1, 3, 1, 1)
    std = images.new_tensor(plan.std).view(1, 3, 1, 1)
    return (images - mean) / std  # (B, 3, th, tw)


def preprocess(images: Tensor, spec: ImageSpec) -> Tensor:
    """(B, 3, H, W) in [0, 1] → (B, 3, *spec.size) normalised, float32 (fp16 resampling is lossy and missing
    on CPU; the caller casts to the tower's dtype); differentiable. Inside a `WeightedRewards` call with
    `share_preprocessing`, computed once per (images, plan)."""
    plan = pixel_plan(spec, *images.shape[-2:])
    tape = current_tape()
    if tape is None:
        return run_plan(images, plan)
    matmul = bool(tape.speed.matmul_resize)
    return tape.shared(("pixels", id(images), plan), images, lambda: run_plan(images, plan, matmul))


# --------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class RewardLoss:
    """Per-sample loss from a score, averaged over the batch: scale · (margin − r), or ReFL's hinge.

    kind "linear": scale · mean(margin − r) — margin 0 gives the plain `−r`; margin only shifts the value.
    kind "hinge": scale · mean(relu(margin − r)) — ReFL (ImageReward: margin 2, scale 1e-3): samples
    already above the margin stop pulling. `scale` brings rewards of different ranges to comparable gradients.
    """

    kind: Literal["linear", "hinge"] = "linear"
    scale: float = 1.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "hinge"):
            raise ValueError(f"RewardLoss kind must be 'linear' or 'hinge', got {self.kind!r}")
        if not (math.isfinite(self.scale) and math.isfinite(self.margin)):
            raise ValueError(f"RewardLoss scale and margin must be finite, got {self.scale}, {self.margin}")

    def __call__(self, scores: Tensor) -> Tensor:
        gap = self.margin - scores  # (B,)
        if self.kind == "hinge":
            gap = F.relu(gap)
        return self.scale * gap.mean()


def negative_reward(scores: Tensor, scale: float = 1.0) -> Tensor:
    """−scale · mean(r)."""
    return RewardLoss("linear", scale)(scores)


def refl_loss(scores: Tensor, margin: float, scale: float = 1.0) -> Tensor:
    """ReFL: scale · mean(relu(margin − r))."""
    return RewardLoss("hinge", scale, margin)(scores)


# --------------------------------------------------------------------------- protocol


def _check_range(images: Tensor) -> None:
    with torch.no_grad():
        lo, hi = images.aminmax()
        if not (torch.isfinite(lo) and torch.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"images must lie in [0, 1] (decode with (x / 2 + 0.5).clamp(0, 1)); got [{lo:.4g}, {hi:.4g}]"
            )


def check_inputs(
    images: Tensor, texts: Sequence[str] | None, users: Users, *, needs_texts: bool, check_range: bool = True
) -> int:
    """Validate the shared inputs and return the batch size B; bad input is a ValueError, never fixed."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}"
            + (f" of dtype {images.dtype}" if isinstance(images, Tensor) else "")
        )
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, 3, H, W) with B >= 1, got {tuple(images.shape)}")
    batch = images.shape[0]
    if check_range and has_values(images):  # fake tensors (device checks) carry no values to check
        _check_range(images)
    if texts is None:
        if needs_texts:
            raise ValueError("this reward scores image-text pairs: texts must be a list of B strings")
    elif isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of strings (one per image), not a single string")
    elif len(texts) != batch:
        raise ValueError(f"got {batch} images but {len(texts)} texts; need one text per image")
    if users is not None:
        n_users = users.shape[0] if isinstance(users, Tensor) else len(users)
        if isinstance(users, str) or n_users != batch:
            raise ValueError(f"got {batch} images but users for {n_users}; need one user per image")
    return batch


class Reward(DeviceDtypeMixin, nn.Module, ABC):
    """Base of every reward: validates input, picks grad / no-grad, returns float32 scores (B,).

    Subclasses implement `_score`. Public rewards accept `users` and ignore it, so all rewards share one
    signature; the personalized reward reads it. The reward's own weights are frozen
    (`requires_grad_(False)`), gradients flow to the images only; text features are computed without a graph.
    """

    name: str = "reward"
    needs_texts: bool = True
    default_loss: RewardLoss = RewardLoss()  # −r; subclasses set the scale that suits their range
    frozen: bool = False  # True: stays in eval mode (no dropout) even when a parent module calls .train()

    def train(self, mode: bool = True) -> Reward:
        return super().train(mode and not self.frozen)

    def reference_tensor(self) -> Tensor | None:
        """The first parameter outside the text path (which `offload_text_towers` may park on the CPU): its
        dtype is the one preprocessed pixels are cast to."""
        text = {id(t) for t in self.text_tensors()}
        return next((p for p in self.parameters() if id(p) not in text), None)

    def score(
        self, images: Tensor, texts: Sequence[str] | None, users: Users = None, *, grad: bool = True
    ) -> Tensor:
        """(B, 3, H, W) in [0, 1] + B texts → (B,) float32; `grad=False` builds no graph."""
        return self.checked_score(images, texts, users, grad=grad)

    def checked_score(
        self,
        images: Tensor,
        texts: Sequence[str] | None,
        users: Users = None,
        *,
        grad: bool = True,
        check_range: bool = True,
    ) -> Tensor:
        """`score`; `check_range=False` skips the [0, 1] check (a device sync) for images checked already."""
        check_inputs(images, texts, users, needs_texts=self.needs_texts, check_range=check_range)
        if images.device != self.device:
            raise ValueError(f"images are on {images.device} but the {self.name} reward is on {self.device}")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            scores = self._score(images, None if texts is None else list(texts), users)
        return scores.float()

    def towers(self) -> list[nn.Module]:
        """The big frozen networks (CLIP towers) that `RewardSpeed.tower_dtype` casts; none by default."""
        return []

    def tower_slots(self) -> list[tuple[nn.Module, str, nn.Module]]:
        """(owner, attribute, tower) for image towers that other rewards may share (`share_equal_towers`)."""
        return []

    def text_tensors(self) -> list[Tensor]:
        """Parameters and buffers only the text path reads (what `offload_text_towers` parks); none here."""
        return []

    def place_text_tower(self, device: torch.device | str) -> None:
        """Move the text path's weights to `device` (values unchanged: the text caches are kept)."""
        if move_tensors(self.text_tensors(), device):
            for cache in text_caches(self):
                cache.moved()

    def warm_text_cache(self, texts: Sequence[str], users: Sequence[str] | None = None) -> None:
        """Encode `texts` (this reward's protocol texts) and `users` into the text caches; none by default."""

    def set_text_cache(self, enabled: bool) -> None:
        """Switch the text-feature caches of this reward's towers on or off (off also empties them)."""
        for cache in text_caches(self):
            cache.enabled = enabled
            if not enabled:
                cache.clear()

    def forward(self, images: Tensor, texts: Sequence[str] | None, users: Users = None) -> Tensor:
        return self.score(images, texts, users)

    @abstractmethod
    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        """Inputs already validated; return (B,) scores."""


# --------------------------------------------------------------------------- combiner


@dataclass
class RewardTerm:
    """One reward in the objective: its weight λ, its loss, and an on/off switch."""

    reward: Reward
    weight: float = 0.25  # paper §3.4.2: all λ = 0.25
    loss: RewardLoss = field(default_factory=RewardLoss)
    enabled: bool = True


@dataclass(frozen=True)
class RewardBreakdown:
    """total = Σ weight · loss over enabled terms; per-reward losses (unweighted) and raw scores (B,)."""

    total: Tensor
    losses: dict[str, Tensor]
    scores: dict[str, Tensor]

    def log_values(self) -> dict[str, float]:
        """Flat floats for a logger: `loss/total`, `loss/<name>`, `reward/<name>` (batch mean)."""
        keys = ["loss/total", *(f"loss/{k}" for k in self.losses), *(f"reward/{k}" for k in self.scores)]
        values = [self.total, *self.losses.values(), *(v.mean() for v in self.scores.values())]
        floats = torch.stack([v.detach().float().reshape(()) for v in values]).tolist()  # one device sync
        return dict(zip(keys, floats, strict=True))


class WeightedRewards(nn.Module):
    """L = Σ_i λ_i · loss_i(r_i(images, texts_i, users)) over the enabled rewards.

    `texts` is either one list for all rewards or a mapping name → list (PickScore/HPSv2 score the prompt,
    the CLIP reconstruction term the caption, the personalized reward its own text). Disabled terms are not
    evaluated at all. `speed` (`icg.rewards.fast.RewardSpeed`) takes effect with `optimize(device)`: until
    then every call is the eager path.
    """

    def __init__(self, terms: Mapping[str, RewardTerm], speed: RewardSpeed | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedRewards needs at least one reward term")
        for name, term in terms.items():
            if not isinstance(term.reward, Reward):
                raise ValueError(
                    f"term {name!r}: reward must be an icg.rewards Reward, got {type(term.reward)}"
                )
            if not (math.isfinite(term.weight) and term.weight >= 0):
                raise ValueError(f"term {name!r}: weight must be finite and >= 0, got {term.weight}")
        self.rewards = nn.ModuleDict({name: term.reward for name, term in terms.items()})
        self.weights = {name: float(term.weight) for name, term in terms.items()}
        self.loss_fns = {name: term.loss for name, term in terms.items()}
        self.enabled = {name: bool(term.enabled) for name, term in terms.items()}
        self.speed = speed if speed is not None else RewardSpeed()
        self.active_speed = RewardSpeed.off()  # what forward uses; set by optimize()
        self._shared_towers: set[int] = set()

    @classmethod
    def from_rewards(
        cls, rewards: Mapping[str, Reward], weight: float = 0.25, speed: RewardSpeed | None = None
    ) -> WeightedRewards:
        """Equal weights (paper: 0.25 each), each reward with its own `default_loss`."""
        return cls({name: RewardTerm(r, weight, r.default_loss) for name, r in rewards.items()}, speed)

    def set_enabled(self, name: str, enabled: bool) -> None:
        if name not in self.enabled:
            raise ValueError(f"unknown reward term {name!r}; have {sorted(self.enabled)}")
        self.enabled[name] = enabled

    def optimize(self, device: torch.device | str | None = None) -> RewardSpeed:
        """Apply `self.speed` for `device` (default: where the rewards are): frozen towers cast to the
        tower dtype (this changes the reward modules themselves), text caches on or off, CLIP models with
        equal weights shared; → the options now in force."""
        rewards = [self.rewards[n] for n, on in self.enabled.items() if on]
        if device is None:
            device = rewards[0].device if rewards else torch.device("cpu")
        speed = self.speed.resolved(device)
        if speed.tower_dtype != "fp32":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[speed.tower_dtype]
            for reward in rewards:
                for tower in reward.towers():
                    cast_tower(tower, dtype)
        for reward in rewards:
            reward.set_text_cache(bool(speed.cache_texts))
            if not speed.offload_text_towers:
                reward.place_text_tower(reward.device)
        self._shared_towers = share_equal_towers(rewards) if speed.share_preprocessing else set()
        self.active_speed = speed
        return speed

    @torch.no_grad()
    def warm_text_caches(
        self, texts: Mapping[str, Sequence[str]], users: Sequence[str] | None = None, batch_size: int = 64
    ) -> int:
        """Fill the enabled rewards' text caches ahead of training (texts: name → strings, users: profile
        sentences; any lengths), in batches; → strings encoded. A no-op for caches that are off."""
        before = sum(c.misses for r in self.rewards.values() for c in text_caches(r))
        for name, on in self.enabled.items():
            if on and any(c.enabled for c in text_caches(self.rewards[name])):
                warm_reward_texts(self.rewards[name], texts.get(name, []), users or [], batch_size)
        return sum(c.misses for r in self.rewards.values() for c in text_caches(r)) - before

    def offload_text_towers(self, device: torch.device | str = "cpu") -> None:
        """Park the text paths of the enabled rewards whose text cache is on (`offload_text_towers`)."""
        for name, on in self.enabled.items():
            reward = self.rewards[name]
            if on and any(c.enabled for c in text_caches(reward)):
                reward.place_text_tower(device)

    def _texts_for(self, name: str, texts: Sequence[str] | Mapping[str, Sequence[str]]) -> Sequence[str]:
        if isinstance(texts, Mapping):
            if name not in texts:
                raise ValueError(f"texts mapping has no entry for reward {name!r}; have {sorted(texts)}")
            return texts[name]
        return texts

    def forward(
        self, images: Tensor, texts: Sequence[str] | Mapping[str, Sequence[str]], users: Users = None
    ) -> RewardBreakdown:
        active = [name for name, on in self.enabled.items() if on]
        if not active:
            raise ValueError("all reward terms are disabled; enable at least one")
        speed = self.active_speed
        if not speed.uses_tape:
            return self._eager(active, images, texts, users)
        trains = any(p.requires_grad for n in active for p in self.rewards[n].parameters())
        early = bool(speed.early_backward) and torch.is_grad_enabled() and images.requires_grad and not trains
        source = images.detach().requires_grad_(True) if early else images
        total = images.new_zeros((), dtype=torch.float32)
        losses: dict[str, Tensor] = {}
        scores: dict[str, Tensor] = {}
        with tape(speed, early, self._shared_towers) as shared:
            for i, name in enumerate(active):
                term_texts = self._texts_for(name, texts)
                score = self.rewards[name].checked_score(source, term_texts, users, check_range=i == 0)
                loss = self.loss_fns[name](score)
                if early:  # this reward's activations are freed here, before the next reward runs
                    shared.backward_now(self.weights[name] * loss, source)
                    score, loss = score.detach(), loss.detach()
                scores[name], losses[name] = score, loss
                total = total + self.weights[name] * loss
            if early:
                total = AttachGrad.apply(total, images, shared.finish(source))
        return RewardBreakdown(total=total, losses=losses, scores=scores)

    def _eager(
        self,
        active: list[str],
        images: Tensor,
        texts: Sequence[str] | Mapping[str, Sequence[str]],
        users: Users,
    ) -> RewardBreakdown:
        total = images.new_zeros((), dtype=torch.float32)
        losses: dict[str, Tensor] = {}
        scores: dict[str, Tensor] = {}
        for name in active:
            scores[name] = self.rewards[name].score(images, self._texts_for(name, texts), users)  # (B,)
            losses[name] = self.loss_fns[name](scores[name])
            total = total + self.weights[name] * losses[name]
        return RewardBreakdown(total=total, losses=losses, scores=scores)


# --------------------------------------------------------------------------- checkpoint reading


def read_state_file(path: str | Path, what: str, *, weights_only: bool = True) -> object:
    """torch.load / safetensors a checkpoint file; any failure is a RewardCheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RewardCheckpointError(f"{path}: {what} checkpoint not found (expected a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # any reader error becomes one clear message naming the file
        hint = " (pass weights_only=False only for a file you trust)" if weights_only else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardCheckpointError(f"{path}: cannot read the {what} checkpoint: {first}{hint}") from exc


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """`load_state_dict(strict=True)`, turning a key/shape mismatch into a short error naming the file."""
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        detail = "; ".join(
            f"{label} {len(keys)} (e.g. {keys[:3]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if keys
        )
        raise RewardCheckpointError(
            f"{path}: the {what} checkpoint does not match the model architecture: {detail or exc}"
        ) from exc
