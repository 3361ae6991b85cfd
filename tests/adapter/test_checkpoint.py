"""Adapter checkpoints: save/load round trip, width checks, IP-Adapter-SD15 import against diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from icg.adapter import (
    DualPathAttnProcessor,
    PersonalizedProjector,
    ProjectorConfig,
    install_dual_path_adapter,
    load_adapter,
    load_ip_adapter_sd15,
    personalized_unet_inputs,
    save_adapter,
    set_adapter_scale,
)
from icg.testing import tiny_ip_adapter_state_dict, tiny_unet


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sample (B, 4, 8, 8), c_t (B, 6, 32), C_ref (B, 2, 16), U_pre (B, 8)."""
    return (
        _randn(batch, 4, 8, 8, seed=10),
        _randn(batch, 6, 32, seed=11),
        _randn(batch, 2, 16, seed=12),
        _randn(batch, 8, seed=13),
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A trained-looking adapter + projector saved to tmp_path; returns (folder, the UNet output it gave)."""
    unet = tiny_unet(seed=0)
    torch.manual_seed(1)
    adapter = install_dual_path_adapter(unet, init=None)
    set_adapter_scale(unet, 0.7)
    projector = PersonalizedProjector(
        ProjectorConfig(
            context_dim=16, num_meta_tokens=2, cross_attention_dim=32, user_dim=8, num_user_tokens=3
        )
    )
    sample, c_t, c_ref, u_pre = _inputs()
    with torch.no_grad():
        out = unet(sample, 7, **personalized_unet_inputs(c_t, projector(c_ref, u_pre))).sample
    folder = save_adapter(tmp_path / "adapter", adapter, projector)
    return folder, out


def test_save_load_round_trip_gives_identical_outputs(saved: tuple[Path, torch.Tensor]) -> None:
    folder, expected = saved
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["format_version"] == 1 and config["backbone"] == "sd15"
    assert config["cross_attention_dim"] == 32 and config["scale"] == 0.7
    assert config["hidden_sizes"] == [32, 32, 32, 64]
    assert config["projector"]["num_context_tokens"] == 4 and config["projector"]["user_dim"] == 8
    keys = set(load_file(str(folder / "adapter.safetensors")))
    assert len(keys) == 2 * 4 + 8  # to_k_p/to_v_p per layer + two LayerNorm(Linear) paths
    assert all(k.startswith(("adapter.", "projector.")) for k in keys)

    unet = tiny_unet(seed=0)
    adapter, projector = load_adapter(folder, unet)
    assert projector is not None and len(adapter) == 4
    assert all(not p.requires_grad for n, p in unet.named_parameters() if ".processor." not in n)
    assert all(p.requires_grad for p in adapter.parameters())
    sample, c_t, c_ref, u_pre = _inputs()
    with torch.no_grad():
        got = unet(sample, 7, **personalized_unet_inputs(c_t, projector(c_ref, u_pre))).sample
    assert torch.equal(got, expected)


def test_saving_the_same_adapter_again_writes_the_same_bytes(saved, tmp_path: Path) -> None:
    """The sidecars' adapter_hash reads the folder's bytes: equal weights must give equal files (with two
    safetensors metadata keys, their hash-map order changed the bytes from save to save)."""
    from icg.loading import adapter_hash

    folder, _ = saved
    unet = tiny_unet(seed=0)
    adapter, projector = load_adapter(folder, unet)
    again = [save_adapter(tmp_path / f"again{n}", adapter, projector) for n in range(8)]
    for other in again:
        for name in ("adapter.safetensors", "adapter_config.json"):
            assert (other / name).read_bytes() == (folder / name).read_bytes()
    assert {adapter_hash(f) for f in [folder, *again]} == {adapter_hash(folder)}
    assert not list(tmp_path.glob("**/*.tmp*"))  # written through temp files, none left behind


@pytest.mark.parametrize(
    ("unet_kwargs", "match"),
    [
        (
            {"cross_attention_dim": 48},
            r"cross_attention_dim mismatch at down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2"
            r".*checkpoint 32, UNet 48",
        ),
        (
            {"block_out_channels": (32, 96)},
            r"hidden size mismatch at mid_block\.attentions\.0\.transformer_blocks\.0\.attn2"
            r".*checkpoint 64, UNet 96",
        ),
        ({"layers_per_block": 2}, "checkpoint has 4 cross-attention layers, the UNet has 6"),
    ],
)
def test_loading_into_a_different_unet_raises(
    saved: tuple[Path, torch.Tensor], unet_kwargs: dict[str, object], match: str
) -> None:
    folder, _ = saved
    unet = tiny_unet(seed=0, **unet_kwargs)  # type: ignore[arg-type]
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match=match):
        load_adapter(folder, unet)
    assert dict(unet.attn_processors) == before, "a failed load must leave the UNet untouched"


def test_bad_checkpoint_folders_raise(saved: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder, _ = saved
    with pytest.raises(ValueError, match="missing adapter_config.json"):
        load_adapter(tmp_path / "nowhere", tiny_unet(seed=0))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        load_adapter(folder, tiny_unet(seed=0))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(folder / "adapter.safetensors"))
    tensors["adapter.0.to_k_p.weight"] = torch.zeros(32, 16)
    save_file(tensors, str(folder / "adapter.safetensors"))
    with pytest.raises(ValueError, match=r"adapter\.0\.to_k_p\.weight has shape \(32, 16\)"):
        load_adapter(folder, tiny_unet(seed=0))


def _context_projector(context_dim: int = 24) -> PersonalizedProjector:
    torch.manual_seed(3)
    cfg = ProjectorConfig(
        context_dim=context_dim, num_meta_tokens=1, cross_attention_dim=32, num_context_tokens=4
    )
    return PersonalizedProjector(cfg)


def test_ip_adapter_import_matches_diffusers_loader(tmp_path: Path) -> None:
    state = tiny_ip_adapter_state_dict(tiny_unet(seed=0), image_embed_dim=24, seed=5)
    assert sorted(int(k.split(".")[0]) for k in state["ip_adapter"] if "to_k_ip" in k) == [1, 3, 5, 7]

    # diffusers' own loader on an identical UNet.
    reference = tiny_unet(seed=0)
    reference._load_ip_adapter_weights([state], low_cpu_mem_usage=False)

    # Ours, from the official .bin layout (nested dict) and from a flat .safetensors file.
    torch.save(state, tmp_path / "ip-adapter_sd15.bin")
    flat = {f"{group}.{k}": v for group, sub in state.items() for k, v in sub.items()}
    save_file(flat, str(tmp_path / "ip-adapter_sd15.safetensors"))
    for path in (tmp_path / "ip-adapter_sd15.bin", tmp_path / "ip-adapter_sd15.safetensors"):
        unet = tiny_unet(seed=0)
        projector = _context_projector()
        result = load_ip_adapter_sd15(unet, path, projector=projector, scale=0.6)
        assert result.num_image_tokens == 4 and result.projector_loaded, result.projector_message
        ref_procs = reference.attn_processors
        assert result.adapter.names == [n for n in ref_procs if n.endswith("attn2.processor")]
        for name, proc in result.adapter.items():
            assert torch.equal(proc.to_k_p.weight, ref_procs[name].to_k_ip[0].weight), name
            assert torch.equal(proc.to_v_p.weight, ref_procs[name].to_v_ip[0].weight), name

    # End to end: our projector + dual path equal diffusers' image_proj + IP-Adapter processors.
    for proc in reference.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = [0.6]
    sample, c_t, image_embeds = _randn(2, 4, 8, 8, seed=1), _randn(2, 6, 32, seed=2), _randn(2, 24, seed=3)
    with torch.no_grad():
        ours = unet(sample, 9, **personalized_unet_inputs(c_t, projector(image_embeds[:, None, :]))).sample
        theirs = reference(
            sample,
            9,
            encoder_hidden_states=c_t,
            added_cond_kwargs={"image_embeds": [image_embeds[:, None, :]]},
        ).sample
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_ip_adapter_import_reports_and_rejects_mismatches() -> None:
    state = tiny_ip_adapter_state_dict(tiny_unet(seed=0), image_embed_dim=24, seed=5)
    unet = tiny_unet(seed=0)
    result = load_ip_adapter_sd15(unet, state, projector=_context_projector(context_dim=20))
    assert not result.projector_loaded and "shapes differ" in result.projector_message
    assert all(isinstance(p, DualPathAttnProcessor) for p in result.adapter.layers)
    no_projector = load_ip_adapter_sd15(tiny_unet(seed=0), state)
    assert no_projector.num_image_tokens == 4 and not no_projector.projector_loaded

    with pytest.raises(ValueError, match="has 4 cross-attention layers .* the UNet has 6"):
        load_ip_adapter_sd15(tiny_unet(seed=0, layers_per_block=2), state)
    with pytest.raises(
        ValueError, match=r"ip_adapter\.1\.to_k_ip\.weight has shape \(32, 32\) but .* needs \(32, 48\)"
    ):
        load_ip_adapter_sd15(tiny_unet(seed=0, cross_attention_dim=48), state)
    with pytest.raises(ValueError, match="not an IP-Adapter checkpoint"):
        load_ip_adapter_sd15(tiny_unet(seed=0), {"image_proj.proj.weight": torch.zeros(1)})
