"""The backbone interface: what a cover pipeline and the adapter trainer need of a frozen diffusion model.

A `Backbone` wraps a cover pipeline's own components (read at each call, so `pipe.to(...)` or a swapped
scheduler is seen) and owns the one denoising loop, `rollout`, that generation, the adapter trainer's ReFL
steps, its sample grids and its guard all run: they cannot drift apart.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from icg.adapter.checkpoint import BACKBONES
from icg.errors import ICGError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# one step of the loop: (latents, step index, timestep) → the scheduler's model output (noise or velocity)
Predict = Callable[[Tensor, int, Tensor], Tensor]
Generators = list[torch.Generator]  # one seeded generator per cover


@dataclass(frozen=True)
class RolloutSettings:
    """How one rollout runs. `stop` is the last step index run (None: every step); gradients flow through
    the last `grad_steps` steps up to `stop` (0: none, the pipelines); `predict_x0` decodes the stop step's
    x̂0 (ReFL's one-step prediction) instead of its x_{t−1}; `latent_dtype` None means the text's dtype."""

    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    stop: int | None = None
    grad_steps: int = 0
    predict_x0: bool = False
    adapter_scale: float | None = None
    user_tokens: int = 0
    user_scale: float = 1.0
    true_cfg_scale: float = 1.0  # Flux only: classifier-free guidance on top of the embedded guidance
    latent_dtype: torch.dtype | None = None
    scheduler: Any = None  # None: the pipeline's (the trainer runs on a scheduler of its own)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids asking the hub for a backbone (any value but 0/false/empty)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_folder(
    base_model: str, classes: dict[str, type], torch_dtype: torch.dtype, what: str
) -> dict[str, Any]:
    """Each component of a diffusers folder or hub id (subfolder = its name) with its class's own
    `from_pretrained`, networks in `torch_dtype`, frozen: an ICGError naming `what` when one cannot load."""
    common = {"local_files_only": hub_offline() or Path(base_model).exists()}
    parts = {}
    try:
        for name, cls in classes.items():
            typed = {"torch_dtype": torch_dtype} if issubclass(cls, nn.Module) else {}
            parts[name] = cls.from_pretrained(base_model, subfolder=name, **common, **typed)
    except (OSError, ValueError) as exc:
        raise ICGError(f"cannot load {what} from '{base_model}': {str(exc).splitlines()[0]}") from exc
    return frozen(parts)


def frozen(parts: dict[str, Any]) -> dict[str, Any]:
    """`parts` with every network frozen and in eval mode (the backbone never trains)."""
    for part in parts.values():
        if isinstance(part, nn.Module):
            part.requires_grad_(False).eval()
    return parts


def guide(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: the unconditional output pushed `scale` times towards the conditional."""
    return uncond + scale * (cond - uncond)


def backbone_kind(obj: Any) -> str:
    """The backbone, "sd15" or "flux", of a name, a preset or adapter config (`.backbone`), a `Backbone` or a
    cover pipeline (by its denoiser: a `transformer` is Flux, a `unet` SD1.5): the one place that tells."""
    if isinstance(obj, Backbone):
        return obj.kind
    kind = obj if isinstance(obj, str) else getattr(obj, "backbone", None)
    if isinstance(kind, Backbone):
        return kind.kind
    if kind is None:
        if getattr(obj, "transformer", None) is not None:
            kind = "flux"
        elif getattr(obj, "unet", None) is not None:
            kind = "sd15"
    if kind not in BACKBONES:
        raise ValueError(f"backbone {kind!r} is not supported ({' or '.join(BACKBONES)})")
    return kind


class AdapterFunctions(NamedTuple):
    """The dual-path functions of one denoiser class (`icg.adapter`): install (denoiser, init=…) → layers,
    load (folder, denoiser) → (layers, projector or None), layers (denoiser) → the installed layers."""

    install: Callable[..., nn.Module]
    load: Callable[[str, nn.Module], tuple[nn.Module, Any]]
    layers: Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class Conditioning:
    """What one rollout is conditioned on: the backbone's text conditioning, c_p and its unconditional twin
    (the projector of zeros, for guidance with an unconditional branch)."""

    text: Any
    cond_p: Tensor
    uncond_p: Tensor


class Backbone(ABC):
    """One frozen backbone of a cover pipeline: prompt encoding, initial noise, the rollout, decoding.

    A backbone names its pipeline components (`denoiser_name`, `text_encoder_names`) and its `dual_path`
    functions, loads its components, and implements the backbone-specific halves of the loop (`sampler`,
    `step`, `decode`); `rollout` itself is written once."""

    kind: ClassVar[str]
    denoiser_name: ClassVar[str]  # the pipeline component the dual-path adapter is installed in
    text_encoder_names: ClassVar[tuple[str, ...]]  # the frozen text encoders, for the trainer
    dual_path: ClassVar[AdapterFunctions]  # the dual-path adapter functions of this denoiser
    personal_width_key: ClassVar[str]  # the denoiser config's width of the context c_p joins

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def text_encoders(self) -> tuple[nn.Module, ...]:
        return tuple(getattr(self.pipe, name) for name in self.text_encoder_names)

    def adapter_layers(self) -> nn.Module:
        """The dual path's trainable layers in `denoiser`."""
        return self.dual_path.layers(self.denoiser)

    # --- loading (before a pipeline exists: class methods) -------------------------------------------------
    @classmethod
    @abstractmethod
    def load_components(
        cls, base_model: str, base_config: str | None = None, torch_dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """The frozen backbone's components, by pipeline component name, from a diffusers folder or hub id
        (or a single file with its config folder, where the backbone supports it)."""

    @classmethod
    def install_adapter(cls, denoiser: nn.Module) -> nn.Module:
        """A fresh (zero-initialized) dual path in `denoiser`: covers equal the plain backbone's."""
        return cls.dual_path.install(denoiser, init="zeros")

    @classmethod
    def load_adapter(cls, directory: str, denoiser: nn.Module) -> tuple[nn.Module, Any]:
        """The saved dual path installed in `denoiser` → (adapter layers, projector or None)."""
        return cls.dual_path.load(directory, denoiser)

    @classmethod
    def personal_width(cls, denoiser: nn.Module) -> int:
        """W: the width of c_p that `denoiser`'s attention takes (the projector's output)."""
        return getattr(denoiser.config, cls.personal_width_key)

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Any:
        """The text conditioning of `prompts` (one entry per prompt; its type is the backbone's)."""

    @abstractmethod
    def sampler(
        self, cond: Conditioning, generators: Generators, settings: RolloutSettings, device: torch.device
    ) -> tuple[Tensor, Tensor, Predict]:
        """(initial latents, the timesteps set on `settings.scheduler`, one step's model output): the
        backbone's half of `rollout`; the loop, stop step, gradient window and decoding are the rollout's."""

    @abstractmethod
    def step(
        self, scheduler: Any, output: Tensor, index: int, t: Tensor, latents: Tensor, want_x0: bool
    ) -> tuple[Tensor, Tensor | None]:
        """(x_{t−1}, x̂0 when `want_x0`) of one scheduler step."""

    @abstractmethod
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Latents → images (B, 3, H, W) in [0, 1], in the latents' dtype."""

    def take(self, text: Any, index: Tensor) -> Any:
        """The rows `index` of a text conditioning: each item's prompt encoded once, one row per cover."""
        return text[index]

    def text_dtype(self, text: Any) -> torch.dtype:
        """The dtype the pipelines draw their noise in: the text conditioning's."""
        return text.dtype

    def rollout(
        self,
        text: Any,
        cond_p: Tensor,
        uncond_p: Tensor,
        seeds: list[int],
        settings: RolloutSettings,
        device: torch.device,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> Tensor:
        """Images (B, 3, H, W) in [0, 1]: cover b from noise seeded with `seeds[b]`, denoised to step
        `settings.stop`, conditioned on `text` and c_p (`uncond_p` for the unconditional branch, when
        guidance has one). The pipelines and the adapter trainer both call this."""
        scheduler = self.pipe.scheduler if settings.scheduler is None else settings.scheduler
        dtype = self.text_dtype(text) if settings.latent_dtype is None else settings.latent_dtype
        settings = replace(settings, latent_dtype=dtype, scheduler=scheduler)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents, timesteps, predict = self.sampler(
            Conditioning(text, cond_p, uncond_p), generators, settings, device
        )
        last = len(timesteps) - 1 if settings.stop is None else settings.stop
        steps = timesteps[: last + 1]
        x0 = None
        for i, t in enumerate(steps if progress is None else progress(steps)):
            with torch.set_grad_enabled(i > last - settings.grad_steps):
                output = predict(latents, i, t)
                want_x0 = settings.predict_x0 and i == last
                latents, x0 = self.step(scheduler, output, i, t, latents, want_x0)
        return self.decode(x0 if settings.predict_x0 else latents, settings.height, settings.width)
