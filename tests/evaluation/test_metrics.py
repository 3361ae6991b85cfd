"""Evaluation metrics: each real metric on tiny random backbones saved in the real file layout, the mini-CLIP
stand-ins under their own names, and clear errors naming bad weight files. Offline: every weight is written
to tmp_path by the test itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from icg.errors import ICGError
from icg.evaluation.fd import frechet_distance
from icg.evaluation.metrics import (
    CLIP_SCORE_MINI_NAME,
    MetricWeightsError,
    build_metrics,
    load_aesthetics,
    load_clip_score,
    load_fid,
    load_lpips,
    shipped_lpips_lin,
    ssim_metric,
)
from icg.measures.perceptual import ssim_per_image
from icg.rewards.aesthetic import AestheticHead, load_aesthetic
from icg.testing import random_fid_inception_state, tiny_clip_model

TEXTS = [
    "a cartoon cat in a city at night",
    "a drama film poster with two people on a beach at sunset",
    "dog",
]
ALEX_CHANNELS = (64, 192, 384, 256, 256)
VGG_CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture(autouse=True)
def one_thread():
    """The CPU is shared: two threads per op only contend (an Inception forward takes ~9x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metric_weights")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), root / "alexnet.pth")  # whole model
    vgg_features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save(
        {f"features.{k}": v for k, v in vgg_features.state_dict().items()}, root / "vgg16_features.pth"
    )
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(ALEX_CHANNELS)}
    torch.save(lin, root / "alex_lin.pth")
    torch.save(random_fid_inception_state(), root / "inception.pth")
    clip, processor = tiny_clip_model(seed=1)
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    torch.manual_seed(4)
    torch.save(AestheticHead((16, 32, 16, 8, 8, 1)).state_dict(), root / "aesthetic.pth")
    return {p.stem if p.is_file() else p.name: p for p in root.iterdir()}


