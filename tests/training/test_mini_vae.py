"""Mini VAE: config checks, the saved folder, the scaling factor, resume and the evaluation, at micro size."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file

import icg.training.mini_vae as mini_vae_module
from icg.data.covers.cache import render_cover_cache
from icg.data.movielens import load_ml100k
from icg.data.splits import ItemSplit, split_items
from icg.training.mini_vae import MiniVaeConfig, evaluate_vae, train_mini_vae

# threads=1 in every call: bit-identical resume needs the same thread count in every call of a run.
MICRO = MiniVaeConfig(
    block_out_channels=(8, 16, 16),
    norm_num_groups=4,
    variants=2,
    epochs=2,
    batch_size=4,
    scale_images=64,  # more than the 8 train items × 2 variants: the factor sees every training cover
    max_items=12,
)


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return load_ml100k().items


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("covers")


@pytest.fixture(scope="module")
def trained(items: pd.DataFrame, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted micro run: the reference for the loading and resume tests."""
    out = tmp_path_factory.mktemp("mini_vae")
    return out, train_mini_vae(items, out, MICRO, cache_dir=cache, threads=1, progress=False)


def _micro_covers(items: pd.DataFrame, cache: Path) -> tuple[torch.Tensor, ItemSplit]:
    table = items.iloc[: MICRO.max_items].reset_index(drop=True)
    covers = render_cover_cache(table, cache, MICRO.image_size, MICRO.variants, progress=False)
    return covers, split_items(len(table), MICRO.seed, MICRO.val_fraction, MICRO.test_fraction)


# -------------------------------------------------------------------------------------------- config
def test_config_json_round_trip_and_validation() -> None:
    assert MiniVaeConfig.from_json(MICRO.to_json()) == MICRO  # the tuple comes back from a JSON list
    assert MiniVaeConfig().latent_size == 16 and MICRO.latent_size == 16
    with pytest.raises(ValueError, match="norm_num_groups 16 must divide"):
        MiniVaeConfig(block_out_channels=(8, 16, 16))
    with pytest.raises(ValueError, match="does not divide by the VAE's factor 128"):
        MiniVaeConfig(block_out_channels=(16,) * 8)
    with pytest.raises(ValueError, match="block_out_channels"):
        MiniVaeConfig(block_out_channels=())
    with pytest.raises(ValueError, match="batch_size"):
        MiniVaeConfig(batch_size=0)
    with pytest.raises(ValueError, match="kl_weight"):
        MiniVaeConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="max_items"):
        MiniVaeConfig(max_items=3)
    with pytest.raises(ValueError, match="unknown MiniVaeConfig fields"):
        MiniVaeConfig.from_json('{"width": 3}')


