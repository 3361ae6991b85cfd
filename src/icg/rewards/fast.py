"""Speed options for scoring rewards inside a training step (issue 20), and the pieces that implement them.

    objective = WeightedRewards(terms)                 # speed=RewardSpeed(): auto, on CUDA only
    objective.optimize(device)                         # casts the towers, turns the text caches on
    objective = WeightedRewards(terms, speed=RewardSpeed.off())   # the eager fp32 path everywhere

Each option is a field of `RewardSpeed`; None means "auto": on when the rewards sit on CUDA, off elsewhere,
so the CPU path stays the eager reference the options are tested against (tests/rewards/test_fast.py).
- `tower_dtype` ("bf16"): the frozen CLIP towers' weights in bf16 (under autocast they ran in bf16 anyway;
  fp32 weights cost a cast copy per op and those copies stay alive for the backward). Scalars (logit_scale)
  and the small heads stay fp32; features are L2-normalised and dotted in fp32. Scores within 1e-2 of fp32
  (cosine units; PickScore's logits are 100 × a cosine: 1e-2 · logit_scale).
- `cache_texts`: text features are computed once per string (no graph) and kept, per tower; the cache is
  keyed by the weights' identity and version, so an in-place update or a `.to()` empties it. Exact.
- `share_preprocessing`: images → pixels (resize, crop/pad, normalise) once per distinct plan in a
  `WeightedRewards` call, not once per reward (HPSv2's pad and CLIP's crop are the same plan on a square
  image); image features once per CLIP model that several rewards share. Exact.
- `matmul_resize`: the antialiased bicubic resize as two matrix products whose matrices are that resize
  applied to the identity: the same weights, a fast backward. Within 1e-5 of `F.interpolate`.
- `offload_text_towers`: once every text of the run is cached (`AdapterStep.warm_reward_texts`), the text
  towers wait on the CPU (≈ 1.8 GiB of bf16 weights for the four SD1.5 rewards); a text seen only later is
  encoded there (slow, logged) or by `WeightedRewards.warm_text_caches`, which brings them back for it. Exact.
- `cuda_graphs` (opt-in, off in auto and `on()`: not yet measured on a device): each frozen image tower's
  forward + backward captured once per input shape as CUDA graphs and replayed (b1 is launch-bound: ~60
  kernels per layer); used only inside an `early_backward` call, at most once per tower per call, else eager.
  Each graph keeps its activations in a private pool: more memory per distinct batch size.
- `early_backward`: each reward's backward to the (shared) pixels runs inside the forward, right after its
  score, so one reward's activations live at a time; the image gradient is attached to the returned total
  (`AttachGrad`) and flows into the decoder in the caller's backward. Same gradient to fp32 rounding; only
  `total` carries a graph (per-reward losses and scores come back detached); off when a reward trains.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = ("cache_texts", "share_preprocessing", "matmul_resize", "early_backward", "offload_text_towers")


@dataclass(frozen=True)
class RewardSpeed:
    """Which speed options the rewards use; None = auto (on for CUDA, off elsewhere)."""

    tower_dtype: str | None = (
        None  # "bf16" | "fp16" | "fp32"; auto: bf16 on CUDA, weights untouched elsewhere
    )
    cache_texts: bool | None = None
    share_preprocessing: bool | None = None
    matmul_resize: bool | None = None
    early_backward: bool | None = None
    offload_text_towers: bool | None = None
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.tower_dtype is not None and self.tower_dtype not in DTYPES:
            raise ValueError(f"tower_dtype must be one of {sorted(DTYPES)} or None, got {self.tower_dtype!r}")

    @classmethod
    def off(cls) -> RewardSpeed:
        """The eager path: weights as loaded, no caches, one preprocessing and one backward per reward."""
        return cls("fp32", False, False, False, False, False)

    @classmethod
    def on(cls, tower_dtype: str = "bf16", cuda_graphs: bool = False) -> RewardSpeed:
        return cls(tower_dtype, True, True, True, True, True, cuda_graphs)

    def resolved(self, device: torch.device | str) -> RewardSpeed:
        """Auto fields decided for `device`: every option on for CUDA, off elsewhere."""
        cuda = torch.device(device).type == "cuda"
        dtype = self.tower_dtype if self.tower_dtype is not None else ("bf16" if cuda else "fp32")
        flags = {name: cuda if getattr(self, name) is None else getattr(self, name) for name in OPTIONS}
        return dataclasses.replace(self, tower_dtype=dtype, **flags)

    @property
    def uses_tape(self) -> bool:
        return bool(self.share_preprocessing or self.matmul_resize or self.early_backward)


# --------------------------------------------------------------------------- tower dtype


def cast_tower(module: nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights and float buffers of `module` to `dtype`, except scalars (logit_scale stays exact);
    a tower with a trainable parameter is left alone (its optimizer wants fp32)."""
    if any(p.requires_grad for p in module.parameters()):
        return
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and tensor.ndim > 0 and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def share_equal_towers(rewards: Sequence[nn.Module]) -> set[int]:
    """Rewards whose towers are the same module, or modules of one class with equal weights (e.g. the
    CLIP reward and the aesthetic reward on one CLIP ViT-L/14 folder), are made to hold one module;
    → ids of the towers more than one reward holds (their image features are shared per call)."""
    kept: list[nn.Module] = []
    uses: dict[int, int] = {}
    for reward in rewards:
        for owner, attr, tower in reward.tower_slots():
            same = next((k for k in kept if k is tower or _equal_modules(k, tower)), None)
            if same is None:
                kept.append(tower)
                same = tower
            elif same is not tower:
                setattr(owner, attr, same)
            uses[id(same)] = uses.get(id(same), 0) + 1
    return {key for key, n in uses.items() if n > 1}


