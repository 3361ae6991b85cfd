"""HPSv2 / HPSv2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on human preference pairs.

Layout of the official file (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`): a torch pickle holding a dict
whose `state_dict` is the whole open_clip model. The official `hpsv2.score()` reloads that file on every call
and scores one PIL image at a time; here the model is built once (`open_clip.create_model(name,
pretrained=None)`: architecture from open_clip's config registry, random init, nothing downloaded), the file
is loaded into it, and whole batches are scored.

Score = diag(normalize(image features) @ normalize(text features).T), ≈ 0.2–0.35 for real images. Images are
resized on their longest side to 224 and zero-padded to square (the HPS repo's `ResizeMaxSize`; it skips the
padding when the longest side is already 224, which a non-square image then fails on — we always pad), then
normalised with OpenAI CLIP mean/std; texts use open_clip's tokenizer for the model (77 tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icg.rewards.base import (
    CLIP_MEAN,
    CLIP_STD,
    ImageSpec,
    Reward,
    RewardCheckpointError,
    Users,
    load_strict,
    preprocess,
    read_state_file,
)
from icg.rewards.fast import TextFeatureCache, TowerGraphs

logger = logging.getLogger(__name__)

Tokenizer = Callable[[Sequence[str]], Tensor]  # open_clip tokenizers: list of B strings → (B, L) token ids


def hps_image_spec(model: torch.nn.Module) -> ImageSpec:
    """HPS preprocessing for this open_clip model: longest side to the tower's size, black padding."""
    size = model.visual.image_size
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ImageSpec(size=hw, mean=CLIP_MEAN, std=CLIP_STD, mode="pad")


class HPSv2Reward(Reward):
    """Human Preference Score v2(.1) on a batch: cosine of open_clip image and text features."""

    name = "hpsv2"
    frozen = True

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, spec: ImageSpec | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec if spec is not None else hps_image_spec(model)
        self.text_cache = TextFeatureCache()  # on with RewardSpeed.cache_texts
        self.graphs = TowerGraphs(self._tower, lambda: list(self.model.visual.parameters()))

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        dtype = self.model.visual.conv1.weight.dtype if hasattr(self.model.visual, "conv1") else self.dtype
        pixels = preprocess(images, self.spec).to(dtype)  # (B, 3, 224, 224)
        img = self.graphs(pixels)  # (B, D)
        params = self.text_tensors()  # what the text path reads: its stamp keys the cache
        txt = self.text_cache.lookup(texts, self._text_features, params, training=self.model.training)
        return (img * txt).sum(-1)  # (B,) = diag(img @ txt.T) without the B×B product

    def _tower(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)  # (B, D), normalised in fp32

    @torch.no_grad()
    def _text_features(self, texts: list[str]) -> Tensor:
        text = self.text_tensors()
        tokens = self.tokenizer(texts).to(text[0].device if text else self.device)  # (B, L)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).to(self.device)  # (B, D)

    def text_tensors(self) -> list[Tensor]:
        """open_clip keeps the text path beside `visual`: everything but `visual.*` and the logit scalars."""
        named = (*self.model.named_parameters(), *self.model.named_buffers())
        return [t for n, t in named if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")]

    def towers(self) -> list[nn.Module]:
        return [self.model]

    def warm_text_cache(self, texts: Sequence[str], users: Sequence[str] | None = None) -> None:
        if texts:
            params = self.text_tensors()
            self.text_cache.lookup(texts, self._text_features, params, training=self.model.training)


def load_hpsv2(
    checkpoint: str | Path,
    model_name: str = "ViT-H-14",
    *,
    dtype: torch.dtype = torch.float32,
    weights_only: bool = True,
) -> HPSv2Reward:
    """HPSv2 reward from the official `.pt` file (dict with `state_dict`) for open_clip model `model_name`.

    `model_name` must be an open_clip architecture config (built in, or added with
    `open_clip.add_model_config`); hub schemas (`hf-hub:`) are refused so nothing is downloaded.
    """
    import open_clip  # only HPSv2 needs it: importing icg.rewards must not

    path = Path(checkpoint)
    if model_name.startswith(("hf-hub:", "local-dir:")) or model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model config {model_name!r} for HPSv2 (the official one is 'ViT-H-14'); "
            "register a custom config with open_clip.add_model_config(path)"
        )
    ckpt = read_state_file(path, "HPSv2", weights_only=weights_only)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt["state_dict"], dict):
        keys = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RewardCheckpointError(
            f"{path}: not an HPSv2 checkpoint: expected a dict with a 'state_dict' entry "
            "(the official layout), "
            f"got {keys}"
        )
    model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
    load_strict(model, ckpt["state_dict"], path, f"HPSv2 ({model_name})")
    model = model.to(dtype)
    tokenizer = open_clip.get_tokenizer(model_name)
    logger.info("loaded HPSv2 %s from %s", model_name, path)
    return HPSv2Reward(model, tokenizer)
