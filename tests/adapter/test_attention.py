"""Dual-path processor: equals diffusers' IP-Adapter processor, the plain one at scale 0; trains alone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from torch import nn

from icg.adapter import (
    DualPathAttnProcessor,
    PersonalizedProjector,
    PersonalTokens,
    ProjectorConfig,
    get_adapter_layers,
    install_dual_path_adapter,
    personalized_unet_inputs,
    set_adapter_scale,
)
from icg.testing import tiny_unet

TOL = 1e-5


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ip_processor_like(
    ours: DualPathAttnProcessor, num_tokens: int, scale: float
) -> IPAdapterAttnProcessor2_0:
    ip = IPAdapterAttnProcessor2_0(
        hidden_size=ours.hidden_size,
        cross_attention_dim=ours.cross_attention_dim,
        num_tokens=(num_tokens,),
        scale=scale,
    )
    with torch.no_grad():
        ip.to_k_ip[0].weight.copy_(ours.to_k_p.weight)
        ip.to_v_ip[0].weight.copy_(ours.to_v_p.weight)
    return ip


@contextlib.contextmanager
def _diffusers_warnings() -> Iterator[list[str]]:
    """Collect diffusers' log records (its library logger does not propagate to pytest's caplog)."""
    records: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Handler(level=logging.WARNING)
    lib_logger = logging.getLogger("diffusers")
    lib_logger.addHandler(handler)
    try:
        yield records
    finally:
        lib_logger.removeHandler(handler)


ATTENTION_CASES = [
    # query_dim, heads, dim_head, cross_dim, 4-D input with group norm + residual + rescale, text mask
    pytest.param(32, 4, 8, 16, False, False, id="h32-heads4-d8"),
    pytest.param(48, 3, 16, 24, False, True, id="h48-heads3-d16-mask"),
    pytest.param(64, 8, 8, 32, False, False, id="h64-heads8-d8"),
    pytest.param(32, 2, 16, 16, True, False, id="4d-groupnorm-residual"),
]


@pytest.mark.parametrize(("query_dim", "heads", "dim_head", "cross_dim", "four_d", "masked"), ATTENTION_CASES)
def test_matches_ip_adapter_processor_on_attention_module(
    query_dim: int, heads: int, dim_head: int, cross_dim: int, four_d: bool, masked: bool
) -> None:
    torch.manual_seed(0)
    extra = (
        {"norm_num_groups": 8, "residual_connection": True, "rescale_output_factor": 2.0} if four_d else {}
    )
    attn = Attention(query_dim, cross_attention_dim=cross_dim, heads=heads, dim_head=dim_head, **extra).eval()
    batch, text_len, num_personal = 3, 7, 5
    hidden = _randn(batch, query_dim, 4, 4, seed=1) if four_d else _randn(batch, 10, query_dim, seed=1)
    c_t, c_p = _randn(batch, text_len, cross_dim, seed=2), _randn(batch, num_personal, cross_dim, seed=3)
    mask = torch.ones(batch, text_len)
    if masked:
        mask[:, -2:] = 0.0
    mask_arg = {"attention_mask": (1.0 - mask) * -10000.0} if masked else {}

    ours = DualPathAttnProcessor(heads * dim_head, cross_dim, scale=0.6)
    ip = _ip_processor_like(ours, num_personal, scale=0.6)
    with torch.no_grad():
        attn.set_processor(ip)
        expected = attn(hidden, encoder_hidden_states=(c_t, [c_p]), **mask_arg)
        attn.set_processor(ours)
        got = attn(hidden, **personalized_unet_inputs(c_t, c_p), **mask_arg)
        ours.scale = 1.0  # the per-call scale overrides the processor's own
        got_override = attn(hidden, encoder_hidden_states=(c_t, PersonalTokens(c_p, 0.6)), **mask_arg)
        plain = attn(hidden, encoder_hidden_states=c_t, **mask_arg)

    assert got.shape == hidden.shape
    assert (got - expected).abs().max().item() <= TOL
    assert (got_override - expected).abs().max().item() <= TOL
    assert (got - plain).abs().max().item() > 1e-3, "the personal path must change the output"


def test_matches_ip_adapter_through_whole_unet() -> None:
    unet = tiny_unet(seed=0)
    torch.manual_seed(1)
    adapter = install_dual_path_adapter(unet, scale=0.6, init=None)  # random W_k^p, W_v^p
    sample, c_t, c_p = _randn(2, 4, 8, 8, seed=2), _randn(2, 6, 32, seed=3), _randn(2, 4, 32, seed=4)
    with torch.no_grad(), _diffusers_warnings() as warnings:
        got = unet(sample, 10, **personalized_unet_inputs(c_t, c_p)).sample
        plain = unet(sample, 10, encoder_hidden_states=c_t).sample
    assert warnings == [], f"diffusers logged warnings for our inputs: {warnings}"

    ip_procs = {name: _ip_processor_like(proc, 4, 0.6) for name, proc in adapter.items()}
    unet.set_attn_processor({n: ip_procs.get(n, p) for n, p in unet.attn_processors.items()})
    with torch.no_grad():
        expected = unet(sample, 10, encoder_hidden_states=(c_t, [c_p])).sample
    assert (got - expected).abs().max().item() <= TOL
    assert (got - plain).abs().max().item() > 1e-3


def test_scale_zero_and_no_tokens_equal_plain_processor_bit_for_bit() -> None:
    unet = tiny_unet(seed=0)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    sample, c_t, c_p = _randn(2, 4, 8, 8, seed=2), _randn(2, 6, 32, seed=3), _randn(2, 4, 32, seed=4)
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=c_t).sample
        install_dual_path_adapter(unet, scale=1.0, init="text")
        no_tokens = unet(sample, 10, **personalized_unet_inputs(c_t, None)).sample
        none_in_tuple = unet(sample, 10, encoder_hidden_states=(c_t, None)).sample
        per_call_zero = unet(sample, 10, **personalized_unet_inputs(c_t, c_p, scale=0.0)).sample
        with_tokens = unet(sample, 10, **personalized_unet_inputs(c_t, c_p)).sample
        set_adapter_scale(unet, 0.0)
        scale_zero = unet(sample, 10, **personalized_unet_inputs(c_t, c_p)).sample
    for out in (no_tokens, none_in_tuple, per_call_zero, scale_zero):
        assert torch.equal(out, plain)
    assert not torch.equal(with_tokens, plain)


def test_zeros_init_starts_as_the_plain_unet() -> None:
    unet = tiny_unet(seed=0)
    sample, c_t, c_p = _randn(2, 4, 8, 8, seed=2), _randn(2, 6, 32, seed=3), _randn(2, 4, 32, seed=4)
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=c_t).sample
        install_dual_path_adapter(unet, scale=1.0, init="zeros")
        out = unet(sample, 10, **personalized_unet_inputs(c_t, c_p)).sample
    assert torch.equal(out, plain)


def test_installs_only_on_cross_attention_with_width_from_to_q() -> None:
    unet = tiny_unet(seed=0)
    before = dict(unet.attn_processors)
    cross_modules = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    # Widen one layer's attention so that its width differs from the block's channel count (32):
    # a name-based lookup (as diffusers' IP loader does) would give 32, to_q gives 48.
    attn = unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    torch.manual_seed(5)
    attn.to_q, attn.to_k, attn.to_v = (
        nn.Linear(32, 48, bias=False),
        nn.Linear(32, 48, bias=False),
        nn.Linear(32, 48),
    )
    attn.to_out[0] = nn.Linear(48, 32)

    adapter = install_dual_path_adapter(unet, scale=0.5)

    after = unet.attn_processors
    assert len(adapter) == len(cross_modules) == 4
    assert list(after) == list(before)
    for name, proc in after.items():
        if name.endswith("attn2.processor"):
            assert isinstance(proc, DualPathAttnProcessor) and proc.scale == 0.5
            layer = unet.get_submodule(name.removesuffix(".processor"))
            assert proc.hidden_size == layer.to_q.out_features
            assert torch.equal(proc.to_k_p.weight, layer.to_k.weight)  # init="text"
            assert torch.equal(proc.to_v_p.weight, layer.to_v.weight)
        else:
            assert proc is before[name] and isinstance(proc, AttnProcessor2_0)
    assert adapter.hidden_sizes == [32, 48, 32, 64]
    assert get_adapter_layers(unet).names == adapter.names
    with torch.no_grad():
        out = unet(
            _randn(1, 4, 8, 8, seed=1),
            3,
            **personalized_unet_inputs(_randn(1, 5, 32, seed=2), _randn(1, 3, 32, seed=3)),
        )
    assert out.sample.shape == (1, 4, 8, 8)


def test_frozen_backbone_unchanged_after_optimizer_step() -> None:
    unet = tiny_unet(seed=0)
    adapter = install_dual_path_adapter(unet, init="text")
    projector = PersonalizedProjector(
        ProjectorConfig(context_dim=16, num_meta_tokens=2, cross_attention_dim=32, user_dim=8)
    )
    adapter_ids = {id(p) for p in adapter.parameters()}
    backbone = {n: p for n, p in unet.named_parameters() if id(p) not in adapter_ids}
    assert backbone and len(adapter_ids) == 2 * len(adapter)
    assert all(not p.requires_grad for p in backbone.values())
    assert all(p.requires_grad for p in adapter.parameters())
    backbone_before = {n: p.detach().clone() for n, p in backbone.items()}
    adapter_before = [p.detach().clone() for p in adapter.parameters()]
    projector_before = [p.detach().clone() for p in projector.parameters()]

    optimizer = torch.optim.AdamW([*adapter.parameters(), *projector.parameters()], lr=1e-2, weight_decay=0.1)
    c_p = projector(_randn(2, 2, 16, seed=1), _randn(2, 8, seed=2))
    out = unet(_randn(2, 4, 8, 8, seed=3), 500, **personalized_unet_inputs(_randn(2, 6, 32, seed=4), c_p))
    out.sample.pow(2).mean().backward()
    optimizer.step()

    assert all(p.grad is None for p in backbone.values())
    for name, param in backbone.items():
        assert torch.equal(param, backbone_before[name]), name
    assert all(not torch.equal(p, b) for p, b in zip(adapter.parameters(), adapter_before, strict=True))
    assert all(not torch.equal(p, b) for p, b in zip(projector.parameters(), projector_before, strict=True))


def test_bad_personal_tokens_raise_clear_errors() -> None:
    unet = tiny_unet(seed=0)
    install_dual_path_adapter(unet)
    sample, c_t = _randn(2, 4, 8, 8, seed=1), _randn(2, 6, 32, seed=2)
    with pytest.raises(ValueError, match=r"batch 3 != text_embeds batch 2"):
        personalized_unet_inputs(c_t, _randn(3, 4, 32, seed=3))
    with pytest.raises(ValueError, match=r"expected \(2, M, 32\)"), torch.no_grad():
        unet(sample, 1, encoder_hidden_states=(c_t, _randn(2, 4, 16, seed=3)))
    with pytest.raises(ValueError, match="pair"), torch.no_grad():
        unet(sample, 1, encoder_hidden_states=(c_t, c_t, c_t))
    with pytest.raises(ValueError, match="init must be"):
        install_dual_path_adapter(tiny_unet(seed=0), init="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no DualPathAttnProcessor"):
        set_adapter_scale(tiny_unet(seed=0), 0.5)


def test_user_scale_reweights_the_user_tokens_and_zero_drops_them_exactly() -> None:
    """The personalization knob: 1 = as trained, 0 = c_p without its user tokens bit for bit, and in between
    each user token's unnormalised attention weight is multiplied by the scale (checked by hand)."""
    unet = tiny_unet(seed=0)
    install_dual_path_adapter(unet, scale=1.0, init=None)
    sample, c_t, c_p = _randn(2, 4, 8, 8, seed=2), _randn(2, 6, 32, seed=3), _randn(2, 5, 32, seed=4)
    with torch.no_grad():
        full = unet(sample, 10, **personalized_unet_inputs(c_t, c_p)).sample
        context_only = unet(sample, 10, **personalized_unet_inputs(c_t, c_p[:, :3])).sample
        one = unet(sample, 10, **personalized_unet_inputs(c_t, c_p, user_tokens=2, user_scale=1.0)).sample
        zero = unet(sample, 10, **personalized_unet_inputs(c_t, c_p, user_tokens=2, user_scale=0.0)).sample
        two = unet(sample, 10, **personalized_unet_inputs(c_t, c_p, user_tokens=2, user_scale=2.0)).sample
    assert torch.equal(one, full) and torch.equal(zero, context_only)
    assert not torch.equal(two, full) and not torch.equal(two, context_only)

    proc = get_adapter_layers(unet)[0]
    attn = unet.get_submodule(get_adapter_layers(unet).names[0].removesuffix(".processor"))
    query = _randn(2, attn.heads, 7, proc.hidden_size // attn.heads, seed=5)  # (B, heads, L, d)
    with torch.no_grad():
        got = proc.personal_attention(attn, query, c_p, 2, (2, 3.0))
        key = proc.to_k_p(c_p).view(2, -1, attn.heads, query.shape[-1]).transpose(1, 2)
        value = proc.to_v_p(c_p).view(2, -1, attn.heads, query.shape[-1]).transpose(1, 2)
        weights = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).exp()  # (B, heads, L, M)
        weights[..., 3:] *= 3.0
        expected = (weights / weights.sum(-1, keepdim=True)) @ value
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1", True])
def test_user_scale_must_be_a_finite_non_negative_number(bad: object) -> None:
    c_t, c_p = _randn(1, 6, 32, seed=3), _randn(1, 5, 32, seed=4)
    with pytest.raises(ValueError, match="user_scale"):
        personalized_unet_inputs(c_t, c_p, user_tokens=2, user_scale=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_tokens"):
        personalized_unet_inputs(c_t, c_p, user_tokens=6)