def _equal_modules(a: nn.Module, b: nn.Module) -> bool:
    if type(a) is not type(b) or any(p.requires_grad for p in (*a.parameters(), *b.parameters())):
        return False
    config_a, config_b = getattr(a, "config", None), getattr(b, "config", None)
    if config_a is not None and config_b is not None and config_a.to_dict() != config_b.to_dict():
        return False
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    with torch.no_grad():
        return all(
            sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device
            and torch.equal(sa[k], sb[k])
            for k in sa
        )  # fmt: skip


# --------------------------------------------------------------------------- text-feature cache


class TextFeatureCache:
    """Features of strings under frozen weights, computed once: `lookup(texts, encode, params)` → (B, D).

    Used only when enabled, the module is in eval mode and no graph is wanted through `params` (a reward
    model being trained bypasses it). Emptied whenever a weight is replaced, moved or changed in place."""

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self.enabled = False
        self.max_entries = max_entries
        self._store: dict[str, Tensor] = {}
        self._stamp: tuple | str | None = None
        self.misses = 0
        self.forbid_misses = False  # a miss raises LookupError (a parked text tower is not used by accident)

    def moved(self) -> None:
        """The weights were moved without changing their values: the next lookup keeps what is cached."""
        self._stamp = "moved"

    def clear(self) -> None:
        self._store.clear()
        self._stamp = None

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def _weights_stamp(params: Sequence[Tensor]) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in params)

    def lookup(
        self,
        texts: Sequence[str],
        encode: Callable[[list[str]], Tensor],
        params: Sequence[Tensor],
        *,
        training: bool = False,
    ) -> Tensor:
        grad_wanted = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if not self.enabled or training or grad_wanted:
            return encode(list(texts))
        stamp = self._weights_stamp(params)
        if self._stamp == "moved":
            self._stamp = stamp
        elif stamp != self._stamp:
            self.clear()
            self._stamp = stamp
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        if missing and self.forbid_misses:
            raise LookupError(f"{len(missing)} texts are not cached")
        if missing:
            self.misses += len(missing)
            with torch.no_grad():
                feats = encode(missing)  # (M, D)
            for text, row in zip(missing, feats, strict=True):
                self._store[text] = row
            while len(self._store) > self.max_entries:  # oldest first
                self._store.pop(next(iter(self._store)))
        return torch.stack([self._store[t] for t in texts])  # (B, D)


def move_tensors(tensors: Iterable[Tensor], device: torch.device | str) -> bool:
    """Move parameters / buffers in place (`.data`), the module objects unchanged; → whether any moved."""
    moved = False
    for tensor in tensors:
        if tensor.device != torch.device(device):
            tensor.data = tensor.data.to(device)
            moved = True
    return moved


