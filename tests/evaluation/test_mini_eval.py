"""`icg evaluate mini`'s measuring code: FD-miniCLIP and the backbone report, on tiny random components."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image
from scipy import linalg
from transformers import CLIPModel, CLIPProcessor

from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import items_genres
from icg.data.movielens import load_ml100k
from icg.data.pixels import to_pil
from icg.data.splits import split_items
from icg.evaluation.fd import FD_NAME, ClipImageFeatures, frechet_distance
from icg.evaluation.mini import (
    SAMPLES_NAME,
    build_pipeline,
    evaluate_mini,
    exact_mcnemar,
    generate_covers,
    genre_candidates,
    genre_oracle_recall,
    guidance_figures,
    held_out_rows,
    item_retrieval_figures,
    mini_report_markdown,
    prompt_swap_figures,
    recall_at_k,
    render_references,
    swap_targets,
    vae_reconstruction,
    zero_shot_genres,
)
from icg.evaluation.mini_diagnosis import (
    RecordingAttnProcessor,
    diagnose_conditioning,
    diagnosis_markdown,
    write_section,
)
from icg.testing import get_dummy_components, tiny_clip_model
from icg.training.clip_data import embed_images, evaluate_clip


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


# ------------------------------------------------------------------------------------------- prompt following
def test_recall_perfect_random_and_collapsed() -> None:
    """A query that is its key scores R@1 = 1; random queries score about k/N; a collapsed set scores 0."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(400, 32, generator=gen)
    assert recall_at_k(keys, keys, 1) == 1.0
    assert recall_at_k(keys + 0.01 * torch.randn(400, 32, generator=gen), keys, 1) == 1.0
    noise, many = torch.randn(400, 32, generator=gen), torch.randn(1000, 32, generator=gen)
    assert recall_at_k(noise, keys, 1) < 0.015  # chance 0.0025
    assert 0.03 < recall_at_k(many, torch.randn(1000, 32, generator=gen), 50) < 0.07  # chance 0.05, ±3 sd
    same = torch.ones(400, 32)
    assert recall_at_k(same, same, 10) == 0.0  # ties count against the query
    with pytest.raises(ValueError):
        recall_at_k(keys[:3], keys, 1)


def test_genre_oracle_recall() -> None:
    assert genre_oracle_recall(["Drama"] * 4 + ["Horror"], 1) == pytest.approx((4 * 0.25 + 1) / 5)
    assert genre_oracle_recall(["Drama"] * 4 + ["Horror"], 10) == 1.0


def test_item_retrieval_on_covers(clip) -> None:
    """Covers retrieving themselves score R@1 = 1; another item's cover never finds its own item."""
    features = ClipImageFeatures(clip[0])
    refs = _random_images(12, 11, size=32)
    res = item_retrieval_figures(
        features, refs, {"same": refs, "shifted": refs.roll(1, dims=0)}, ["Drama"] * 6 + ["Horror"] * 6
    )
    assert res["same_r1"] == 1.0 and res["same_r10"] == 1.0
    assert res["shifted_r1"] == 0.0  # cover i is item i-1's reference: its own is never the best match
    assert res["chance_r1"] == pytest.approx(1 / 12, abs=1e-4)
    assert res["chance_r10"] == pytest.approx(10 / 12, abs=1e-4)
    assert res["genre_oracle_r1"] == pytest.approx(1 / 6, abs=1e-4) and res["n_items"] == 12


