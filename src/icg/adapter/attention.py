"""Dual-path cross-attention (paper §3.3): Z = Attn(Q, K_t, V_t) + scale · Attn(Q, K_p, V_p).

W_q, W_k^t, W_v^t are the layer's own (frozen) projections; the processor holds only W_k^p and W_v^p.

How the personalized tokens reach the processor: as the second element of a tuple
`encoder_hidden_states=(c_t, c_p)`, the mechanism diffusers itself uses for IP-Adapter (its UNet builds
`(text, image_embeds)` in `process_encoder_hidden_states` and the tuple flows unchanged to every `attn2`).
`cross_attention_kwargs` was rejected: diffusers hands them to *every* attention layer, and
`Attention.forward` logs a warning for each key that the self-attention `AttnProcessor2_0` does not declare,
on every call. The text tokens are never concatenated with c_p and sliced off again: a plain tensor means
"no personal tokens" and gives exactly the plain `AttnProcessor2_0` output. Callers build the UNet inputs with
`personalized_unet_inputs`.

The personalization strength knob (`user_scale`, separate from the path's `scale`): c_p = [Proj(C_ref);
Proj(U_pre)] shares one softmax, so the knob re-weights attention rather than adding a third path (which
would change what the trained adapter computes at 1). Each query's unnormalised weight on the N_u user tokens
is multiplied by `user_scale` before the softmax renormalises (log(user_scale) added to their logits, as
Prompt-to-Prompt re-weights a token's attention). 1 is today's adapter bit for bit, 0 drops the user tokens
(exactly the context-only cover), values above 1 lean harder on the user.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

logger = logging.getLogger(__name__)

CROSS_ATTENTION_SUFFIX = "attn2.processor"
InitMode = Literal["text", "zeros"] | None


@dataclass(frozen=True)
class PersonalTokens:
    """c_p (B, M, W) with an optional per-call scale that overrides the processors' own; the last
    `user_tokens` of c_p are Proj(U_pre)'s, weighted by `user_scale` (module docstring)."""

    tokens: torch.Tensor
    scale: float | None = None
    user_tokens: int = 0
    user_scale: float = 1.0


def check_user_scale(user_scale: object) -> float:
    """The personalization strength as a float: finite and ≥ 0 (0 = context only, 1 = as trained)."""
    if (
        isinstance(user_scale, bool)
        or not isinstance(user_scale, int | float)
        or not math.isfinite(user_scale)
    ):
        raise ValueError(f"user_scale must be a finite number ≥ 0, got {user_scale!r}")
    if user_scale < 0:
        raise ValueError(f"user_scale must be ≥ 0 (0 = context only, 1 = as trained), got {user_scale}")
    return float(user_scale)