def warm_reward_texts(reward: Any, texts: Sequence[str], users: Sequence[str], batch_size: int) -> None:
    """`reward.warm_text_cache` over the distinct strings in batches; a parked text tower (offloaded) comes
    back to the reward's device only when some string is not cached yet, and is parked again after."""
    strings, people = list(dict.fromkeys(texts)), list(dict.fromkeys(users))

    def warm() -> None:
        for start in range(0, max(len(strings), len(people)), batch_size):
            part = strings[start : start + batch_size]
            reward.warm_text_cache(part, people[start : start + batch_size] or None)

    parked = [t.device for t in reward.text_tensors()[:1] if t.device != reward.device]
    if not parked:
        warm()
        return
    caches = list(text_caches(reward))
    try:  # everything cached already: the parked text tower stays where it is
        for cache in caches:
            cache.forbid_misses = True
        warm()
        return
    except LookupError:
        pass
    finally:
        for cache in caches:
            cache.forbid_misses = False
    reward.place_text_tower(reward.device)  # back on the device for the misses, then parked again
    try:
        warm()
    finally:
        reward.place_text_tower(parked[0])


def text_caches(module: nn.Module) -> Iterator[TextFeatureCache]:
    for sub in module.modules():
        cache = getattr(sub, "text_cache", None)
        if isinstance(cache, TextFeatureCache):
            yield cache


# --------------------------------------------------------------------------- resize as matrix products

_RESIZE_MATRICES: dict[tuple, Tensor] = {}


