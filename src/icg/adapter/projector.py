"""Personalized prompt projector (paper §3.2): c_p = concat(Proj(C_ref) → N_c, Proj(U_pre) → N_u tokens).

`Proj = LayerNorm(Linear(·))`. The context path has the layout of IP-Adapter's `ImageProjModel`
(`proj`: Linear(in → N_c·W), reshape to (B, N_c, W), `norm`: LayerNorm(W)), so an IP-Adapter-SD15 `image_proj`
can initialise it when the dimensions agree (one meta token of the CLIP image-embedding width, N_c = 4).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icg.json_config import JsonConfig
from icg.modules import DeviceDtypeMixin, has_values


@dataclass(frozen=True)
class ProjectorConfig(JsonConfig):
    """Sizes of the projector; `user_dim=None` (or `num_user_tokens=0`) builds the context path only."""

    context_dim: int  # D: hidden size of the MLLM whose meta-token states form C_ref
    num_meta_tokens: int  # N: number of meta tokens in C_ref
    cross_attention_dim: int  # W: width of the backbone's cross-attention context (768 for SD1.5)
    num_context_tokens: int = 4  # N_c
    user_dim: int | None = None  # D_u: width of U_pre from the user tower
    num_user_tokens: int = 4  # N_u (ignored when user_dim is None)

    def __post_init__(self) -> None:
        for name in ("context_dim", "num_meta_tokens", "cross_attention_dim", "num_context_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ProjectorConfig.{name} must be a positive int, got {value!r}")
        if self.user_dim is not None and (not isinstance(self.user_dim, int) or self.user_dim < 1):
            raise ValueError(
                f"ProjectorConfig.user_dim must be a positive int or None, got {self.user_dim!r}"
            )
        if not isinstance(self.num_user_tokens, int) or self.num_user_tokens < 0:
            raise ValueError(
                f"ProjectorConfig.num_user_tokens must be an int >= 0, got {self.num_user_tokens!r}"
            )

    @property
    def has_user_path(self) -> bool:
        return self.user_dim is not None and self.num_user_tokens > 0

    @property
    def num_tokens(self) -> int:
        """Length of c_p when user embeddings are given."""
        return self.num_context_tokens + (self.num_user_tokens if self.has_user_path else 0)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text (`JsonConfig`). Deprecated: `to_json(path)` also writes it; use `save`."""
        if path is not None:
            warnings.warn(
                "ProjectorConfig.to_json(path) is deprecated: use save(path)",
                DeprecationWarning,
                stacklevel=2,
            )
            self.save(path)
        return super().to_json()

    @classmethod
    def from_json(cls, text: str | Path) -> ProjectorConfig:
        """From JSON text. Deprecated: a `Path` reads that file — use `load`."""
        if isinstance(text, Path):
            warnings.warn(
                "ProjectorConfig.from_json(path) is deprecated: use load(path)",
                DeprecationWarning,
                stacklevel=2,
            )
            return cls.load(text)
        return super().from_json(text)


class TokenProjection(nn.Module):
    """LayerNorm(Linear(x)) as tokens: (B, in) → (B, num_tokens, W), as IP-Adapter's ImageProjModel."""

    def __init__(self, in_features: int, num_tokens: int, width: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.width = width
        self.proj = nn.Linear(in_features, num_tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x.to(self.proj.weight.dtype))  # (B, num_tokens·W)
        tokens = tokens.reshape(x.shape[0], self.num_tokens, self.width)  # (B, num_tokens, W)
        return self.norm(tokens)


def _check_input(name: str, x: Any, expected: tuple[int | str, ...]) -> None:
    """Raise ValueError naming the tensor and its expected shape (strings are free dims like 'B')."""
    shown = "(" + ", ".join(str(d) for d in expected) + ")"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shown}, got {type(x).__name__}")
    ok = x.ndim == len(expected) and all(
        isinstance(d, str) or x.shape[i] == d for i, d in enumerate(expected)
    )
    if not ok:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shown}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if has_values(x) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")


class PersonalizedProjector(DeviceDtypeMixin, nn.Module):
    """Builds the personalized context prompt c_p (B, N_c [+ N_u], W) from C_ref and, optionally, U_pre."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.cross_attention_dim
        self.context_proj = TokenProjection(
            config.num_meta_tokens * config.context_dim, config.num_context_tokens, w
        )
        self.user_proj = (
            TokenProjection(config.user_dim, config.num_user_tokens, w) if config.has_user_path else None
        )

    def forward(self, context_embeds: torch.Tensor, user_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """context_embeds (B, N, D), user_embeds (B, D_u) or None → c_p (B, N_c [+ N_u], W)."""
        cfg = self.config
        _check_input("context_embeds (C_ref)", context_embeds, ("B", cfg.num_meta_tokens, cfg.context_dim))
        batch = context_embeds.shape[0]
        c_p = self.context_proj(context_embeds.reshape(batch, -1))  # (B, N_c, W)
        if user_embeds is None:
            return c_p
        if self.user_proj is None:
            raise ValueError(
                "user_embeds (U_pre) were given but this projector has no user path "
                "(ProjectorConfig.user_dim is None or num_user_tokens is 0)"
            )
        _check_input("user_embeds (U_pre)", user_embeds, (batch, cfg.user_dim))
        u_p = self.user_proj(user_embeds)  # (B, N_u, W)
        return torch.cat([c_p, u_p], dim=1)  # (B, N_c + N_u, W)