def user_weighting(
    tokens: torch.Tensor, user_tokens: int, user_scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """c_p (B, M, W) → (the tokens attended to, an additive logit bias (1, 1, 1, M) or None).

    user_scale 1 (or no user tokens) changes nothing; 0 keeps the first M − N_u tokens (no bias, so the
    result is the context-only attention bit for bit); otherwise log(user_scale) on the user tokens' logits.
    """
    user_scale = check_user_scale(user_scale)
    if not 0 <= user_tokens <= tokens.shape[1]:
        raise ValueError(
            f"user_tokens must be in [0, {tokens.shape[1]}] (the length of c_p), got {user_tokens}"
        )
    if user_tokens == 0 or user_scale == 1.0:
        return tokens, None
    if user_scale == 0.0:
        return tokens[:, : tokens.shape[1] - user_tokens], None
    bias = torch.zeros(tokens.shape[1], dtype=dtype, device=tokens.device)
    bias[tokens.shape[1] - user_tokens :] = math.log(user_scale)
    return tokens, bias.view(1, 1, 1, -1)  # broadcast over (B, heads, L, M)


class PersonalKV(nn.Module):
    """The trainable half of a dual-path processor: W_k^p, W_v^p and the default scale, whatever backbone's
    attention they join (`DualPathAttnProcessor` for the UNet, `FluxDualPathAttnProcessor` for Flux)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = 1.0, bias: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.scale = float(scale)
        self.to_k_p = nn.Linear(cross_attention_dim, hidden_size, bias=bias)
        self.to_v_p = nn.Linear(cross_attention_dim, hidden_size, bias=bias)

    def extra_repr(self) -> str:
        dims = f"hidden_size={self.hidden_size}, cross_attention_dim={self.cross_attention_dim}"
        return f"{dims}, scale={self.scale}"

    def split_personal(self, personal: Any) -> tuple[torch.Tensor | None, float, tuple[int, float]]:
        """PersonalTokens | Tensor | None → (c_p or None, the scale of this call, (N_u, user_scale))."""
        scale, user = self.scale, (0, 1.0)
        if isinstance(personal, PersonalTokens):
            scale = self.scale if personal.scale is None else float(personal.scale)
            user = (personal.user_tokens, personal.user_scale)
            personal = personal.tokens
        if personal is not None and not isinstance(personal, torch.Tensor):
            raise ValueError(
                f"personal tokens must be a tensor (B, M, {self.cross_attention_dim}) or PersonalTokens, "
                f"got {type(personal).__name__}"
            )
        return personal, scale, user


class DualPathAttnProcessor(PersonalKV):
    """Cross-attention processor with a second key/value path for the personalized tokens c_p.

    Follows diffusers' `AttnProcessor2_0` step for step (spatial norm, group norm, norm_cross, norm_q/norm_k,
    to_out, residual, rescale), so that without personal tokens, or with scale 0, it is that processor bit for
    bit. With tokens it equals `IPAdapterAttnProcessor2_0` given the same weights (to_k_ip → to_k_p).
    """

    def _split_context(
        self, encoder_hidden_states: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, float, tuple[int, float]]:
        """(c_t, PersonalTokens | Tensor | None) or a plain c_t → (c_t, c_p or None, scale, (N_u, weight))."""
        if not isinstance(encoder_hidden_states, tuple):
            return encoder_hidden_states, None, self.scale, (0, 1.0)
        if len(encoder_hidden_states) != 2:
            raise ValueError(
                "encoder_hidden_states must be a tensor c_t or a pair (c_t, c_p); "
                f"got a tuple of {len(encoder_hidden_states)} items"
            )
        text, personal = encoder_hidden_states
        return (text, *self.split_personal(personal))  # (c_t, c_p, scale, (N_u, user_scale))

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple[torch.Tensor, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        encoder_hidden_states, personal, scale, user = self._split_context(encoder_hidden_states)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(
                1, 2
            )  # (B, L, C)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:  # masks the text tokens only
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, L, H)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)  # (B, T, H)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, L, d)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )  # (B, heads, L, d)
        if personal is not None and scale != 0.0:
            # summed per element in the heads layout, so one transpose/reshape serves both paths (the same
            # values as summing after the reshape); scale 1 skips the multiply (x * 1.0 == x exactly)
            personal_out = self.personal_attention(
                attn, query, personal, batch_size, user
            )  # (B, heads, L, d)
            hidden_states = hidden_states + (personal_out if scale == 1.0 else scale * personal_out)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)  # (B, L, H)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def personal_attention(
        self,
        attn: Attention,
        query: torch.Tensor,
        personal: torch.Tensor,
        batch_size: int,
        user: tuple[int, float] = (0, 1.0),
    ) -> torch.Tensor:
        """Attn(Q, K_p, V_p) with query (B, heads, L, d) and c_p (B, M, W) → (B, heads, L, d); `user` =
        (N_u, user_scale) re-weights the user tokens (`user_weighting`)."""
        check_personal_tokens(
            personal, batch_size, self.cross_attention_dim, "this layer's cross_attention_dim"
        )
        heads = attn.heads
        head_dim = query.shape[-1]
        personal, bias = user_weighting(personal, *user, dtype=query.dtype)
        personal = personal.to(dtype=self.to_k_p.weight.dtype)
        key = self.to_k_p(personal).view(batch_size, -1, heads, head_dim).transpose(1, 2)  # (B, heads, M, d)
        value = self.to_v_p(personal).view(batch_size, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:  # same key space as the text path (None for SD1.5)
            key = attn.norm_k(key)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False
        )  # (B, heads, L, d), query's dtype


def personalized_unet_inputs(
    text_embeds: torch.Tensor,
    personal_tokens: torch.Tensor | None = None,
    scale: float | None = None,
    user_tokens: int = 0,
    user_scale: float = 1.0,
) -> dict[str, Any]:
    """Keyword arguments for `unet(sample, t, **kwargs)`: the one place that knows how c_p is passed.

    text_embeds (B, T, W), personal_tokens (B, M, W) or None; `scale` overrides the installed scale for this
    call only; the last `user_tokens` of c_p are weighted by `user_scale` (module docstring). With
    `personal_tokens=None` the UNet receives the plain text embeddings.
    """
    if not isinstance(text_embeds, torch.Tensor) or text_embeds.ndim != 3:
        shape = (
            tuple(text_embeds.shape) if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
        )
        raise ValueError(f"text_embeds must be a tensor (B, T, W), got {shape}")
    if personal_tokens is None:
        return {"encoder_hidden_states": text_embeds}
    if not isinstance(personal_tokens, torch.Tensor) or personal_tokens.ndim != 3:
        raise ValueError("personal_tokens must be a tensor (B, M, W) or None")
    if personal_tokens.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"personal_tokens batch {personal_tokens.shape[0]} != text_embeds batch {text_embeds.shape[0]}; "
            "with classifier-free guidance stack the unconditional personal tokens the same way as the text"
        )
    check_user_scale(user_scale)
    if not 0 <= user_tokens <= personal_tokens.shape[1]:
        raise ValueError(f"user_tokens must be in [0, {personal_tokens.shape[1]}], got {user_tokens}")
    personal = PersonalTokens(personal_tokens, scale, user_tokens, float(user_scale))
    return {"encoder_hidden_states": (text_embeds, personal)}


class AdapterLayers(nn.Module):
    """The installed processors in `unet.attn_processors` order: give `.parameters()` to an optimizer."""

    def __init__(self, processors: dict[str, DualPathAttnProcessor]) -> None:
        super().__init__()
        self.names: list[str] = list(processors)
        self.layers = nn.ModuleList(processors.values())

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> DualPathAttnProcessor:
        index = self.names.index(key) if isinstance(key, str) else key
        return self.layers[index]  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[str, DualPathAttnProcessor]]:
        yield from zip(self.names, self.layers, strict=True)  # type: ignore[misc]

    @property
    def hidden_sizes(self) -> list[int]:
        return [layer.hidden_size for layer in self.layers]

    def set_scale(self, scale: float) -> None:
        for layer in self.layers:
            layer.scale = float(scale)


def check_personal_tokens(personal: torch.Tensor, batch_size: int, width: int, width_name: str) -> None:
    """c_p must be (B, M, W): one row per latent in the batch, as wide as the layer's K_p/V_p take."""
    if personal.ndim != 3 or personal.shape[0] != batch_size or personal.shape[2] != width:
        raise ValueError(
            f"personal tokens have shape {tuple(personal.shape)}, expected ({batch_size}, M, {width}) to "
            f"match the batch of the latents and {width_name}"
        )