def resize_matrix(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """(n_in, n_out): row i = the 1-D antialiased bicubic resize of the unit vector e_i (torch's own weights;
    an axis kept at its size resizes as the identity)."""
    key = (n_in, n_out, str(device))
    if key not in _RESIZE_MATRICES:
        eye = torch.eye(n_in, device=device, dtype=torch.float32)[None, None]  # (1, 1, n_in, n_in)
        out = F.interpolate(eye, size=(n_in, n_out), mode="bicubic", align_corners=False, antialias=True)
        _RESIZE_MATRICES[key] = out[0, 0].contiguous()
    return _RESIZE_MATRICES[key]


def resize_matmul(images: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, C, H, W) float32 → (B, C, *hw), = F.interpolate(bicubic, antialias) to fp32 rounding."""
    h, w = images.shape[-2:]
    rows = resize_matrix(h, hw[0], images.device).T  # (h_out, H)
    cols = resize_matrix(w, hw[1], images.device)  # (W, w_out)
    return rows @ (images @ cols)  # (B, C, h_out, w_out)


# --------------------------------------------------------------------------- the per-call tape


@dataclass
class _Entry:
    out: Tensor  # with its graph back to the tape's inputs
    leaf: Tensor  # what the rewards got: `out` itself, or a detached copy that collects their gradient
    anchor: Any  # keeps the key's tensors alive (ids stay unique while the tape lives)


class Tape:
    """One `WeightedRewards` call: results shared between rewards (pixels per plan, features per shared
    tower) and, with `detach`, the early backward's gradient bookkeeping."""

    _serials = itertools.count()

    def __init__(self, speed: RewardSpeed, detach: bool, shared_towers: Iterable[int] = ()) -> None:
        self.speed, self.detach = speed, detach
        self.serial = next(Tape._serials)
        self.shared_towers = set(shared_towers)
        self.entries: dict[tuple, _Entry] = {}
        self.grads: dict[int, Tensor] = {}  # id(leaf) → accumulated gradient

    def shared(self, key: tuple, anchor: Any, compute: Callable[[], Tensor]) -> Tensor:
        """`compute()` once per key while the tape lives (share_preprocessing), else every time."""
        if not self.speed.share_preprocessing:
            return compute()
        if key in self.entries:
            return self.entries[key].leaf
        out = compute()
        leaf = out.detach().requires_grad_(True) if self.detach and out.requires_grad else out
        self.entries[key] = _Entry(out, leaf, anchor)
        return leaf

    def _leaves(self, source: Tensor) -> list[Tensor]:
        return [source, *(e.leaf for e in self.entries.values() if e.leaf is not e.out)]

    def _add(self, inputs: list[Tensor], grads: Sequence[Tensor | None]) -> None:
        for leaf, grad in zip(inputs, grads, strict=True):
            if grad is not None:
                key = id(leaf)
                self.grads[key] = grad if key not in self.grads else self.grads[key] + grad

    def backward_now(self, output: Tensor, source: Tensor) -> None:
        """d output / d (source and the shared leaves), accumulated; frees `output`'s graph."""
        if not output.requires_grad:
            return
        inputs = self._leaves(source)
        self._add(inputs, torch.autograd.grad(output, inputs, allow_unused=True))

    def finish(self, source: Tensor) -> Tensor:
        """Push the shared leaves' gradients back to `source` (newest entry first: a topological order)."""
        entries = [e for e in self.entries.values() if e.leaf is not e.out]
        for i in range(len(entries) - 1, -1, -1):
            entry = entries[i]
            grad = self.grads.pop(id(entry.leaf), None)
            if grad is None:
                continue
            inputs = [source, *(e.leaf for e in entries[:i])]
            self._add(inputs, torch.autograd.grad(entry.out, inputs, grad, allow_unused=True))
        grad = self.grads.get(id(source))
        return torch.zeros_like(source) if grad is None else grad


_TAPE: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("icg_reward_tape", default=None)


def current_tape() -> Tape | None:
    return _TAPE.get()


@contextmanager
def tape(speed: RewardSpeed, detach: bool, shared_towers: Iterable[int] = ()) -> Iterator[Tape]:
    active = Tape(speed, detach, shared_towers)
    token = _TAPE.set(active)
    try:
        yield active
    finally:
        _TAPE.reset(token)


class TowerGraphs:
    """`fn(pixels) → features` of one frozen image tower, replayed from CUDA graphs (forward + backward) per
    input (shape, dtype, weights) when the current call allows it (`RewardSpeed.cuda_graphs`, inside an
    early-backward call, once per tower per call: a second replay before the first one's backward would
    overwrite the activations that backward reads); everywhere else `fn` itself."""

    device_type = "cuda"  # where graphs are captured (a test points it elsewhere to check the gating)

    def __init__(self, fn: Callable[[Tensor], Tensor], weights: Callable[[], Sequence[Tensor]]) -> None:
        self.fn, self.weights = fn, weights
        self.graphs: dict[tuple, Callable[..., Tensor]] = {}
        self._last_serial = -1

    def __call__(self, pixels: Tensor) -> Tensor:
        tape = current_tape()
        if (
            tape is None
            or not (tape.speed.cuda_graphs and tape.detach)
            or tape.serial == self._last_serial
            or pixels.device.type != self.device_type
            or not (pixels.requires_grad and torch.is_grad_enabled())
        ):
            return self.fn(pixels)
        weights = self.weights()
        if any(w.requires_grad for w in weights):  # a tower in training: its weight gradients are wanted
            return self.fn(pixels)
        autocast = torch.is_autocast_enabled(self.device_type)
        key = (tuple(pixels.shape), pixels.dtype, autocast, weights[0].data_ptr(), weights[0].dtype)
        graphed = self.graphs.get(key)
        if graphed is None:
            sample = pixels.detach().clone().requires_grad_(True)
            kind = self.device_type
            ctx = (
                torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)
                if autocast
                else nullcontext()
            )
            with ctx:  # make_graphed_callables refuses autocast's weight cache
                graphed = torch.cuda.make_graphed_callables(self.fn, (sample,))
            self.graphs[key] = graphed
        self._last_serial = tape.serial
        return graphed(pixels).clone()  # (B, D); the graph's output buffer is reused by the next replay


class AttachGrad(torch.autograd.Function):
    """total (no graph) + images + d total / d images computed already → total whose backward sends
    `grad · upstream` to the images (and on into the decoder)."""

    @staticmethod
    def forward(ctx: Any, total: Tensor, images: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.images_dtype = images.dtype
        return total.detach().clone()

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[None, Tensor, None]:
        (grad,) = ctx.saved_tensors
        return None, (grad * upstream).to(ctx.images_dtype), None
