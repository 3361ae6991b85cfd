"""`icg evaluate mini`'s measuring code: FD-miniCLIP and the backbone report, on tiny random components."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from transformers import CLIPModel, CLIPProcessor

from icg.data.movielens import load_ml100k
from icg.data.pixels import to_pil
from icg.data.splits import split_items
from icg.evaluation.fd import FD_NAME, ClipImageFeatures, frechet_distance
from icg.evaluation.mini import (
    SAMPLES_NAME,
    build_pipeline,
    evaluate_mini,
    generate_covers,
    held_out_rows,
    mini_report_markdown,
    vae_reconstruction,
)
from icg.testing import get_dummy_components, tiny_clip_model
from icg.training.clip_data import embed_images


@pytest.fixture(scope="module")
def clip() -> tuple[CLIPModel, CLIPProcessor]:
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, clip) -> tuple[Path, Path]:
    """The tiny backbone and CLIP saved like real checkpoints (backbone/{unet,vae,...}, a CLIP folder)."""
    root = tmp_path_factory.mktemp("mini_eval")
    components = get_dummy_components(root / "tokenizer-src", seed=0)
    for name, module in components.items():
        module.save_pretrained(root / "backbone" / name)
    model, processor = clip
    model.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root / "backbone", root / "clip"


@pytest.fixture(scope="module")
def result(saved, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    backbone, clip_dir = saved
    out = tmp_path_factory.mktemp("mini_eval_out")
    items = load_ml100k().items.head(8)
    res = evaluate_mini(
        backbone, clip_dir, items, cache_dir=out / "cache", num_inference_steps=2, progress=False, out_dir=out
    )
    return res, out


def _random_images(n: int, seed: int, size: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


# ------------------------------------------------------------------------------------------------ FD
def test_features_match_the_processor_path(clip) -> None:
    """Resize + CLIP mean/std inside the module = what CLIPProcessor feeds the model (same embeddings)."""
    model, processor = clip
    images = _random_images(6, 0, size=32)  # the tiny CLIP's own size: no resampling on either path
    ours = torch.nn.functional.normalize(ClipImageFeatures(model)(images), dim=-1)
    reference = embed_images(model, processor, [to_pil(x) for x in images])
    assert torch.allclose(ours, reference, atol=1e-4)
    assert ClipImageFeatures(model)(images).shape == (6, model.config.projection_dim)


def test_fd_equals_the_formula_on_the_features(clip) -> None:
    """torchmetrics' result = ||μ1−μ2||² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) on our features (scipy sqrtm)."""
    model, _ = clip
    real, fake = _random_images(40, 1), _random_images(30, 2).clamp(0, 120)
    extractor = ClipImageFeatures(model)
    f1, f2 = (extractor(x).double().numpy() for x in (real, fake))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    got = frechet_distance(real, fake, model, batch_size=16)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_fd_self_is_zero_and_black_white_is_large(clip) -> None:
    model, _ = clip
    images = _random_images(24, 3)
    same = frechet_distance(images, images, model)
    black = torch.zeros((12, 3, 48, 48), dtype=torch.uint8)
    white = torch.full((12, 3, 48, 48), 255, dtype=torch.uint8)
    black[:, :, :4] = torch.randint(0, 40, (12, 3, 4, 48), dtype=torch.uint8)  # some spread in each set
    white[:, :, :4] = 255 - torch.randint(0, 40, (12, 3, 4, 48), dtype=torch.uint8)
    apart = frechet_distance(black, white, model)
    assert abs(same) < 1e-3
    assert apart > 0.05 and apart > 1000 * abs(same)
    assert frechet_distance(black, white, model) == pytest.approx(apart)  # deterministic