def cross_attention_layers(unet: nn.Module) -> dict[str, Attention]:
    """The `attn2` (cross-attention) modules of a UNet by processor name, in `attn_processors` order."""
    names = [n for n in unet.attn_processors if n.endswith(CROSS_ATTENTION_SUFFIX)]
    return {name: unet.get_submodule(name.removesuffix(".processor")) for name in names}


def layer_widths(attn: Attention, name: str) -> tuple[int, int]:
    """(hidden size from to_q, cross-attention dim from to_k) of one cross-attention layer."""
    hidden = attn.to_q.out_features
    if attn.to_k.out_features != hidden or attn.to_v.out_features != hidden:
        raise ValueError(
            f"{name}: to_q gives {hidden} features but to_k/to_v give {attn.to_k.out_features}/"
            f"{attn.to_v.out_features}; the dual path needs equal query and key widths"
        )
    return hidden, attn.to_k.in_features


def install_dual_path_adapter(unet: nn.Module, scale: float = 1.0, init: InitMode = "text") -> AdapterLayers:
    """Replace every `attn2` processor by a `DualPathAttnProcessor`, freeze the UNet, return the new layers.

    init="text" copies W_k^t/W_v^t into W_k^p/W_v^p (the personal path starts as a second text path);
    init="zeros" starts with V_p = 0, i.e. the output equals the plain UNet's until trained;
    init=None keeps nn.Linear's random init (from torch's global RNG). Other layers keep their processors.
    """
    if init not in ("text", "zeros", None):
        raise ValueError(f"init must be 'text', 'zeros' or None, got {init!r}")
    layers = cross_attention_layers(unet)
    if not layers:
        raise ValueError(f"{type(unet).__name__} has no cross-attention ('{CROSS_ATTENTION_SUFFIX}') layers")
    unet.requires_grad_(False)
    new: dict[str, DualPathAttnProcessor] = {}
    for name, attn in layers.items():
        hidden, cross_dim = layer_widths(attn, name)
        proc = DualPathAttnProcessor(hidden, cross_dim, scale=scale)
        proc.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
        with torch.no_grad():
            if init == "text":
                if attn.to_k.bias is not None or attn.to_v.bias is not None:
                    logger.warning(
                        "%s: to_k/to_v have a bias; the personal path copies the weights only", name
                    )
                proc.to_k_p.weight.copy_(attn.to_k.weight)
                proc.to_v_p.weight.copy_(attn.to_v.weight)
            elif init == "zeros":
                proc.to_k_p.weight.zero_()
                proc.to_v_p.weight.zero_()
        new[name] = proc
    adapter = set_adapter_processors(unet, new)
    logger.info("installed %d dual-path processors (hidden sizes %s)", len(adapter), adapter.hidden_sizes)
    return adapter


