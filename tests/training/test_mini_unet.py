"""Mini UNet trainer at tiny size: outputs load like a real SD1.5 checkpoint, resume, captions, errors."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import CLIPModel

from icg.context.teacher import explicit_prompt_teacher
from icg.data.captions import item_text
from icg.data.covers.render import items_genres
from icg.data.movielens import load_ml100k
from icg.errors import DataError, ICGError
from icg.testing import tiny_clip_model
from icg.training.mini_unet import (
    N_TEMPLATES,
    MiniUnetConfig,
    caption_table,
    encode_captions,
    load_text_encoder,
    sample_caption_ids,
    train_mini_unet,
)

# threads=1 in every call: bit-identical resume needs the same thread count in every call of a run.
TINY = MiniUnetConfig(
    block_out_channels=(8, 16, 16),
    attention_head_dim=2,
    norm_num_groups=4,
    variants=2,
    epochs=2,
    batch_size=8,
    val_timesteps=(100, 500, 900),
    max_items=12,
)


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return load_ml100k().items


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random CLIP (text width 32, 16 tokens) and AutoencoderKL (64² → 16²×4), saved like real ones."""
    root = tmp_path_factory.mktemp("frozen")
    clip, processor = tiny_clip_model(seed=0)
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.7,
    )
    vae.save_pretrained(root / "vae")
    return {"clip_dir": root / "clip", "vae_dir": root / "vae", "cache_dir": root / "cache"}


