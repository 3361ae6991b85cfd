"""CLIP similarity reward, and the transformers-CLIP loader shared with PickScore and the aesthetic reward.

A local folder in the transformers layout (`config.json` + weights + a processor: `preprocessor_config.json`
or `processor_config.json`, tokenizer files) is loaded with
`CLIPModel.from_pretrained(local_files_only=True)`; the processor's resize / crop / mean / std are read once
and replayed as differentiable tensor ops.
For SD1.5 the CLIP is ViT-L/14 (`openai/clip-vit-large-patch14`).

Score = scale · cos(image, text). Default scale 1 (cosine in [−1, 1]). CLIPScore (Hessel et al., 2021) reports
2.5 · max(cos, 0) and torchmetrics 100 · max(cos, 0); pass scale=100 for the torchmetrics range. We never
clamp at 0: the clamp would zero the gradient for exactly the images that most need it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerBase

from icg.rewards.base import ImageSpec, Reward, RewardCheckpointError, RewardLoss, Users, preprocess
from icg.rewards.fast import TextFeatureCache, TowerGraphs, current_tape

logger = logging.getLogger(__name__)


def _size_get(size: object, key: str) -> int | None:
    """Processor sizes are SizeDict (transformers 5), dict or int (old configs)."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def image_spec_from_processor(processor: CLIPImageProcessor) -> ImageSpec:
    """The CLIP image processor's recipe (shortest-edge resize, center crop, mean/std) as an ImageSpec."""
    crop = processor.crop_size if getattr(processor, "do_center_crop", True) else processor.size
    h, w = _size_get(crop, "height"), _size_get(crop, "width")
    short = _size_get(processor.size, "shortest_edge")
    if h is None or w is None:
        if short is None:
            raise ValueError(
                f"cannot read the image size from the processor: size={processor.size}, crop={crop}"
            )
        h = w = short
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return ImageSpec(size=(int(h), int(w)), mean=mean, std=std, mode="crop", resize=short)


class CLIPEncoder(nn.Module):
    """A frozen transformers CLIPModel with its tokenizer and image recipe: L2-normalised features (B, D)."""

    def __init__(self, model: CLIPModel, spec: ImageSpec, tokenizer: PreTrainedTokenizerBase | None) -> None:
        super().__init__()
        vision_size = model.config.vision_config.image_size
        if spec.size != (vision_size, vision_size):
            raise ValueError(
                f"the processor crops images to {spec.size} but the CLIP vision tower expects "
                f"{vision_size}x{vision_size}; the processor and the model do not belong together"
            )
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.tokenizer = tokenizer
        positions = model.config.text_config.max_position_embeddings
        limit = getattr(tokenizer, "model_max_length", positions) if tokenizer is not None else positions
        self.max_length = min(int(limit), positions)
        self.text_cache = TextFeatureCache()  # on with RewardSpeed.cache_texts
        self.graphs = TowerGraphs(self._tower, self._vision_weights)  # used with RewardSpeed.cuda_graphs

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, D) unit vectors; differentiable w.r.t. images."""
        pixels = preprocess(images, self.spec)  # (B, 3, S, S) float32
        tape = current_tape()
        if tape is not None and id(self.model) in tape.shared_towers:  # another reward holds this model
            key = ("clip-image", id(self.model), id(pixels))
            return tape.shared(key, (self.model, pixels), lambda: self._image_features(pixels))
        return self._image_features(pixels)

    def _image_features(self, pixels: Tensor) -> Tensor:
        return self.graphs(pixels.to(self.model.visual_projection.weight.dtype))

    def _tower(self, pixels: Tensor) -> Tensor:
        """Pixels in the tower's dtype → (B, D) unit features, normalised in fp32."""
        feats = self.model.get_image_features(pixel_values=pixels)
        feats = feats if isinstance(feats, Tensor) else feats.pooler_output  # transformers 5: an output
        return F.normalize(feats.float(), dim=-1)

    def _vision_weights(self) -> list[Tensor]:
        return [self.model.visual_projection.weight, *self.model.vision_model.parameters()]

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """B strings → (B, D) unit vectors. Padded to the longest text of the batch (as PickScore does): the
        causal mask and end-token pooling keep a text's features independent of the padding (and of which
        other texts the cache encodes with it)."""
        if self.tokenizer is None:
            raise ValueError("this CLIP encoder was loaded without a tokenizer; it cannot encode texts")
        params = self.text_tensors()  # what the text path reads: its stamp keys the cache
        return self.text_cache.lookup(texts, self._text_features, params, training=self.model.training)

    def text_tensors(self) -> list[Tensor]:
        text = self.model.text_model
        return [*text.parameters(), *text.buffers(), *self.model.text_projection.parameters()]

    def _text_features(self, texts: list[str]) -> Tensor:
        text_device = self.model.text_projection.weight.device  # the CPU when offloaded
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(text_device)
        feats = self.model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        feats = feats if isinstance(feats, Tensor) else feats.pooler_output
        return F.normalize(feats.float(), dim=-1).to(self.model.visual_projection.weight.device)  # (B, D)


