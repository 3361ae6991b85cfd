"""The meta-token objective of the Multimodal Generative Learning Stage (paper §3.1, Figure 3).

    L_meta = ‖ head(MLLM(V_enc(transform(I_ref)), T_title, meta)) − CLIP(I_ref) ‖²

The MLLM sees a degraded cover (mask / blur / crop) but must recover the CLIP embedding of the clean one, so
the meta tokens learn to combine the title with what is left of the image. When teacher text is given (e.g.
the explicit prompt), the other tokens keep the usual next-token loss; that text sits after the meta tokens,
so its loss also reaches them.

Normalisation: by default both head(C_ref) and the CLIP target are L2-normalised before the squared distance
(then L_meta = 2 − 2·cos, in [0, 4]), because CLIP embeddings are compared by cosine and their norms differ
between checkpoints; `normalize=False` gives the raw squared distance of the formula.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from icg.context.encoder import ContextEncoder, ImageInput, load_rgb
from icg.errors import ICGError

logger = logging.getLogger(__name__)

TRANSFORMS = ("mask", "blur", "crop", "random")


def _degrade(image: torch.Tensor, kind: str) -> torch.Tensor:
    """One transform on a uint8 (3, H, W) tensor, drawing its randomness from torch's global RNG."""
    h, w = image.shape[-2:]
    if kind == "mask":  # RandomErasing: a black rectangle over 10–30 % of the cover
        return v2.RandomErasing(p=1.0, scale=(0.1, 0.3), value=0)(image)
    if kind == "blur":
        kernel = max(3, (min(h, w) // 8) | 1)  # odd, about an eighth of the short side
        return v2.GaussianBlur(kernel_size=kernel, sigma=(0.5 * kernel / 3, kernel / 3))(image)
    if kind == "crop":  # a 40–100 % crop resized back to the original size
        return v2.RandomResizedCrop(size=(h, w), scale=(0.4, 1.0), antialias=True)(image)
    raise ICGError(f"unknown transform {kind!r}; expected one of {TRANSFORMS}")


def transform_images(
    images: list[ImageInput], transform: str = "mask", seed: int | None = None
) -> list[Image.Image]:
    """Degrade each cover; "random" picks mask/blur/crop per image. A seed makes it repeatable without
    touching the global RNG; `None` uses (and advances) the global RNG, so a seeded run still varies per step.
    """
    if transform not in TRANSFORMS:
        raise ICGError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
    pil = [load_rgb(image, i) for i, image in enumerate(images)]

    def run() -> list[Image.Image]:
        out = []
        for image in pil:
            kind = transform
            if kind == "random":
                kind = TRANSFORMS[int(torch.randint(0, 3, ()).item())]
            out.append(TF.to_pil_image(_degrade(TF.pil_to_tensor(image), kind)))
        return out

    if seed is None:
        return run()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return run()


def meta_token_loss(
    encoder: ContextEncoder,
    images: list[ImageInput],
    titles: list[str],
    clip_image_embeds: torch.Tensor,
    head: nn.Module,
    transform: str = "mask",
    text_targets: list[str] | None = None,
    *,
    seed: int | None = None,
    normalize: bool = True,
    lm_weight: float = 1.0,
    meta_weight: float = 1.0,
) -> dict[str, torch.Tensor | None]:
    """{"loss", "meta_loss", "lm_loss"}; `lm_loss` is None without `text_targets` (then loss == meta_loss).
    `meta_weight` 0 leaves the meta tokens without their CLIP target (Table 3's "no meta-token stage"); the
    meta loss is still computed and logged.

    `clip_image_embeds` is CLIP(I_ref) of the *clean* covers: (B, C) is compared with head(C_ref) averaged
    over the N meta tokens; (B, N, C) is compared token by token. `head` maps D → C (e.g. `nn.Linear(D, C)`).
    """
    batch = len(titles)
    if clip_image_embeds.ndim not in (2, 3) or clip_image_embeds.shape[0] != batch:
        raise ICGError(
            f"clip_image_embeds must be (B, C) or (B, N, C) with B={batch}, got "
            f"{tuple(clip_image_embeds.shape)}"
        )
    if len(images) != batch:
        raise ICGError(f"batch length mismatch: {len(images)} images but {batch} titles")
    degraded = transform_images(images, transform, seed)
    out = encoder(degraded, titles, text_targets)
    weight = next(head.parameters())
    pred = head(out.context.to(weight.dtype))  # (B, N, C)
    target = clip_image_embeds.to(pred.device, pred.dtype)  # (B, C) or (B, N, C)
    if target.ndim == 2:
        pred = pred.mean(1)  # (B, C)
    if pred.shape != target.shape:
        raise ICGError(
            f"head output {tuple(pred.shape)} does not match the CLIP target {tuple(target.shape)}"
        )
    if normalize:
        pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    meta_loss = (pred - target).pow(2).sum(-1).mean()  # squared L2 per embedding, averaged
    loss = meta_loss if meta_weight == 1.0 else meta_weight * meta_loss
    if out.lm_loss is not None:
        loss = loss + lm_weight * out.lm_loss
    return {"loss": loss, "meta_loss": meta_loss, "lm_loss": out.lm_loss}