def test_exact_mcnemar() -> None:
    yes, no = np.ones(10, bool), np.zeros(10, bool)
    res = exact_mcnemar(yes, no)
    assert (res["first_only"], res["second_only"]) == (10, 0)
    assert res["p_value"] == pytest.approx(2 * 0.5**10)
    assert exact_mcnemar(yes, yes)["p_value"] == 1.0  # no discordant pair
    balanced = exact_mcnemar(np.array([1, 0, 1, 0, 1, 1], bool), np.array([0, 1, 0, 1, 1, 1], bool))
    assert balanced["p_value"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        exact_mcnemar(yes, no[:3])


def test_guidance_figures() -> None:
    primary = ["Drama"] * 12
    res = guidance_figures(["Horror"] * 12, primary, primary, 1.0, 7.0)
    assert res["accuracy_high"] == 1.0 and res["accuracy_low"] == 0.0
    assert res["only_high_correct"] == 12 and res["only_low_correct"] == 0
    assert res["p_value"] == pytest.approx(2 * 0.5**12) and "McNemar" in res["test"]
    same = guidance_figures(primary, primary, primary, 1.0, 7.0)
    assert same["p_value"] == 1.0 and same["accuracy_high"] == same["accuracy_low"]


def test_prompt_swap_figures_follow_vs_ignore() -> None:
    """Drawing the new genre scores 1 (p small); ignoring the prompt scores the baseline (p = 1)."""
    primary = ["Drama", "Comedy", "Horror", "Action"] * 5
    new = ["Horror", "Drama", "Action", "Comedy"] * 5
    follows = prompt_swap_figures(new, primary, new, primary, new, primary, n_genres=4)
    assert follows["follows_new_genre"] == 1.0 and follows["baseline_unswapped_is_new_genre"] == 0.0
    assert follows["keeps_original_genre"] == 0.0 and follows["unswapped_original_genre"] == 1.0
    assert follows["paired_test"]["p_value"] < 1e-5 and follows["chance_uniform"] == 0.25
    ignores = prompt_swap_figures(new, primary, primary, primary, new, primary, n_genres=4)
    assert ignores["follows_new_genre"] == ignores["baseline_unswapped_is_new_genre"] == 0.0
    assert ignores["keeps_original_genre"] == 1.0 and ignores["paired_test"]["p_value"] == 1.0
    with pytest.raises(ValueError):
        prompt_swap_figures(new, primary[:3], new, primary, new, primary, n_genres=4)


def test_swap_targets_are_other_genres_and_seeded() -> None:
    tuples = [("Drama",), ("Action", "Comedy"), ("unknown",), ("Horror", "Drama")] * 50
    candidates = genre_candidates(tuples)
    assert candidates == ["Action", "Comedy", "Drama", "Horror", "unknown"]
    new = swap_targets(tuples, candidates, 0)
    assert all(g not in t and g != "unknown" for g, t in zip(new, tuples, strict=True))
    assert new == swap_targets(tuples, candidates, 0) and new != swap_targets(tuples, candidates, 1)
    assert set(new[0::4]) == {"Action", "Comedy", "Horror"}  # every allowed genre gets drawn
    with pytest.raises(ValueError, match="no genre"):
        swap_targets([("Action",)], ["Action", "unknown"], 0)


def test_zero_shot_genres_match_evaluate_clip(clip, tmp_path: Path) -> None:
    """The per-cover predictions reproduce evaluate_clip's genre accuracy on the same covers."""
    model, processor = clip
    items = load_ml100k().items.head(10)
    covers = render_references(items, items_genres(items), 64)
    tuples = items_genres(items)
    predicted = zero_shot_genres(model, processor, covers, genre_candidates(tuples))
    accuracy = np.mean([p == t[0] for p, t in zip(predicted, tuples, strict=True)])
    expected = evaluate_clip(model, processor, items, images=[to_pil(c) for c in covers])["genre_accuracy"]
    assert round(float(accuracy), 4) == expected


def test_render_references_match_the_cover_cache(tmp_path: Path) -> None:
    items = load_ml100k().items.head(5)
    cache = render_cover_cache(items, tmp_path, 64, 2, progress=False)
    assert torch.equal(render_references(items, items_genres(items), 64), cache[:, 0])
    other = render_references(items, [("Horror",)] * 5, 64)
    assert (other.int() - cache[:, 0].int()).abs().float().mean() > 1  # another genre draws another cover


def test_result_has_prompt_following_figures(result) -> None:
    res, _ = result
    swap, guide, ret = res["prompt_swap"], res["guidance_effect"], res["item_retrieval"]
    assert swap["n_items"] == guide["n_items"] == ret["n_items"] == 4
    assert guide["accuracy_high"] == res["genre_accuracy"]["generated"]  # one measurement, two views
    assert guide["low_guidance"] == 1.0 and guide["high_guidance"] == 7.0 and 0 <= guide["p_value"] <= 1
    for key in ("follows_new_genre", "baseline_unswapped_is_new_genre", "reference_follows_new_genre"):
        assert 0.0 <= swap[key] <= 1.0, key
    assert swap["chance_uniform"] == res["genre_accuracy"]["chance_uniform"]
    for key in ("generated_r1", "generated_r10", "random_unet_r10", "reference_variant_r1"):
        assert 0.0 <= ret[key] <= 1.0, key
    assert ret["chance_r1"] == 0.25 and ret["chance_r10"] == 1.0
    report = mini_report_markdown(res)
    assert "prompt swap" in report and "item retrieval R@10" in report and "McNemar" in report


# ------------------------------------------------------------------------------------------------ diagnosis
def _diagnose(backbone: Path, tmp_path: Path) -> dict:
    items = load_ml100k().items.head(20)
    return diagnose_conditioning(
        backbone, items, cache_dir=tmp_path / "cache", max_items=4, timesteps=(100, 900)
    )


def test_diagnosis_sees_the_caption_and_not_without_cross_attention(saved, tmp_path: Path) -> None:
    """The tiny UNet's ε moves with the caption; with every cross-attention output zeroed it cannot."""
    backbone, _ = saved
    res = _diagnose(backbone, tmp_path)
    assert res["n_items"] == 4 and set(res["eps"]["by_t"]) == {"100", "900"}
    assert res["eps"]["mean"]["rel_change_vs_empty"] > 1e-4
    uniform = res["cross_attention"]["uniform_entropy"]
    for layer in res["cross_attention"]["layers"].values():
        assert 0.0 <= layer["caption"]["entropy"] <= uniform + 1e-4
        assert 0.0 < layer["caption"]["mass_on_caption_tokens"] <= 1.0 + 1e-6
    deaf = tmp_path / "deaf"
    shutil.copytree(backbone, deaf)
    unet = UNet2DConditionModel.from_pretrained(deaf / "unet")
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.zero_()
                module.bias.zero_()
    unet.save_pretrained(deaf / "unet")
    mean = _diagnose(deaf, tmp_path)["eps"]["mean"]
    assert mean["rel_change_vs_empty"] == 0.0 and mean["rel_change_vs_swapped"] == 0.0
    assert mean["eps_mse_caption"] == mean["eps_mse_empty"]


def test_recording_processor_leaves_outputs_unchanged(saved) -> None:
    backbone, _ = saved
    unet = UNet2DConditionModel.from_pretrained(backbone / "unet").eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    hidden = torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor())
        plain = unet(x, torch.tensor([10, 500]), hidden).sample
        store: dict[str, list] = {}
        mask = {"mask": torch.ones(2, 7, dtype=torch.bool)}
        unet.set_attn_processor({n: RecordingAttnProcessor(n, store, mask) for n in unet.attn_processors})
        recorded = unet(x, torch.tensor([10, 500]), hidden).sample
    assert torch.allclose(plain, recorded, atol=1e-6)
    assert store and all(torch.cat(v).shape == (2, 3) for v in store.values())
    for chunks in store.values():  # every key token is a caption token here: all the mass is on them
        assert torch.allclose(torch.cat(chunks)[:, 1], torch.ones(2), atol=1e-5)


def test_diagnosis_section_is_replaced_not_repeated(saved, tmp_path: Path) -> None:
    backbone, _ = saved
    report = diagnosis_markdown(_diagnose(backbone, tmp_path) | {"command": "python -m x"})
    assert "Diagnosis" in report and "python -m x" in report and report.count("\n|") > 10
    md = tmp_path / "mini_eval.md"
    md.write_text("# Mini backbone quality\n\ntable\n")
    write_section(md, report)
    write_section(md, report.replace("Diagnosis", "Diagnosis again"))
    text = md.read_text()
    assert text.startswith("# Mini backbone quality\n\ntable\n")
    assert text.count("Diagnosis") == 1 and "Diagnosis again" in text