def _images(seed: int, n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _near(x: torch.Tensor, scale: float = 0.03) -> torch.Tensor:
    return (x + scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)


def _manual_lpips(alexnet: nn.Module, lin: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """LPIPS written out from the paper on torchvision's AlexNet relu1..relu5 (features 1, 4, 7, 9, 11)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(z: torch.Tensor) -> list[torch.Tensor]:
        h, out = (2 * z - 1 - shift) / scale, []
        for i, layer in enumerate(alexnet.features[:12]):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(len(x))
    for k, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        total += F.conv2d((a - b) ** 2, lin[f"lin{k}.model.1.weight"]).mean((1, 2, 3))
    return total


def test_lpips_alexnet_matches_the_formula_and_orders_pairs(files):
    metric = load_lpips(files["alexnet"], "alex", files["alex_lin"])
    assert (metric.name, metric.higher_is_better, metric.stand_in) == ("LPIPS", False, False)
    x, far = _images(0), _images(1)
    near = _near(x)
    same = metric(x, references=(x * 255).round().to(torch.uint8))  # uint8 references are converted
    assert same.per_image.shape == (3,) and same.per_image.abs().max() < 1e-3
    assert metric(x, references=x).value == 0.0
    d_near, d_far = metric(x, references=near).per_image, metric(x, references=far).per_image
    assert (d_near > 0).all() and (d_near < d_far).all()
    alexnet = torchvision.models.alexnet(weights=None).eval()
    alexnet.load_state_dict(torch.load(files["alexnet"], weights_only=True))
    with torch.no_grad():
        expected = _manual_lpips(alexnet, torch.load(files["alex_lin"], weights_only=True), x, far)
    torch.testing.assert_close(d_far, expected, rtol=1e-4, atol=1e-6)


def test_lpips_vgg_features_only_with_the_shipped_linear_weights(files):
    assert shipped_lpips_lin("vgg").is_file() and shipped_lpips_lin("alex").is_file()
    metric = load_lpips(files["vgg16_features"], "vgg")  # lin weights: the official copy in torchmetrics
    x = _images(0, n=2, size=32)
    assert metric(x, references=x).value == 0.0
    far = metric(x, references=_images(1, n=2, size=32)).per_image
    assert (metric(x, references=_near(x)).per_image < far).all()


def test_lpips_bad_files_are_named(files, tmp_path):
    with pytest.raises(ICGError, match="gone.pth.*not found"):
        load_lpips(tmp_path / "gone.pth")
    with pytest.raises(MetricWeightsError, match="vgg16_features.pth: not a torchvision alexnet"):
        load_lpips(files["vgg16_features"], "alex")
    bad_lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(VGG_CHANNELS)}
    torch.save(bad_lin, tmp_path / "vgg_lin.pth")
    with pytest.raises(MetricWeightsError, match="vgg_lin.pth: not LPIPS alex linear-layer weights"):
        load_lpips(files["alexnet"], "alex", tmp_path / "vgg_lin.pth")
    with pytest.raises(ValueError, match="LPIPS net"):
        load_lpips(files["alexnet"], "squeeze")  # type: ignore[arg-type]


def test_fid_loads_the_2048d_inception_in_the_torch_fidelity_layout(files):
    metric = load_fid(files["inception"])
    assert (metric.name, metric.higher_is_better, metric.stand_in) == ("FID", False, False)
    x = (_images(0, n=2, size=32) * 255).round().to(torch.uint8)
    with torch.no_grad():
        features = metric.module.inception(x)  # the full network up to the pool, from 299² inputs
    assert features.shape == (2, 2048) and features.std() > 1e-3


def test_fid_values_identity_and_ordering(files):
    # the same torchmetrics FID on the 64-d tap: the 2048-d compute's 2048² eigenproblem is too slow here
    metric = load_fid(files["inception"], feature=64)
    assert metric.name == "FID-64"
    x = _images(0, n=3, size=32)
    same = metric(x, references=x)
    near = metric(_near(x, 0.05), references=x)
    far = metric(torch.zeros_like(x) + torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1), references=x)
    assert same.per_image is None and same.num_images == 3
    assert abs(same.value) < 1e-3 * far.value
    assert same.value < near.value < far.value
    with pytest.raises(ValueError, match="at least 2 images"):
        metric(x[:1], references=x)


def test_fid_bad_files_are_named(files, tmp_path):
    with pytest.raises(ICGError, match="nothing.pth.*not found"):
        load_fid(tmp_path / "nothing.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(MetricWeightsError, match="partial.pth: not a torch-fidelity Inception-v3"):
        load_fid(tmp_path / "partial.pth")


def test_ssim_is_torchmetrics_per_image(files):
    metric = ssim_metric()
    x, far = _images(0), _images(1, size=48)  # references of another size are resized to the images'
    result = metric(x, references=far)
    torch.testing.assert_close(result.per_image, ssim_per_image(x, far))
    assert metric(x, references=x).value == pytest.approx(1.0, abs=1e-5)
    assert (result.name, result.higher_is_better) == ("SSIM", True)


def test_clip_score_is_100_cos_with_eos_keeping_truncation(files):
    metric = load_clip_score(files["clip"])
    assert (metric.name, metric.stand_in, metric.higher_is_better) == ("CLIP score", False, True)
    x = _images(0)
    result = metric(x, texts=TEXTS)  # TEXTS[1] is longer than the tiny CLIP's 16 positions
    clip, processor = tiny_clip_model(seed=1)
    pixels = processor(images=list((x * 255).round().to(torch.uint8)), return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        img = clip.get_image_features(pixel_values=pixels).pooler_output
        txt = clip.get_text_features(**tokens).pooler_output
    expected = 100 * F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(result.per_image, expected, rtol=1e-4, atol=1e-4)
    assert result.value == pytest.approx(max(float(expected.mean()), 0.0), abs=1e-4)
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        metric(x, texts=TEXTS[:2])


def test_aesthetics_wraps_the_laion_head(files):
    metric = load_aesthetics(files["aesthetic"], files["clip"])
    x = _images(0)
    result = metric(x)
    reward = load_aesthetic(files["aesthetic"], files["clip"])
    torch.testing.assert_close(result.per_image, reward.score(x, None, grad=False))
    assert (result.name, result.higher_is_better) == ("Aesthetics", True)


def test_mini_factory_uses_named_stand_ins_and_never_invents_aesthetics(files):
    suite = build_metrics(clip=files["clip"])
    assert list(suite.metrics) == ["LPIPS-miniCLIP", "SSIM", "FD-miniCLIP", "CLIP score-miniCLIP"]
    assert set(suite.notes) == {"LPIPS", "FID", "Aesthetics", "CLIP score"}
    assert "no honest stand-in" in suite.notes["Aesthetics"]
    assert "FD-miniCLIP" in suite.notes["FID"]
    x, refs = _images(0), _images(1)
    results = suite.compute(x, references=refs, texts=TEXTS)
    assert {r.name for r in results.values()} == set(suite.metrics)
    assert all(suite.metrics[n].stand_in == (n != "SSIM") for n in suite.metrics)
    clip, _ = tiny_clip_model(seed=1)
    assert results["FD-miniCLIP"].value == pytest.approx(frechet_distance(refs, x, clip), rel=1e-5)
    assert results[CLIP_SCORE_MINI_NAME].per_image.shape == (3,)
    assert results["LPIPS-miniCLIP"].per_image.shape == (3,)
    assert suite.compute(x, references=refs).keys() == {"LPIPS-miniCLIP", "SSIM", "FD-miniCLIP"}  # no texts
    nothing = build_metrics()
    assert list(nothing.metrics) == ["SSIM"] and "not reported" in nothing.notes["FID"]


def test_real_factory_names_and_argument_errors(files):
    suite = build_metrics(
        clip=files["clip"],
        lpips_backbone=files["alexnet"],
        lpips_lin=files["alex_lin"],
        inception=files["inception"],
        aesthetic=files["aesthetic"],
        aesthetic_clip=files["clip"],
    )
    assert list(suite.metrics) == ["LPIPS", "SSIM", "FID", "Aesthetics", "CLIP score"]
    assert not any(m.stand_in for m in suite.metrics.values())
    assert set(suite.notes) == {"CLIP score"}  # it says the CLIP score ran on the aesthetic CLIP folder
    with pytest.raises(ValueError, match="lpips_lin was given without lpips_backbone"):
        build_metrics(lpips_lin=files["alex_lin"])
    with pytest.raises(ValueError, match="go together"):
        build_metrics(aesthetic=files["aesthetic"])
    with pytest.raises(MetricWeightsError, match="no_clip: CLIP folder not found"):
        build_metrics(clip=files["clip"].parent / "no_clip")
    with pytest.raises(ValueError, match="needs one text per image"):
        suite.metrics["CLIP score"](_images(0))
    with pytest.raises(ValueError, match="reference images"):
        suite.metrics["LPIPS"](_images(0))


def test_the_shipped_mini_clip_backs_the_named_stand_ins():
    from icg.presets import get_preset

    suite = build_metrics(clip=get_preset("mini").clip)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    results = suite.compute(x, references=x, texts=["Toy Story (1995): Animation, Children's, Comedy"] * 2)
    assert list(results) == ["LPIPS-miniCLIP", "SSIM", "FD-miniCLIP", "CLIP score-miniCLIP"]
    assert results["LPIPS-miniCLIP"].value == pytest.approx(0.0, abs=1e-6)
    assert results["SSIM"].value == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= results["CLIP score-miniCLIP"].value <= 100.0