def test_bad_call_arguments_raise(items: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_minutes"):
        train_mini_vae(items, tmp_path, MICRO, max_minutes=0)
    with pytest.raises(ValueError, match="threads"):
        train_mini_vae(items, tmp_path, MICRO, threads=0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_mini_vae(items, tmp_path, dataclasses.replace(MICRO, batch_size=9), threads=1, progress=False)


# ------------------------------------------------------------------------------------------ training
def test_trained_folder_loads_as_a_ready_vae(
    trained: tuple[Path, dict], items: pd.DataFrame, cache: Path
) -> None:
    out, metrics = trained
    vae = AutoencoderKL.from_pretrained(out).eval()
    assert MiniVaeConfig.from_json((out / "mini_vae.json").read_text()) == MICRO
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"] == metrics["test"] and on_disk["completed"] is True
    assert metrics["epochs_completed"] == len(metrics["history"]) == MICRO.epochs
    assert set(metrics["test"]) == {"psnr", "ssim", "baseline_psnr", "baseline_ssim", "n_items"}
    assert metrics["test"]["n_items"] == 2 and metrics["val"]["n_items"] == 2
    covers, split = _micro_covers(items, cache)
    train_covers = covers[split.train].flatten(0, 1)  # every training cover: (8·2, 3, 64, 64)
    with torch.no_grad():
        means = vae.encode(mini_vae_module.to_pixels(train_covers)).latent_dist.mean
    assert means.shape == (16, 4, 16, 16)
    # the factor was measured, written into the config and makes the training latents unit-variance
    factor = vae.config.scaling_factor
    assert factor != 1.0 and factor == pytest.approx(metrics["scaling_factor"], rel=1e-5)
    assert float((means * factor).std()) == pytest.approx(1.0, rel=1e-4)
    # reloaded weights + freshly rendered covers reproduce the reported test metrics exactly
    assert evaluate_vae(vae, covers[split.test, 0]) == metrics["test"]


def test_interrupted_and_budgeted_runs_resume_to_identical_weights(
    trained: tuple[Path, dict], items: pd.DataFrame, cache: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "resumed"
    # a time budget spent at once: one epoch per call, then a resumable stop (weights saved, not complete)
    first = train_mini_vae(items, out, MICRO, cache_dir=cache, threads=1, progress=False, max_minutes=1e-6)
    assert (first["epochs_completed"], first["completed"]) == (1, False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="icg.training.mini_vae"):
        final = train_mini_vae(items, out, MICRO, cache_dir=cache, threads=1, progress=False)
    assert "from epoch 1 of 2" in caplog.text
    assert final["history"] == trained[1]["history"] and final["test"] == trained[1]["test"]
    assert final["scaling_factor"] == trained[1]["scaling_factor"]
    reference = load_file(trained[0] / "diffusion_pytorch_model.safetensors")
    resumed = load_file(out / "diffusion_pytorch_model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), "resumed weights differ"
    # a complete run is not redone
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="icg.training.mini_vae"):
        again = train_mini_vae(items, out, MICRO, cache_dir=cache, threads=1, progress=False)
    assert "nothing to do" in caplog.text and again["seconds"] == final["seconds"]
    # other settings in the same folder are refused rather than mixed
    with pytest.raises(ValueError, match="other items or config"):
        train_mini_vae(items, out, dataclasses.replace(MICRO, lr=1e-3), cache_dir=cache, threads=1)


def test_loss_reads_the_reconstruction(items: pd.DataFrame, cache: Path) -> None:
    covers, _ = _micro_covers(items, cache)
    pixels = mini_vae_module.to_pixels(covers[:4, 0])
    torch.manual_seed(0)
    vae = mini_vae_module.build_vae(MICRO)
    with torch.no_grad():
        parts = mini_vae_module.vae_loss(vae, pixels, MICRO)
    expected = parts["l1"] + parts["mse"] + MICRO.kl_weight * parts["kl"] / pixels[0].numel()
    assert float(parts["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(parts["kl"]) > 0 and 0 < float(parts["mse"]) < 4.0  # outputs and inputs in [-1, 1]-ish


# ---------------------------------------------------------------------------------------- evaluation
class _FakeVae(torch.nn.Module):
    """encode → 4× average pool (a 16² latent); decode → the stashed input (exact) or noise."""

    def __init__(self, exact: bool) -> None:
        super().__init__()
        self.exact = exact
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self._last: torch.Tensor | None = None

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        self._last = pixels
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=F.avg_pool2d(pixels, 4)))

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        noise = torch.rand(self._last.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return SimpleNamespace(sample=self._last if self.exact else noise)


def test_evaluate_vae_separates_exact_noise_and_baseline(items: pd.DataFrame, cache: Path) -> None:
    covers, _ = _micro_covers(items, cache)
    covers = covers[:6, 0]  # (6, 3, 64, 64) uint8
    exact, noise = evaluate_vae(_FakeVae(True), covers), evaluate_vae(_FakeVae(False), covers)
    assert exact["psnr"] > 100.0 and exact["ssim"] == pytest.approx(1.0, abs=1e-4)
    # the baseline loses the covers' type and edges: finite, well above noise, well below exact
    assert noise["psnr"] < 10.0 < exact["baseline_psnr"] < 40.0
    assert noise["ssim"] < exact["baseline_ssim"] < 0.95
    assert exact["baseline_psnr"] == noise["baseline_psnr"] and exact["n_items"] == 6
    # a flat colour survives bicubic down- and upsampling exactly
    flat = torch.full((2, 3, 64, 64), 90, dtype=torch.uint8)
    assert evaluate_vae(_FakeVae(False), flat)["baseline_psnr"] > 60.0
    with pytest.raises(ValueError, match="uint8"):
        evaluate_vae(_FakeVae(True), covers.float())