@pytest.fixture(scope="module")
def trained(items: pd.DataFrame, frozen: dict[str, Path], tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted tiny run: the reference for the loading and resume tests."""
    out = tmp_path_factory.mktemp("mini_unet")
    return out, train_mini_unet(items, out, TINY, **frozen, threads=1, progress=False)


def test_outputs_load_as_sd15_components(trained: tuple[Path, dict]) -> None:
    out, metrics = trained
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert unet.config.cross_attention_dim == 32 == metrics["cross_attention_dim"]  # the tiny CLIP's width
    assert tuple(unet.config.block_out_channels) == TINY.block_out_channels and unet.config.sample_size == 16
    ddim = DDIMScheduler.from_pretrained(out / "scheduler")
    assert (ddim.config.steps_offset, ddim.config.clip_sample, ddim.config.set_alpha_to_one) == (
        1,
        False,
        False,
    )
    assert ddim.config.prediction_type == "epsilon" and ddim.config.beta_schedule == "scaled_linear"
    sd15 = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    assert torch.equal(ddim.alphas_cumprod, sd15.alphas_cumprod)
    # the saved weights are the EMA's, not the raw model's
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    saved = list(unet.parameters())
    assert all(torch.equal(p, s) for p, s in zip(saved, state["ema"]["shadow_params"], strict=True))
    raw = [state["model"][name] for name, _ in unet.named_parameters()]
    assert not all(torch.equal(p, r) for p, r in zip(saved, raw, strict=True))
    assert MiniUnetConfig.from_json((out / "mini_unet.json").read_text()) == TINY
    # metrics: one curve point per epoch after the untrained one, all finite
    assert metrics["completed"] and metrics["epochs_completed"] == TINY.epochs
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert metrics["steps_per_epoch"] == 2 and metrics["train_pairs"] == 8 * TINY.variants
    values = [h["val_eps_mse"]["mean"] for h in metrics["history"]] + [metrics["test_eps_mse"]["mean"]]
    assert all(0 < v < 10 for v in values) and set(metrics["val_eps_mse"]["by_t"]) == {"100", "500", "900"}


def test_diffusers_stable_diffusion_pipeline_runs_on_the_outputs(
    trained: tuple[Path, dict], frozen: dict[str, Path]
) -> None:
    text_encoder, tokenizer = load_text_encoder(frozen["clip_dir"])
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(frozen["vae_dir"]),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(trained[0] / "unet"),
        scheduler=DDIMScheduler.from_pretrained(trained[0] / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("toy story, a comedy movie", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and bool((image >= 0).all() and (image <= 1).all())
    # the trainer's conditioning is the pipeline's, for the prompt and for the unconditional ""
    cond, uncond = pipe.encode_prompt("toy story, a comedy movie", "cpu", 1, True, None)
    ours = encode_captions(text_encoder, tokenizer, ["toy story, a comedy movie", ""])
    assert torch.equal(ours[:1], cond) and torch.equal(ours[1:], uncond)


def test_interrupted_run_resumes_to_identical_weights(
    trained: tuple[Path, dict], items: pd.DataFrame, frozen: dict[str, Path], tmp_path: Path, caplog
) -> None:
    out = tmp_path / "resumed"
    first = train_mini_unet(items, out, TINY, **frozen, threads=1, progress=False, max_minutes=1e-6)
    assert (first["epochs_completed"], first["completed"]) == (1, False)
    with caplog.at_level(logging.INFO, logger="icg.training.mini_unet"):
        final = train_mini_unet(items, out, TINY, **frozen, threads=1, progress=False)
    assert "from epoch 1 of 2" in caplog.text
    assert final["history"] == trained[1]["history"] and final["test_eps_mse"] == trained[1]["test_eps_mse"]
    reference = load_file(trained[0] / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), "resumed weights differ"
    # a complete folder is returned as it is; another config in it is refused rather than mixed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="icg.training.mini_unet"):
        assert train_mini_unet(items, out, TINY, **frozen, threads=1, progress=False) == final
    assert "nothing to do" in caplog.text
    with pytest.raises(ValueError, match="other items, config"):
        other = dataclasses.replace(TINY, lr=TINY.lr * 2)
        train_mini_unet(items, out, other, **frozen, threads=1, progress=False)


def test_caption_sampler_drops_to_empty_at_the_configured_rate(items: pd.DataFrame) -> None:
    captions, table = caption_table(items.iloc[:50])
    assert captions[0] == "" and table.shape == (50, N_TEMPLATES + 1) and bool((table > 0).all())
    genres = items_genres(items.iloc[:50])
    assert captions[table[3, N_TEMPLATES]] == explicit_prompt_teacher(items["title"].iloc[3], genres[3])
    assert captions[table[3, 0]] == item_text(items["title"].iloc[3], genres[3], 0)
    rows = torch.arange(50).repeat(400)  # 20,000 draws
    ids = sample_caption_ids(table, rows, TINY, torch.Generator().manual_seed(0))
    dropped = ids == 0
    assert abs(dropped.float().mean().item() - TINY.caption_dropout) < 0.01  # binomial sd 0.002
    kept_teacher = (ids == table[rows, N_TEMPLATES])[~dropped].float().mean().item()
    assert abs(kept_teacher - TINY.teacher_fraction) < 0.03  # teacher, or a template that reads the same
    assert set(table[:, :N_TEMPLATES].unique().tolist()) <= set(ids.unique().tolist())  # every template seen
    never = dataclasses.replace(TINY, caption_dropout=0.0)
    assert not bool((sample_caption_ids(table, rows, never, torch.Generator().manual_seed(0)) == 0).any())


def test_text_tower_loads_from_a_clip_model_folder(frozen: dict[str, Path], caplog) -> None:
    with caplog.at_level(logging.WARNING):
        encoder, tokenizer = load_text_encoder(frozen["clip_dir"])
    assert "newly initialized" not in caplog.text
    clip = CLIPModel.from_pretrained(frozen["clip_dir"]).eval()
    ids = tokenizer(["a drama movie", ""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(encoder(ids)[0], clip.text_model(ids)[0])


def test_config_round_trip_and_validation() -> None:
    assert MiniUnetConfig.from_json(TINY.to_json()) == TINY
    config = MiniUnetConfig()
    assert MiniUnetConfig.from_json(config.to_json()) == config and config.heads_per_block() == (1, 2, 4)
    bad = [
        {"block_out_channels": (8, 16)},  # three block types for two widths
        {"norm_num_groups": 3},
        {"attention_head_dim": 3},
        {"down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D")},
        {"caption_dropout": 1.0},
        {"val_timesteps": (1000,)},
        {"sample_size": 10},
        {"ema_decay": 1.0},
        {"max_items": 3},
    ]
    for change in bad:
        with pytest.raises(ValueError):
            dataclasses.replace(TINY, **change)
    with pytest.raises(ValueError, match="unknown MiniUnetConfig fields"):
        MiniUnetConfig.from_json('{"layers": 2}')


def test_mismatched_text_width_and_missing_vae_are_clear_errors(
    items: pd.DataFrame, frozen: dict[str, Path], tmp_path: Path
) -> None:
    wrong = dataclasses.replace(TINY, cross_attention_dim=64)
    with pytest.raises(
        ICGError, match="cross_attention_dim 64 does not match the text encoder's hidden size 32"
    ):
        train_mini_unet(items, tmp_path / "a", wrong, **frozen, progress=False)
    with pytest.raises(DataError, match="no saved VAE"):
        train_mini_unet(
            items, tmp_path / "b", TINY, vae_dir=tmp_path, clip_dir=frozen["clip_dir"], progress=False
        )
    with pytest.raises(ValueError, match="threads"):
        train_mini_unet(items, tmp_path / "c", TINY, **frozen, threads=0)


# ------------------------------------------------------------------------ Min-SNR weighting, warm start
def test_min_snr_weights_low_noise_steps_down_and_leaves_high_noise_ones() -> None:
    from icg.training.mini_unet import eps_loss, noise_schedulers

    scheduler, _ = noise_schedulers()
    pred, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    plain = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    low, high = torch.tensor([10, 10]), torch.tensor([990, 990])  # SNR ≫ 5 at t=10, ≪ 5 at t=990
    assert torch.allclose(eps_loss(pred, noise, high, scheduler, 5.0), plain.mean())
    assert eps_loss(pred, noise, low, scheduler, 5.0) < 0.1 * plain.mean()
    plain_loss = torch.nn.functional.mse_loss(pred, noise)
    assert torch.equal(eps_loss(pred, noise, low, scheduler, None), plain_loss)
    with pytest.raises(ValueError, match="snr_gamma"):
        MiniUnetConfig(snr_gamma=0.0)


def test_warm_start_begins_at_the_saved_weights_and_refuses_another_architecture(
    items: pd.DataFrame, frozen: dict[str, Path], trained: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = trained
    warm = dataclasses.replace(TINY, init_unet=str(out / "unet"), epochs=1, lr=1e-12, ema_decay=0.0)
    train_mini_unet(items, tmp_path / "warm", warm, **frozen, threads=1, progress=False)
    start = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "warm" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)  # lr ≈ 0: still the saved ones
    other = dataclasses.replace(warm, block_out_channels=(16, 16, 16))
    with pytest.raises(DataError, match="another architecture"):
        train_mini_unet(items, tmp_path / "other", other, **frozen, threads=1, progress=False)