def set_adapter_processors(model: nn.Module, new: dict[str, nn.Module]) -> AdapterLayers:
    """Put the new processors in place of `model`'s (the others kept) and return them as trainable layers."""
    model.set_attn_processor({n: new.get(n, p) for n, p in model.attn_processors.items()})
    adapter = AdapterLayers(new)  # type: ignore[arg-type]
    adapter.requires_grad_(True)
    return adapter


def installed_adapter_layers(model: nn.Module, processor: type, install: str) -> AdapterLayers:
    """The `processor` instances already installed on `model`, in attn_processors order; a ValueError
    naming `install` (the function that installs them) when there are none."""
    found = {n: p for n, p in model.attn_processors.items() if isinstance(p, processor)}
    if not found:
        raise ValueError(
            f"no {processor.__name__} is installed on this {type(model).__name__}; call {install} first"
        )
    return AdapterLayers(found)  # type: ignore[arg-type]


def get_adapter_layers(unet: nn.Module) -> AdapterLayers:
    """The dual-path processors already installed on `unet`, in attn_processors order."""
    return installed_adapter_layers(unet, DualPathAttnProcessor, "install_dual_path_adapter")


def set_adapter_scale(unet: nn.Module, scale: float) -> None:
    """Set the personal-path scale of every installed dual-path processor."""
    get_adapter_layers(unet).set_scale(scale)