def test_fd_uint8_and_unit_float_agree(clip) -> None:
    model, _ = clip
    real, fake = _random_images(10, 4), _random_images(10, 5)
    as_uint8 = frechet_distance(real, fake, model)
    as_float = frechet_distance(real.float() / 255, fake.float() / 255, model)
    assert as_float == pytest.approx(as_uint8, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(4, 3, 8, 8) * 2,
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        torch.zeros(4, 3, 8, 8, dtype=torch.int32),
    ],
)
def test_fd_rejects_bad_images(clip, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        frechet_distance(bad, _random_images(4, 6, size=8), clip[0])


def test_fd_needs_two_images(clip) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(_random_images(1, 7), _random_images(4, 8), clip[0])


# ------------------------------------------------------------------------------------------------ pieces
def test_held_out_rows_are_the_shared_val_and_test_items() -> None:
    split = split_items(100, 0, 0.1, 0.1)
    rows = held_out_rows(100)
    assert set(rows) == set(split.val) | set(split.test)
    assert not set(rows) & set(split.train)
    assert list(rows) == sorted(rows)


def test_vae_reconstruction_beats_nothing_and_baseline_is_sane() -> None:
    """A random VAE reconstructs worse than the bicubic baseline; smooth covers keep the baseline high."""
    vae = get_dummy_components(seed=0)["vae"]
    x = torch.linspace(0, 255, 64).round().to(torch.uint8)
    covers = torch.stack([x.view(1, 64).expand(3, 64, 64), x.view(64, 1).expand(3, 64, 64)])  # gradients
    res = vae_reconstruction(vae, covers, batch_size=1)
    assert res["downsample_factor"] == 8 and res["latent_shape"] == [4, 8, 8] and res["n_images"] == 2
    assert res["bicubic_psnr"] > 30 and res["bicubic_ssim"] > 0.9
    assert res["psnr"] < res["bicubic_psnr"] and -1 <= res["ssim"] <= 1


def test_generation_is_per_item_seeded(tmp_path: Path) -> None:
    """Cover i depends on its own seed only: batch size 1 and 3 give the same covers, another seed differs."""
    c = get_dummy_components(tmp_path, seed=0)
    pipe = build_pipeline(c["unet"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"])
    prompts = ["toy story, an animation movie", "heat, a crime movie", "toy story, an animation movie"]
    kwargs = {"size": 64, "num_inference_steps": 2, "guidance_scale": 7.0, "progress": False}
    batched = generate_covers(pipe, prompts, [1, 2, 9], batch_size=3, **kwargs)
    single = generate_covers(pipe, prompts[:2], [1, 2], batch_size=1, **kwargs)
    assert batched.shape == (3, 3, 64, 64) and batched.dtype == torch.uint8
    assert (batched[:2].int() - single.int()).abs().max() <= 1  # batched convolutions may round differently
    assert (batched[0].int() - batched[2].int()).abs().float().mean() > 1  # same prompt, other seed


# ------------------------------------------------------------------------------------------------ report
def test_result_has_every_figure(result) -> None:
    res, out = result
    assert set(res) >= {"fd_miniclip", "genre_accuracy", "vae", "n_items", "settings", "seconds"}
    assert res["n_items"] == len(held_out_rows(8)) == 4
    fd = res["fd_miniclip"]
    for key in ("generated", "random_unet", "generated_half", "random_unet_half", "floor_reference_halves"):
        assert math.isfinite(fd[key]), key
    assert fd["n_half"] == 2 and fd["feature_dim"] == 16 and "bias" in fd["note"]
    assert fd["generated"] != fd["random_unet"]  # the random UNet is not the backbone's UNet
    genre = res["genre_accuracy"]
    for key in ("generated", "reference", "random_unet", "chance_majority", "chance_uniform"):
        assert 0.0 <= genre[key] <= 1.0, key
    assert genre["chance_uniform"] == pytest.approx(1 / genre["n_genres"], abs=1e-4)
    vae = res["vae"]
    assert vae["latent_shape"] == [4, 8, 8] and math.isfinite(vae["psnr"]) and math.isfinite(vae["ssim"])
    assert res["settings"]["num_inference_steps"] == 2 and res["settings"]["image_size"] == 64
    json.dumps(res)  # JSON-able


def test_sample_grid_is_written(result) -> None:
    _, out = result
    with Image.open(out / SAMPLES_NAME) as grid:
        assert grid.mode == "RGB"
        assert grid.width == 4 * (3 * 64 + 4)  # 4 items in a row, reference | generated | random UNet each


def test_markdown_names_fd_miniclip_not_fid(result) -> None:
    res, _ = result
    report = mini_report_markdown(res | {"command": "icg evaluate mini"})
    assert FD_NAME in report and "FID" not in report
    assert f"{res['fd_miniclip']['floor_reference_halves']:.3f}" in report
    assert f"{res['genre_accuracy']['chance_majority']:.3f}" in report
    assert "icg evaluate mini" in report and report.count("\n|") >= 7


def test_bad_arguments(saved) -> None:
    backbone, clip_dir = saved
    items = load_ml100k().items.head(8)
    with pytest.raises(ValueError, match="max_items"):
        evaluate_mini(backbone, clip_dir, items, cache_dir=Path("unused"), max_items=2, progress=False)
