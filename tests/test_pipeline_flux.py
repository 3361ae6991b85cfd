"""FluxCoverPipeline on tiny-flux: saved like real checkpoints, loaded through `load_cover_pipeline`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image
from typer.testing import CliRunner

from icg.adapter.flux import FluxDualPathAttnProcessor
from icg.data.covers import render_cover
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.pipeline_flux import (
    FluxCoverPipeline,
    flux_pipeline_kwargs,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from icg.presets import get_preset, load_preset_folder
from icg.testing_flux import TINY_FLUX_SIZE, TINY_T5_LENGTH, materialize_tiny_flux_preset

FAST = {"num_inference_steps": 2, "max_prompt_tokens": 6}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ICG_HOME holding the materialized tiny-flux preset (what `--preset tiny-flux` reads)."""
    root = tmp_path_factory.mktemp("home")
    materialize_tiny_flux_preset(root / "presets" / "tiny-flux")
    return root


@pytest.fixture(scope="module")
def pipe(home: Path) -> FluxCoverPipeline:
    pipe = load_cover_pipeline(load_preset_folder(home / "presets" / "tiny-flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _items() -> list[CoverItem]:
    return [
        CoverItem("Toy Story", render_cover("1", "Toy Story", ("Animation",), size=64), item_id="1"),
        CoverItem("Alien", render_cover("2", "Alien", ("Horror", "Sci-Fi"), size=64), item_id="2"),
    ]


def test_loaded_from_saved_components(home: Path, pipe: FluxCoverPipeline) -> None:
    backbone = home / "presets" / "tiny-flux" / "backbone"
    assert sorted(p.name for p in backbone.iterdir()) == sorted(
        ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"]
    )
    assert isinstance(pipe, FluxCoverPipeline)
    procs = pipe.transformer.attn_processors
    assert [n for n, p in procs.items() if isinstance(p, FluxDualPathAttnProcessor)] == [
        "transformer_blocks.0.attn.processor"
    ]
    assert pipe.projector.config.cross_attention_dim == pipe.transformer.config.joint_attention_dim
    spec = get_preset("flux")  # the real preset is configuration only: nothing is downloaded here
    assert (spec.backbone, spec.base_model) == ("flux", "black-forest-labs/FLUX.1-dev")


def test_grid_metadata_and_seeds_reproducible(pipe: FluxCoverPipeline) -> None:
    users = [CoverUser(user_id="1"), CoverUser(profile="a 30-year-old female writer")]
    out = pipe(_items(), users, seed=5, num_images_per_prompt=2, output_type="pt", **FAST)
    assert out.images.shape == (8, 3, TINY_FLUX_SIZE, TINY_FLUX_SIZE)
    assert [m["item_id"] for m in out.metadata] == ["1"] * 4 + ["2"] * 4
    assert [m["user_id"] for m in out.metadata[:4]] == ["1", "1", None, None]
    assert [m["seed"] for m in out.metadata] == list(range(5, 13))
    assert out.metadata[0]["backbone"] == "flux"
    again = pipe(_items(), users, seed=5, num_images_per_prompt=2, output_type="pt", **FAST)
    assert torch.equal(out.images, again.images)
    # cover 6 = (item 2, profile user, image 0), seed 11: regenerated alone from its sidecar values
    alone = pipe(_items()[1:], users[1:], seed=11, output_type="pt", **FAST)
    assert (alone.images[0] - out.images[6]).abs().max().item() <= 1e-5
    pil = pipe(_items()[:1], None, seed=0, **FAST)
    assert pil.images[0].size == (TINY_FLUX_SIZE, TINY_FLUX_SIZE)


def test_adapter_scale_zero_equals_diffusers_flux_pipeline(pipe: FluxCoverPipeline) -> None:
    users = [CoverUser(user_id="1"), CoverUser(user_id="2")]
    ours = pipe(_items()[:1], users[:1], seed=3, adapter_scale=0.0, output_type="pt", **FAST)
    reference = FluxPipeline(**flux_pipeline_kwargs(pipe))
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        ours.metadata[0]["prompt"],
        num_inference_steps=FAST["num_inference_steps"],
        guidance_scale=3.5,
        height=TINY_FLUX_SIZE,
        width=TINY_FLUX_SIZE,
        generator=torch.Generator().manual_seed(3),
        max_sequence_length=TINY_T5_LENGTH,
        output_type="pt",
    ).images
    assert (ours.images - expected).abs().max().item() <= 1e-5
    # the personal path is live: users and the scale change the cover
    both = pipe(_items()[:1], users, seed=3, output_type="pt", **FAST)
    other = pipe(_items()[:1], users[1:], seed=3, output_type="pt", **FAST)
    assert (both.images[0] - ours.images[0]).abs().max().item() > 1e-3
    assert (both.images[0] - other.images[0]).abs().max().item() > 1e-3


@pytest.mark.skipif(
    not hasattr(FluxPipeline, "_pack_latents"),
    reason="diffusers no longer has FluxPipeline's private helpers",
)
@pytest.mark.parametrize(("height", "width"), [(32, 48), (64, 64)])
def test_own_latent_packing_equals_flux_pipelines_private_helpers(height: int, width: int) -> None:
    """ICG's copies of FluxPipeline._pack_latents / _unpack_latents / _prepare_latent_image_ids are the same
    functions (the covers test above checks the whole layout against FluxPipeline's public __call__)."""
    scale, channels = 8, 16
    h, w = height // scale, width // scale
    latents = torch.randn(2, channels, h, w, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, channels, h, w))
    assert torch.equal(unpack_latents(packed, height, width, scale), latents)
    assert torch.equal(
        unpack_latents(packed, height, width, scale),
        FluxPipeline._unpack_latents(packed, height, width, scale),
    )
    for dtype in (torch.float32, torch.bfloat16):
        want = FluxPipeline._prepare_latent_image_ids(2, h // 2, w // 2, torch.device("cpu"), dtype)
        got = latent_image_ids(h // 2, w // 2, torch.device("cpu"), dtype)
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_true_cfg_suffixes_and_bad_input(pipe: FluxCoverPipeline) -> None:
    plain = pipe(_items()[:1], seed=0, output_type="pt", **FAST)
    cfg = pipe(_items()[:1], seed=0, output_type="pt", true_cfg_scale=2.0, **FAST)
    assert cfg.metadata[0]["true_cfg_scale"] == 2.0
    assert (plain.images - cfg.images).abs().max().item() > 1e-4
    suffixed = pipe(_items()[:1], [CoverUser(user_id="1")], prompt_suffixes=["cartoon"], **FAST)
    assert suffixed.metadata[0]["prompt"].endswith("cartoon")
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe(_items()[:1], height=24, **FAST)
    with pytest.raises(ValueError, match="prompt_suffixes"):
        pipe(_items()[:1], prompt_suffixes=["a", "b"], **FAST)


def test_cli_generate_tiny_flux_writes_covers(home: Path, tmp_path: Path, monkeypatch) -> None:
    from icg.cli import app

    monkeypatch.setenv("ICG_HOME", str(home))
    out = tmp_path / "out"
    args = ["generate", "--preset", "tiny-flux", "--out", str(out), "--item-id", "1", "--user-id", "1"]
    result = CliRunner().invoke(app, [*args, "--steps", "1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1
    sidecar = json.loads(pngs[0].with_suffix(".json").read_text())
    assert sidecar["preset"] == "tiny-flux" and sidecar["seed"] == 2 and sidecar["num_inference_steps"] == 1
    assert sidecar["guidance_scale"] == 3.5 and sidecar["backbone"] == "flux"
    assert np.asarray(Image.open(pngs[0])).shape == (TINY_FLUX_SIZE, TINY_FLUX_SIZE, 3)