def load_clip_encoder(
    path: str | Path,
    processor_path: str | Path | None = None,
    *,
    with_tokenizer: bool = True,
    dtype: torch.dtype = torch.float32,
) -> CLIPEncoder:
    """CLIPModel + processor from local transformers folders (processor defaults to the model folder)."""
    path = Path(path)
    proc_path = Path(processor_path) if processor_path is not None else path
    for folder, what in ((path, "CLIP model"), (proc_path, "CLIP processor")):
        if not folder.is_dir():
            raise RewardCheckpointError(f"{folder}: {what} folder not found (expected a transformers folder)")
    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except Exception as exc:  # any loader failure (missing config, corrupt weights) names the folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardCheckpointError(f"{path}: cannot load a transformers CLIPModel: {first}") from exc
    try:
        if with_tokenizer:
            processor = CLIPProcessor.from_pretrained(str(proc_path), local_files_only=True)
            image_processor, tokenizer = processor.image_processor, processor.tokenizer
        else:
            image_processor = CLIPImageProcessor.from_pretrained(str(proc_path), local_files_only=True)
            tokenizer = None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardCheckpointError(f"{proc_path}: cannot load the CLIP processor: {first}") from exc
    logger.info(
        "loaded CLIP %s from %s (processor %s)", model.config.vision_config.image_size, path, proc_path
    )
    return CLIPEncoder(model, image_spec_from_processor(image_processor), tokenizer)


class CLIPEncoderReward(Reward):
    """A reward that scores through one `CLIPEncoder` (`self.encoder`): the hooks the speed options use."""

    def towers(self) -> list[nn.Module]:
        return [self.encoder.model]

    def tower_slots(self) -> list[tuple[nn.Module, str, nn.Module]]:
        return [(self.encoder, "model", self.encoder.model)]

    def warm_text_cache(self, texts: Sequence[str], users: Sequence[str] | None = None) -> None:
        if texts:
            self.encoder.text_features(texts)

    def text_tensors(self) -> list[Tensor]:
        return self.encoder.text_tensors()


class CLIPSimilarityReward(CLIPEncoderReward):
    """scale · cos(CLIP image, CLIP text); the paper's weak reconstruction term (image ↔ caption)."""

    name = "clip"
    frozen = True
    default_loss = RewardLoss("linear", scale=1.0, margin=1.0)  # 1 − cos: the reconstruction loss L_rec

    def __init__(self, encoder: CLIPEncoder, scale: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.scale = float(scale)

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        img = self.encoder.image_features(images)  # (B, D)
        txt = self.encoder.text_features(texts)  # (B, D), no graph
        return self.scale * (img * txt).sum(-1)  # (B,)


def load_clip_similarity(
    path: str | Path,
    *,
    processor_path: str | Path | None = None,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> CLIPSimilarityReward:
    """CLIP similarity reward from a local transformers CLIP folder (ViT-L/14 for SD1.5)."""
    return CLIPSimilarityReward(load_clip_encoder(path, processor_path, dtype=dtype), scale=scale)
