"""Dual-path attention for Flux (paper §3.3 on a FLUX.1 transformer): image queries also attend to c_p.

Flux has no separate cross-attention: its double-stream blocks attend jointly over [text; image] tokens. The
personal path follows diffusers' `FluxIPAdapterAttnProcessor` (IP-Adapter-Flux) exactly: the image tokens'
queries (after `norm_q`, before RoPE) attend to K_p = W_k^p c_p, V_p = W_v^p c_p, and the result, times the
scale, is returned as a third output that `FluxTransformerBlock` adds to the image stream after its
feed-forward. Only the double-stream blocks get the processor (single-stream blocks keep `FluxAttnProcessor`),
the same layers diffusers gives IP-Adapter-Flux, so an IP-Adapter-Flux checkpoint initialises it one to one.

How c_p reaches the processor: `joint_attention_kwargs={"ip_hidden_states": c_p}` (see
`personalized_flux_kwargs`). That key is the one `FluxAttention.forward` drops quietly for processors that do
not take it, so the single-stream blocks neither see it nor log a warning on every call. Without personal
tokens, or at scale 0, the processor returns exactly what `FluxAttnProcessor` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from icg.adapter.attention import (
    AdapterLayers,
    InitMode,
    PersonalKV,
    PersonalTokens,
    check_personal_tokens,
    check_user_scale,
    installed_adapter_layers,
    set_adapter_processors,
    user_weighting,
)
from icg.adapter.checkpoint import (
    AdapterCheckpointConfig,
    IPAdapterImport,
    check_layers_match,
    import_image_proj,
    load_adapter_folder,
    read_ip_adapter_state_dict,
)
from icg.adapter.projector import PersonalizedProjector

logger = logging.getLogger(__name__)

DOUBLE_BLOCK_PREFIX = "transformer_blocks."
PERSONAL_KWARG = "ip_hidden_states"  # quiet in FluxAttention.forward for processors that do not take it


def qkv_projections(
    attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, ...]:
    """Q, K, V of the image tokens and of the text tokens (None without them) from a `FluxAttention`'s public
    layers, fused (`to_qkv`/`to_added_qkv` after `fuse_projections()`) or not. What diffusers' private
    `transformer_flux._get_qkv_projections` does; ICG keeps its own copy so no private name is imported
    (tests/adapter/test_flux_attention.py: equal to `FluxAttnProcessor`, fused and unfused)."""
    encoder_query = encoder_key = encoder_value = None
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)  # each (B, L, H)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            encoder_query, encoder_key, encoder_value = attn.to_added_qkv(encoder_hidden_states).chunk(
                3, dim=-1
            )
        return query, key, value, encoder_query, encoder_key, encoder_value
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        encoder_query = attn.add_q_proj(encoder_hidden_states)  # (B, T, H)
        encoder_key = attn.add_k_proj(encoder_hidden_states)
        encoder_value = attn.add_v_proj(encoder_hidden_states)
    return query, key, value, encoder_query, encoder_key, encoder_value


class FluxDualPathAttnProcessor(PersonalKV):
    """Flux joint-attention processor with a second key/value path for the personalized tokens c_p.

    Holds only W_k^p and W_v^p (with bias, as IP-Adapter-Flux's `to_k_ip`/`to_v_ip`). The text/image joint
    attention is `FluxAttnProcessor`'s, line for line, so scale 0 or no tokens reproduces it bit for bit.
    """

    _attention_backend = None  # set by diffusers' `set_attention_backend`, as on its own processors
    _parallel_config = None

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = 1.0) -> None:
        super().__init__(hidden_size, cross_attention_dim, scale, bias=True)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ip_hidden_states: PersonalTokens | torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        personal, scale, user = self.split_personal(ip_hidden_states)
        query, key, value, encoder_query, encoder_key, encoder_value = qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))  # (B, L, heads, d)
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        image_query = query  # the personal path's query: image tokens only, no RoPE (as IP-Adapter-Flux)

        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))  # (B, T, heads, d)
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)  # (B, T + L, heads, d)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)  # (B, T + L, H)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is None:  # a single-stream block: no personal path there
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[0](hidden_states.contiguous())  # (B, L, H)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())  # (B, T, H)
        if personal is None or scale == 0.0:
            return hidden_states, encoder_hidden_states
        personal_out = self.personal_attention(attn, image_query, personal, user)  # (B, L, H)
        # the block adds this third output to the image stream after its feed-forward (ungated)
        return hidden_states, encoder_hidden_states, personal_out if scale == 1.0 else scale * personal_out

    def personal_attention(
        self, attn: nn.Module, query: torch.Tensor, personal: torch.Tensor, user: tuple[int, float] = (0, 1.0)
    ) -> torch.Tensor:
        """Attn(Q, K_p, V_p) with query (B, L, heads, d) and c_p (B, M, W) → (B, L, heads·d); `user` =
        (N_u, user_scale) re-weights the user tokens (`icg.adapter.attention.user_weighting`)."""
        batch_size = query.shape[0]
        check_personal_tokens(
            personal, batch_size, self.cross_attention_dim, "the transformer's joint_attention_dim"
        )
        personal, bias = user_weighting(personal, *user, dtype=query.dtype)
        personal = personal.to(dtype=self.to_k_p.weight.dtype)
        key = self.to_k_p(personal).view(batch_size, -1, attn.heads, attn.head_dim)  # (B, M, heads, d)
        value = self.to_v_p(personal).view(batch_size, -1, attn.heads, attn.head_dim)
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=bias,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )  # (B, L, heads, d)
        return out.reshape(batch_size, -1, attn.heads * attn.head_dim).to(query.dtype)


def personalized_flux_kwargs(
    personal_tokens: torch.Tensor | None,
    scale: float | None = None,
    user_tokens: int = 0,
    user_scale: float = 1.0,
) -> dict[str, Any] | None:
    """`joint_attention_kwargs` for `transformer(...)`: the one place that knows how c_p is passed to Flux.

    personal_tokens (B, M, W) or None (the plain transformer); `scale` overrides the installed scale for this
    call only; the last `user_tokens` of c_p are weighted by `user_scale` (as in the UNet processor).
    """
    if personal_tokens is None:
        return None
    if not isinstance(personal_tokens, torch.Tensor) or personal_tokens.ndim != 3:
        raise ValueError("personal_tokens must be a tensor (B, M, W) or None")
    check_user_scale(user_scale)
    if not 0 <= user_tokens <= personal_tokens.shape[1]:
        raise ValueError(f"user_tokens must be in [0, {personal_tokens.shape[1]}], got {user_tokens}")
    return {PERSONAL_KWARG: PersonalTokens(personal_tokens, scale, user_tokens, float(user_scale))}


def joint_attention_layers(transformer: nn.Module) -> dict[str, nn.Module]:
    """The double-stream (joint text/image) attention modules by processor name, in attn_processors order."""
    names = [n for n in transformer.attn_processors if n.startswith(DOUBLE_BLOCK_PREFIX)]
    return {name: transformer.get_submodule(name.removesuffix(".processor")) for name in names}


def flux_layer_widths(transformer: nn.Module, attn: nn.Module, name: str) -> tuple[int, int]:
    """(hidden size from to_q, width of c_p = the transformer's joint_attention_dim) of one layer."""
    hidden = attn.to_q.out_features
    if attn.added_kv_proj_dim is None:
        raise ValueError(f"{name} is not a joint (double-stream) attention layer: it has no added K/V")
    return hidden, int(transformer.config.joint_attention_dim)


def install_flux_dual_path_adapter(
    transformer: nn.Module, scale: float = 1.0, init: InitMode = "zeros"
) -> AdapterLayers:
    """Give every double-stream block a `FluxDualPathAttnProcessor`; freeze the transformer; return them.

    init="zeros" starts with V_p = 0 (weight and bias), so the output equals the plain transformer's until
    trained; init=None keeps nn.Linear's random init (torch's global RNG). "text" (copy the text K/V) is not
    offered: Flux's text K/V (`add_k_proj`) read the context-embedded T5 states, not raw c_p, so a copy has no
    meaning here. Single-stream blocks keep their processors.
    """
    if init not in ("zeros", None):
        raise ValueError(f"init must be 'zeros' or None for Flux, got {init!r}")
    layers = joint_attention_layers(transformer)
    if not layers:
        raise ValueError(
            f"{type(transformer).__name__} has no double-stream ('{DOUBLE_BLOCK_PREFIX}') layers"
        )
    transformer.requires_grad_(False)
    new: dict[str, FluxDualPathAttnProcessor] = {}
    for name, attn in layers.items():
        hidden, cross_dim = flux_layer_widths(transformer, attn, name)
        proc = FluxDualPathAttnProcessor(hidden, cross_dim, scale=scale)
        proc.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
        if init == "zeros":
            with torch.no_grad():
                for linear in (proc.to_k_p, proc.to_v_p):
                    linear.weight.zero_()
                    linear.bias.zero_()
        new[name] = proc
    adapter = set_adapter_processors(transformer, new)
    logger.info(
        "installed %d Flux dual-path processors (hidden size %d)", len(adapter), adapter.hidden_sizes[0]
    )
    return adapter


def get_flux_adapter_layers(transformer: nn.Module) -> AdapterLayers:
    """The Flux dual-path processors already installed on `transformer`, in attn_processors order."""
    return installed_adapter_layers(transformer, FluxDualPathAttnProcessor, "install_flux_dual_path_adapter")


def load_ip_adapter_flux(
    transformer: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, Any],
    projector: PersonalizedProjector | None = None,
    scale: float = 1.0,
) -> IPAdapterImport:
    """Install the dual path from an IP-Adapter-Flux checkpoint (to_k_ip → to_k_p, to_v_ip → to_v_p).

    As diffusers' `FluxTransformer2DLoadersMixin._convert_ip_adapter_attn_to_diffusers`: the k-th
    double-stream block in `attn_processors` order reads `ip_adapter.{k}.to_{k,v}_ip.{weight,bias}`.
    `image_proj` goes into the projector's context path when the shapes agree (see `load_ip_adapter_sd15`).
    """
    state = read_ip_adapter_state_dict(path_or_state_dict)
    ip = state["ip_adapter"]
    layers = joint_attention_layers(transformer)
    ids = sorted({int(k.split(".")[0]) for k in ip if k.split(".")[0].isdigit()})
    if ids != list(range(len(layers))):
        raise ValueError(
            f"IP-Adapter-Flux checkpoint has layer ids {ids[:4]}... ({len(ids)}), the transformer has "
            f"{len(layers)} double-stream blocks (expected ids 0…{len(layers) - 1})"
        )
    weights: list[dict[str, torch.Tensor]] = []
    for k, (name, attn) in enumerate(layers.items()):
        hidden, cross_dim = flux_layer_widths(transformer, attn, name)
        shapes = {"weight": (hidden, cross_dim), "bias": (hidden,)}
        layer: dict[str, torch.Tensor] = {}
        for ours, theirs in (("to_k_p", "to_k_ip"), ("to_v_p", "to_v_ip")):
            for part, shape in shapes.items():
                key = f"{k}.{theirs}.{part}"
                if key not in ip:
                    raise ValueError(f"IP-Adapter-Flux checkpoint lacks ip_adapter.{key} for {name}")
                if tuple(ip[key].shape) != shape:
                    raise ValueError(
                        f"ip_adapter.{key} has shape {tuple(ip[key].shape)} but {name} needs {shape} "
                        "(hidden size from to_q, joint_attention_dim)"
                    )
                layer[f"{ours}.{part}"] = ip[key]
        weights.append(layer)
    adapter = install_flux_dual_path_adapter(transformer, scale=scale, init=None)
    dtype = adapter[0].to_k_p.weight.dtype
    for proc, layer in zip(adapter.layers, weights, strict=True):
        proc.load_state_dict({k: v.to(dtype) for k, v in layer.items()})
    num_tokens, loaded, message = import_image_proj(state["image_proj"], projector)
    log = logger.info if loaded or projector is None else logger.warning
    log("IP-Adapter-Flux import: %d layers; %s", len(adapter), message)
    return IPAdapterImport(adapter, num_tokens, loaded, message)


def check_transformer_matches(transformer: nn.Module, config: AdapterCheckpointConfig) -> None:
    """ValueError naming the first layer/width that differs between a Flux checkpoint and `transformer`."""
    layers = joint_attention_layers(transformer)
    widths = {name: flux_layer_widths(transformer, attn, name) for name, attn in layers.items()}
    check_layers_match(config, widths, "flux", model="transformer", layers="joint-attention")


def load_flux_adapter(
    directory: str | Path, transformer: nn.Module
) -> tuple[AdapterLayers, PersonalizedProjector | None]:
    """Install the dual path on a Flux transformer from a `save_adapter(..., backbone="flux")` folder."""
    return load_adapter_folder(
        directory,
        lambda config: check_transformer_matches(transformer, config),
        lambda scale: install_flux_dual_path_adapter(transformer, scale=scale, init=None),
    )
