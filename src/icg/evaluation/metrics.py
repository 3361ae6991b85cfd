"""The paper's image metrics under one protocol, each from local weight files, never a download.

Real metrics (run when their weights are given):
- LPIPS: torchmetrics' LPIPS module (`_NoTrainLpips`, the `lpips` package's code) over a torchvision
  AlexNet or VGG16 state dict from a path; the linear-layer weights from a path or the copy shipped in the
  torchmetrics wheel (`functional/image/lpips_models/{alex,vgg}.pth`, the official v0.1 weights).
- FID: torchmetrics' `FrechetInceptionDistance` over torch-fidelity's Inception-v3 (2048-d pool features) with
  `feature_extractor_weights_path` (the `weights-inception-2015-12-05` state dict).
- SSIM: torchmetrics (`icg.measures.perceptual.ssim_per_image`), needs no weights.
- Aesthetics: the LAION improved-aesthetic-predictor head over CLIP ViT-L/14 (`icg.rewards.aesthetic`).
- CLIP score: torchmetrics' `CLIPScore` (100 · cos, batch mean clamped at 0) over a local transformers folder.

The mini preset has none of those backbones. Its stand-ins run on the mini CLIP and carry its name everywhere:
FD-miniCLIP, LPIPS-miniCLIP, CLIP score-miniCLIP; each lies on its own scale and compares only with itself.
The LAION head only reads ViT-L/14 embeddings, so Aesthetics has no honest stand-in: `build_metrics` leaves
it out and says why in `MetricSuite.notes`, never a made-up number.

Images everywhere: (N, 3, H, W) uint8, or float in [0, 1]. References are resized to the images' size where a
metric compares pairs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn
from torchmetrics.functional.image import lpips as tm_lpips
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from icg.errors import ICGError
from icg.evaluation.fd import FD_NAME, ClipImageFeatures, frechet_distance
from icg.measures.clip_pixels import check_images, to_unit_float
from icg.measures.perceptual import LPIPS_NAME, ClipPerceptualDistance, paired_images, ssim_per_image
from icg.rewards.aesthetic import AestheticReward, load_aesthetic
from icg.rewards.base import read_state_file

logger = logging.getLogger(__name__)

LPIPS_REAL_NAME = "LPIPS"
SSIM_NAME = "SSIM"
FID_NAME = "FID"
AESTHETICS_NAME = "Aesthetics"
CLIP_SCORE_NAME = "CLIP score"
CLIP_SCORE_MINI_NAME = "CLIP score-miniCLIP"
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # LPIPS net name → torchvision architecture
PairFn = Callable[[Tensor, Tensor], Tensor]
SetFn = Callable[[Tensor, Tensor], float]


class MetricWeightsError(ICGError):
    """A metric's weight file or folder is missing or not in the expected layout; the message names it."""


@dataclass(frozen=True)
class MetricResult:
    """One metric over one image set; `per_image` (N,) where the metric is defined per image."""

    name: str
    value: float
    higher_is_better: bool
    num_images: int
    per_image: Tensor | None = None


def to_uint8(images: Tensor) -> Tensor:
    """uint8 stays; float [0, 1] → rounded uint8 (what torch-fidelity and the CLIP processors expect)."""
    return images if images.dtype == torch.uint8 else (to_unit_float(images) * 255).round().to(torch.uint8)


