"""Flux dual path vs diffusers' FluxIPAdapterAttnProcessor / FluxAttnProcessor on a tiny random Flux."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor

from icg.adapter.checkpoint import save_adapter
from icg.adapter.flux import (
    FluxDualPathAttnProcessor,
    get_flux_adapter_layers,
    install_flux_dual_path_adapter,
    load_flux_adapter,
    load_ip_adapter_flux,
    personalized_flux_kwargs,
)
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
from icg.testing_flux import tiny_flux_transformer, tiny_ip_adapter_flux_state_dict

BATCH = 2


def _transformer():
    return tiny_flux_transformer(seed=0, num_layers=2, num_single_layers=1)


def _inputs(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Transformer kwargs for 2×2 packed image tokens and 5 text tokens, and c_p (B, 3, W)."""
    gen = torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(4, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.tensor([0.0, 0, 1, 1]), torch.tensor([0.0, 1, 0, 1])
    kwargs = {
        "hidden_states": torch.randn(BATCH, 4, 16, generator=gen),
        "encoder_hidden_states": torch.randn(BATCH, 5, 32, generator=gen),
        "pooled_projections": torch.randn(BATCH, 32, generator=gen),
        "timestep": torch.full((BATCH,), 0.7),
        "guidance": torch.full((BATCH,), 3.5),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(5, 3),
    }
    return kwargs, torch.randn(BATCH, 3, 32, generator=gen)


def _diffusers_ip(state: dict, scale: float):
    reference = _transformer()
    procs = reference._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)
    for proc in procs.values():
        if isinstance(proc, FluxIPAdapterAttnProcessor):
            proc.scale = [scale]
    reference.set_attn_processor(procs)
    return reference


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_equals_diffusers_ip_adapter_flux_with_the_same_weights(scale: float) -> None:
    ours = _transformer()
    state = tiny_ip_adapter_flux_state_dict(ours)
    load_ip_adapter_flux(ours, state, scale=scale)
    reference = _diffusers_ip(state, scale)
    kwargs, tokens = _inputs()
    with torch.no_grad():
        expected = reference(**kwargs, joint_attention_kwargs={"ip_hidden_states": [tokens]}).sample
        got = ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens)).sample
        plain = ours(**kwargs).sample
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - plain).abs().max().item() > 1e-3  # the personal path is not a no-op


def test_scale_zero_and_no_tokens_equal_the_plain_processor_exactly(caplog) -> None:
    plain = _transformer()
    ours = _transformer()
    load_ip_adapter_flux(ours, tiny_ip_adapter_flux_state_dict(ours))
    assert all(isinstance(p, FluxAttnProcessor) for p in plain.attn_processors.values())
    kwargs, tokens = _inputs(1)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        expected = plain(**kwargs).sample
        no_tokens = ours(**kwargs).sample
        scale_zero = ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens, scale=0.0)).sample
        get_flux_adapter_layers(ours).set_scale(0.0)
        installed_zero = ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens)).sample
    assert torch.equal(no_tokens, expected)
    assert torch.equal(scale_zero, expected)
    assert torch.equal(installed_zero, expected)
    assert "not expected" not in caplog.text  # single-stream blocks drop the personal tokens quietly


def test_fused_projections_equal_the_plain_processor() -> None:
    """`qkv_projections` (ICG's copy of diffusers' private `_get_qkv_projections`) reads fused Q/K/V too."""
    plain, ours = _transformer(), _transformer()
    load_ip_adapter_flux(ours, tiny_ip_adapter_flux_state_dict(ours))
    kwargs, tokens = _inputs(3)
    for model in (plain, ours):
        for module in model.modules():
            if hasattr(module, "fuse_projections"):
                module.fuse_projections()
    assert any(getattr(m, "fused_projections", False) for m in ours.modules())
    with torch.no_grad():
        expected = plain(**kwargs).sample
        got = ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens, scale=0.0)).sample
        live = ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens)).sample
    assert (got - expected).abs().max().item() <= 1e-5
    assert (live - expected).abs().max().item() > 1e-3


def test_zero_init_equals_plain_and_only_new_projections_train() -> None:
    plain = _transformer()
    ours = _transformer()
    adapter = install_flux_dual_path_adapter(ours)  # init="zeros"
    names = [n for n, p in ours.attn_processors.items() if isinstance(p, FluxDualPathAttnProcessor)]
    assert names == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor"]
    assert isinstance(ours.attn_processors["single_transformer_blocks.0.attn.processor"], FluxAttnProcessor)
    kwargs, tokens = _inputs(2)
    with torch.no_grad():
        assert torch.equal(
            ours(**kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens)).sample,
            plain(**kwargs).sample,
        )
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {f"transformer_blocks.{k}.attn.processor.{m}.{p}" for k in (0, 1)
                         for m in ("to_k_p", "to_v_p") for p in ("weight", "bias")}  # fmt: skip
    assert {id(p) for p in adapter.parameters()} == {id(p) for p in ours.parameters() if p.requires_grad}
    # gradients reach exactly the new projections (V_p first: K_p gets none while V_p = 0)
    with torch.no_grad():
        for proc in adapter.layers:
            proc.to_v_p.weight.normal_(0, 0.1)
    ours(
        **kwargs, joint_attention_kwargs=personalized_flux_kwargs(tokens.requires_grad_())
    ).sample.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert all(p.grad is None for p in ours.parameters() if not p.requires_grad)


def test_ip_adapter_import_checks_layout_and_fills_the_projector() -> None:
    ours = _transformer()
    state = tiny_ip_adapter_flux_state_dict(ours, image_embed_dim=24)
    projector = PersonalizedProjector(
        ProjectorConfig(context_dim=24, num_meta_tokens=1, cross_attention_dim=32)
    )
    result = load_ip_adapter_flux(ours, state, projector=projector)
    assert result.projector_loaded and result.num_image_tokens == 4 and len(result.adapter) == 2
    assert torch.equal(projector.context_proj.proj.weight, state["image_proj"]["proj.weight"])
    assert torch.equal(result.adapter[1].to_v_p.bias, state["ip_adapter"]["1.to_v_ip.bias"])
    bad = {"image_proj": state["image_proj"], "ip_adapter": dict(state["ip_adapter"])}
    bad["ip_adapter"]["0.to_k_ip.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"ip_adapter.0.to_k_ip.weight has shape \(32, 16\)"):
        load_ip_adapter_flux(_transformer(), bad)
    with pytest.raises(ValueError, match="double-stream blocks"):
        load_ip_adapter_flux(tiny_flux_transformer(num_layers=1), state)


def test_checkpoint_round_trip_and_backbone_check(tmp_path) -> None:
    ours = _transformer()
    imported = load_ip_adapter_flux(ours, tiny_ip_adapter_flux_state_dict(ours), scale=0.5)
    projector = PersonalizedProjector(
        ProjectorConfig(context_dim=8, num_meta_tokens=1, cross_attention_dim=32)
    )
    save_adapter(tmp_path / "a", imported.adapter, projector, backbone="flux")
    again = _transformer()
    adapter, loaded = load_flux_adapter(tmp_path / "a", again)
    assert adapter[0].scale == 0.5 and loaded is not None
    for a, b in zip(imported.adapter.state_dict().values(), adapter.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    save_adapter(tmp_path / "sd15", imported.adapter, projector)  # mislabelled as a UNet adapter
    with pytest.raises(ValueError, match="backbone 'sd15'"):
        load_flux_adapter(tmp_path / "sd15", _transformer())
    with pytest.raises(ValueError, match="transformer"):
        load_flux_adapter(tmp_path / "a", tiny_flux_transformer(num_layers=1))