class Metric(ABC):
    """`metric(images, references=..., texts=...) -> MetricResult`; `name` is exactly what tables print,
    `stand_in` is True for the *-miniCLIP metrics, `module` the network that `to(device)` moves."""

    needs_references: bool = False
    needs_texts: bool = False

    def __init__(
        self,
        name: str,
        higher_is_better: bool,
        module: nn.Module | None = None,
        *,
        stand_in: bool = False,
        batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name, self.higher_is_better, self.module = name, higher_is_better, module
        self.stand_in, self.batch_size = stand_in, batch_size
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Metric:
        self.device = torch.device(device)
        if self.module is not None:
            self.module.to(self.device)
        return self

    def __call__(
        self, images: Tensor, *, references: Tensor | None = None, texts: Sequence[str] | None = None
    ) -> MetricResult:
        check_images(images, "images")
        if len(images) == 0:
            raise ValueError(f"{self.name} needs at least one image")
        if self.needs_references:
            if references is None:
                raise ValueError(f"{self.name} compares against reference images; pass references=")
            check_images(references, "references")
        if self.needs_texts:
            if texts is None or isinstance(texts, str):
                raise ValueError(f"{self.name} needs one text per image; pass texts= as a list of strings")
            texts = list(texts)
            if len(texts) != len(images):
                raise ValueError(f"{self.name}: got {len(images)} images but {len(texts)} texts")
        with torch.no_grad():
            return self._compute(images, references, texts)

    def _batches(self, n: int) -> list[slice]:
        return [slice(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]

    def _per_image_result(self, values: list[Tensor], n: int) -> MetricResult:
        per_image = torch.cat(values).float().cpu()  # (N,)
        return MetricResult(self.name, float(per_image.mean()), self.higher_is_better, n, per_image)

    @abstractmethod
    def _compute(self, images: Tensor, references: Tensor | None, texts: list[str] | None) -> MetricResult:
        """Inputs already validated."""


class PairedMetric(Metric):
    """Per-pair score of each image against its reference (LPIPS, LPIPS-miniCLIP, SSIM); value = mean."""

    needs_references = True

    def __init__(
        self, name: str, higher_is_better: bool, pair_fn: PairFn, module: nn.Module | None = None, **kw: Any
    ) -> None:
        super().__init__(name, higher_is_better, module, **kw)
        self.pair_fn = pair_fn  # (B, 3, H, W) images, references → (B,)

    def _compute(self, images: Tensor, references: Tensor | None, texts: list[str] | None) -> MetricResult:
        assert references is not None
        if len(references) != len(images):
            raise ValueError(f"{self.name}: got {len(images)} images but {len(references)} references")
        values = [
            self.pair_fn(images[b].to(self.device), references[b].to(self.device)).flatten()  # (B,)
            for b in self._batches(len(images))
        ]
        return self._per_image_result(values, len(images))


class DistributionMetric(Metric):
    """A distance between the image set and the reference set (FID, FD-miniCLIP); no per-image values."""

    needs_references = True

    def __init__(self, name: str, set_fn: SetFn, module: nn.Module | None = None, **kw: Any) -> None:
        super().__init__(name, False, module, **kw)
        self.set_fn = set_fn  # (N, 3, H, W) images, (M, 3, H', W') references → distance

    def _compute(self, images: Tensor, references: Tensor | None, texts: list[str] | None) -> MetricResult:
        assert references is not None
        if len(images) < 2 or len(references) < 2:
            raise ValueError(
                f"{self.name} needs at least 2 images per set, got {len(images)} and {len(references)}"
            )
        value = self.set_fn(images.to(self.device), references.to(self.device))
        return MetricResult(self.name, float(value), False, len(images))


class AestheticMetric(Metric):
    """LAION aesthetic score (≈ 1–10) of each image; value = mean. Texts and references are not used."""

    def __init__(self, reward: AestheticReward, batch_size: int = 16) -> None:
        super().__init__(AESTHETICS_NAME, True, reward, batch_size=batch_size)
        self.reward = reward

    def _compute(self, images: Tensor, references: Tensor | None, texts: list[str] | None) -> MetricResult:
        values = [
            self.reward.score(to_unit_float(images[b].to(self.device)), None, grad=False)  # (B,)
            for b in self._batches(len(images))
        ]
        return self._per_image_result(values, len(images))


class _TensorFeatureCLIP(nn.Module):
    """The CLIPModel as torchmetrics 1.9's CLIPScore calls it: `get_*_features` returning tensors.

    transformers 5 returns a model output whose `pooler_output` is the projected embedding, and torchmetrics
    divides the result by its `.norm()` directly (AttributeError otherwise).
    """

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.config = clip.config

    @staticmethod
    def _tensor(out: object) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output  # type: ignore[attr-defined]

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self._tensor(self.clip.get_image_features(pixel_values=pixel_values.to(self.clip.dtype)))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class _TruncatingProcessor:
    """The CLIPProcessor with `truncation=True` for texts: torchmetrics cuts over-long token rows itself,
    which drops the end token that CLIP pools at; the tokenizer's truncation keeps it (as OpenAI's
    `clip.tokenize(truncate=True)`)."""

    def __init__(self, processor: CLIPProcessor, max_length: int) -> None:
        self.processor, self.max_length = processor, max_length

    def __call__(self, *args: object, text: Sequence[str] | None = None, **kwargs: object) -> object:
        if text is not None:
            kwargs |= {"text": text, "truncation": True, "max_length": self.max_length}
        return self.processor(*args, **kwargs)


class ClipScoreMetric(Metric):
    """torchmetrics CLIPScore: per image 100 · cos(image, text); value = max(mean, 0) as CLIPScore.compute."""

    needs_texts = True

    def __init__(
        self, clip: CLIPModel, processor: CLIPProcessor, *, stand_in: bool = False, batch_size: int = 16
    ) -> None:
        positions = int(clip.config.text_config.max_position_embeddings)
        max_length = min(int(getattr(processor.tokenizer, "model_max_length", positions)), positions)
        wrapped = (_TensorFeatureCLIP(clip), _TruncatingProcessor(processor, max_length))
        self.scorer = CLIPScore(model_name_or_path=lambda: wrapped)  # the public metric, as the container
        name = CLIP_SCORE_MINI_NAME if stand_in else CLIP_SCORE_NAME
        super().__init__(name, True, self.scorer, stand_in=stand_in, batch_size=batch_size)

    def _compute(self, images: Tensor, references: Tensor | None, texts: list[str] | None) -> MetricResult:
        assert texts is not None
        values = []
        for b in self._batches(len(images)):
            # torchmetrics' own per-sample step of CLIPScore.update: 100 · cos, (B,)
            score, _ = _clip_score_update(
                to_uint8(images[b]).to(self.device), texts[b], self.scorer.model, self.scorer.processor
            )
            values.append(score)
        per_image = torch.cat(values).float().cpu()  # (N,)
        value = max(float(per_image.mean()), 0.0)  # CLIPScore.compute clamps the mean at 0
        return MetricResult(self.name, value, True, len(images), per_image)


# --------------------------------------------------------------------------- loaders


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def _read_mapping(path: Path, what: str) -> Mapping[str, Tensor]:
    state = read_state_file(path, what)  # weights_only=True: a pickle with code is refused
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MetricWeightsError(
            f"{path}: expected a {what} state dict of tensors, got {type(state).__name__}"
        )
    return state


def _lpips_backbone_state(path: Path, net: str) -> dict[str, Tensor]:
    """The `features.*` tensors of a torchvision AlexNet/VGG16 state dict (whole model or features only)."""
    arch = LPIPS_NETS[net]
    state = _read_mapping(path, f"torchvision {arch}")
    with torch.device("meta"):  # keys and shapes only, no 60-140M-parameter init
        expected = {
            k: tuple(v.shape) for k, v in getattr(torchvision.models, arch)(weights=None).state_dict().items()
        }
    features = sorted(k for k in expected if k.startswith("features."))
    unknown = sorted(set(state) - set(expected))
    missing = [k for k in features if k not in state]
    shapes = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    if unknown or missing or shapes:
        detail = "; ".join(
            f"{label} {keys[:3]}"
            for label, keys in (("unexpected", unknown), ("missing", missing), ("shape mismatch", shapes))
            if keys
        )
        raise MetricWeightsError(f"{path}: not a torchvision {arch} state dict (LPIPS net {net!r}): {detail}")
    return {k: state[k] for k in features}


def shipped_lpips_lin(net: str) -> Path:
    """The official LPIPS v0.1 linear-layer weights shipped inside the torchmetrics wheel."""
    return Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"


def load_lpips(
    backbone: str | Path,
    net: Literal["alex", "vgg"] = "alex",
    lin: str | Path | None = None,
    *,
    batch_size: int = 16,
) -> PairedMetric:
    """LPIPS from a torchvision AlexNet/VGG16 state dict + linear-layer weights (default: torchmetrics' copy).

    The module is torchmetrics' `_NoTrainLpips` built on the meta device (its own constructor would init a
    random torchvision model, ~140M parameters for VGG) and then filled strictly from the two files.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
    backbone_path = Path(backbone)
    features = _lpips_backbone_state(backbone_path, net)
    with torch.device("meta"):
        lpips = tm_lpips._NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
    lpips.to_empty(device="cpu")
    lpips.scaling_layer = tm_lpips.ScalingLayer()  # its constant buffers are not in any state dict
    net_state = {}
    for key in lpips.net.state_dict():  # "slice2.3.weight" holds torchvision's "features.3.weight"
        _, index, param = key.split(".", 2)
        net_state[key] = features[f"features.{index}.{param}"]
    lpips.net.load_state_dict(net_state, strict=True)

    lin_path = Path(lin) if lin is not None else shipped_lpips_lin(net)
    lin_state = _read_mapping(lin_path, f"LPIPS {net} linear layers")
    expected = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(lpips.chns)}
    bad = sorted(set(expected) ^ set(lin_state)) or [
        k for k, s in expected.items() if tuple(lin_state[k].shape) != s
    ]
    if bad:
        raise MetricWeightsError(
            f"{lin_path}: not LPIPS {net} linear-layer weights: expected {len(expected)} keys "
            f"lin{{i}}.model.1.weight of shapes {list(expected.values())}; wrong: {bad[:4]}"
        )
    for i in range(len(lpips.chns)):
        getattr(lpips, f"lin{i}").load_state_dict({"model.1.weight": lin_state[f"lin{i}.model.1.weight"]})
    lpips.eval().requires_grad_(False)
    logger.info("loaded LPIPS-%s from %s and %s", net, backbone_path, lin_path)

    def pair_fn(images: Tensor, references: Tensor) -> Tensor:
        x, y = paired_images(images, references)
        return lpips(x, y, normalize=True).flatten()  # (B,)

    return PairedMetric(LPIPS_REAL_NAME, False, pair_fn, lpips, batch_size=batch_size)


def load_fid(
    inception: str | Path,
    *,
    feature: Literal[64, 192, 768, 2048] = 2048,
    antialias: bool = True,
    batch_size: int = 16,
) -> DistributionMetric:
    """FID from torch-fidelity's Inception-v3 state dict (`weights-inception-2015-12-05-6726825d.pth`).

    FID is the 2048-d pool feature; the narrower taps (torchmetrics' `feature`) give other numbers and are
    for quick checks only (the 2048-d compute solves a 2048² eigenproblem, ~10 s on one CPU core).
    `antialias=True` is torchmetrics' default resize to 299²; False is torch-fidelity's TF1-compatible
    bilinear resize (the one of published FIDs). Compare only figures computed the same way.
    """
    path = Path(inception)
    _read_mapping(path, "Inception-v3 (torch-fidelity)")  # safe read first: torch-fidelity unpickles fully
    try:
        fid = FrechetInceptionDistance(
            feature=feature, normalize=False, feature_extractor_weights_path=str(path), antialias=antialias
        )
    except ModuleNotFoundError as exc:
        raise ICGError(f"FID needs the torch-fidelity package (pip install torch-fidelity): {exc}") from exc
    except (RuntimeError, KeyError) as exc:
        raise MetricWeightsError(
            f"{path}: not a torch-fidelity Inception-v3 state dict: {_first_line(exc)}"
        ) from exc
    logger.info("loaded FID Inception-v3 from %s", path)

    def set_fn(images: Tensor, references: Tensor) -> float:
        fid.reset()
        for start in range(0, len(references), batch_size):
            fid.update(to_uint8(references[start : start + batch_size]), real=True)
        for start in range(0, len(images), batch_size):
            fid.update(to_uint8(images[start : start + batch_size]), real=False)
        value = float(fid.compute())
        fid.reset()
        return value

    name = FID_NAME if feature == 2048 else f"{FID_NAME}-{feature}"
    return DistributionMetric(name, set_fn, fid, batch_size=batch_size)


def ssim_metric(*, batch_size: int = 16) -> PairedMetric:
    """SSIM of each image to its reference (torchmetrics, Gaussian 11×11, data range 1)."""
    return PairedMetric(SSIM_NAME, True, ssim_per_image, batch_size=batch_size)


def load_aesthetics(head: str | Path, clip: str | Path, *, batch_size: int = 16) -> AestheticMetric:
    """Aesthetics: the LAION head file over a CLIP ViT-L/14 transformers folder (`load_aesthetic`)."""
    return AestheticMetric(load_aesthetic(head, clip), batch_size=batch_size)


def load_clip(folder: str | Path) -> tuple[CLIPModel, CLIPProcessor]:
    """CLIPModel + CLIPProcessor from one local transformers folder; failures name the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricWeightsError(
            f"{folder}: CLIP folder not found (expected a transformers CLIPModel folder)"
        )
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # any loader failure (missing config or processor, bad weights) names the folder
        raise MetricWeightsError(
            f"{folder}: cannot load a CLIPModel + CLIPProcessor: {_first_line(exc)}"
        ) from exc
    return model, processor


def load_clip_score(folder: str | Path, *, stand_in: bool = False, batch_size: int = 16) -> ClipScoreMetric:
    """CLIP score over a local transformers CLIP folder (ViT-L/14 is torchmetrics' default model);
    `stand_in=True` names it CLIP score-miniCLIP."""
    model, processor = load_clip(folder)
    return ClipScoreMetric(model, processor, stand_in=stand_in, batch_size=batch_size)


def mini_clip_metrics(clip: str | Path, *, batch_size: int = 16) -> dict[str, Metric]:
    """The stand-ins on one (mini) CLIP folder: FD-miniCLIP, LPIPS-miniCLIP, CLIP score-miniCLIP."""
    model, processor = load_clip(clip)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    features = ClipImageFeatures(model, mean, std)
    perceptual = ClipPerceptualDistance(model, mean, std)

    def fd(images: Tensor, references: Tensor) -> float:
        return frechet_distance(references, images, features, batch_size=batch_size)

    return {
        LPIPS_NAME: PairedMetric(
            LPIPS_NAME, False, perceptual, perceptual, stand_in=True, batch_size=batch_size
        ),
        FD_NAME: DistributionMetric(FD_NAME, fd, features, stand_in=True, batch_size=batch_size),
        CLIP_SCORE_MINI_NAME: ClipScoreMetric(model, processor, stand_in=True, batch_size=batch_size),
    }


# --------------------------------------------------------------------------- factory


@dataclass
class MetricSuite:
    """The metrics that can run (table order) and, per standard metric name, why it is absent or replaced."""

    metrics: dict[str, Metric]
    notes: dict[str, str] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> MetricSuite:
        for metric in self.metrics.values():
            metric.to(device)
        return self

    def compute(
        self, images: Tensor, *, references: Tensor | None = None, texts: Sequence[str] | None = None
    ) -> dict[str, MetricResult]:
        """Every metric whose inputs are given; the others are skipped (logged)."""
        results = {}
        for name, metric in self.metrics.items():
            if (metric.needs_references and references is None) or (metric.needs_texts and texts is None):
                logger.info(
                    "%s skipped: it needs %s", name, "references" if metric.needs_references else "texts"
                )
                continue
            results[name] = metric(images, references=references, texts=texts)
        return results


def build_metrics(
    *,
    clip: str | Path | None = None,
    lpips_backbone: str | Path | None = None,
    lpips_net: Literal["alex", "vgg"] = "alex",
    lpips_lin: str | Path | None = None,
    inception: str | Path | None = None,
    aesthetic: str | Path | None = None,
    aesthetic_clip: str | Path | None = None,
    clip_score_model: str | Path | None = None,
    fid_antialias: bool = True,
    batch_size: int = 16,
) -> MetricSuite:
    """Real metrics for the weights given; the mini-CLIP stand-ins (named so) where only `clip` is given.

    `clip` is the preset's own CLIP (the mini CLIP): it backs FD-miniCLIP, LPIPS-miniCLIP and
    CLIP score-miniCLIP, each used only where the real metric's weights are absent. The real CLIP score runs
    on `clip_score_model`, or else on `aesthetic_clip` (both ViT-L/14, torchmetrics' default CLIPScore model).
    """
    if lpips_lin is not None and lpips_backbone is None:
        raise ValueError("lpips_lin was given without lpips_backbone (the AlexNet/VGG16 state dict)")
    if (aesthetic is None) != (aesthetic_clip is None):
        raise ValueError(
            "aesthetic (the LAION head file) and aesthetic_clip (CLIP ViT-L/14 folder) go together"
        )
    stand_ins = mini_clip_metrics(clip, batch_size=batch_size) if clip is not None else {}
    metrics: dict[str, Metric] = {}
    notes: dict[str, str] = {}

    def stand_in_or_note(real: str, stand_in: str, missing: str) -> None:
        if stand_in in stand_ins:
            metrics[stand_in] = stand_ins[stand_in]
            notes[real] = f"no {missing}: reported as {stand_in} instead (mini CLIP, its own scale)"
        else:
            notes[real] = f"not reported: no {missing} and no CLIP for {stand_in}"

    if lpips_backbone is not None:
        metrics[LPIPS_REAL_NAME] = load_lpips(lpips_backbone, lpips_net, lpips_lin, batch_size=batch_size)
    else:
        stand_in_or_note(LPIPS_REAL_NAME, LPIPS_NAME, "AlexNet/VGG16 weights (lpips_backbone)")
    metrics[SSIM_NAME] = ssim_metric(batch_size=batch_size)
    if inception is not None:
        metrics[FID_NAME] = load_fid(inception, antialias=fid_antialias, batch_size=batch_size)
    else:
        stand_in_or_note(FID_NAME, FD_NAME, "Inception-v3 weights (inception)")
    if aesthetic is not None and aesthetic_clip is not None:
        metrics[AESTHETICS_NAME] = load_aesthetics(aesthetic, aesthetic_clip, batch_size=batch_size)
    else:
        notes[AESTHETICS_NAME] = (
            "not reported: no LAION aesthetic head + CLIP ViT-L/14 (aesthetic, aesthetic_clip); the head "
            "reads only ViT-L/14 embeddings, so there is no honest stand-in on the mini CLIP"
        )
    score_folder = clip_score_model if clip_score_model is not None else aesthetic_clip
    if score_folder is not None:
        metrics[CLIP_SCORE_NAME] = load_clip_score(score_folder, batch_size=batch_size)
        if clip_score_model is None:
            notes[CLIP_SCORE_NAME] = f"computed on the aesthetic CLIP folder {aesthetic_clip}"
    else:
        stand_in_or_note(CLIP_SCORE_NAME, CLIP_SCORE_MINI_NAME, "CLIP ViT-L/14 folder (clip_score_model)")
    for name, note in notes.items():
        logger.info("%s: %s", name, note)
    return MetricSuite(metrics, notes)
