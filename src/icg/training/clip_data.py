"""The mini CLIP's training data and measurement: augmentations, training pairs, tokenizer corpus, evaluation.

Texts pair an item's title with its genres (`icg.data.captions`); the rendered cover shows the title in type
and the genres as style (primary), badge (second) and rule (third). The split is by item
(`icg.data.splits`), so held-out retrieval asks about covers and titles the model never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2
from transformers import CLIPModel, CLIPProcessor

from icg.data.captions import TEXT_TEMPLATES, genre_prompt, item_text
from icg.data.covers.render import items_genres, render_cover
from icg.data.pixels import normalize


def build_augment(size: int, crop_scale_min: float, jitter: float, hue: float) -> v2.Compose:
    """Mild crops and colour jitter on uint8 (3, H, W) covers.

    Hue moves genres into each other's colour region (colour is the genre signal), so it stays tiny; no flips,
    since they mirror the printed title.
    """
    if not 0.0 < crop_scale_min <= 1.0 or jitter < 0 or not 0.0 <= hue <= 0.5:
        raise ValueError(
            "crop_scale_min must be in (0, 1], jitter >= 0 and hue in [0, 0.5]; "
            f"got {crop_scale_min}, {jitter}, {hue}"
        )
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue),
        ]
    )


class PairSampler:
    """Training pairs: (augmented cover variant, caption under a random template) of the train items.

    Which item, variant and template go where comes from the `generator` passed to `epoch_plan`; the crops
    and colour jitter from torch's global RNG. Both are saved in a checkpoint, so a resumed run sees the same
    pairs as an uninterrupted one.
    """

    def __init__(
        self,
        items: pd.DataFrame,
        train_rows: np.ndarray,
        covers: torch.Tensor,
        augment: v2.Compose,
        tokenizer,
    ) -> None:
        self.rows = np.asarray(train_rows)
        self.titles = [str(t) for t in items["title"]]
        self.genres = items_genres(items)
        self.covers = covers  # (N_items, V, 3, S, S) uint8
        self.augment = augment
        self.tokenizer = tokenizer

    def epoch_plan(
        self, batch_size: int, variants: int, generator: torch.Generator
    ) -> list[tuple[np.ndarray, list[int], list[int]]]:
        """Full batches of (item rows, variants, templates); the last partial batch is dropped."""
        n = len(self.rows)
        order = torch.randperm(n, generator=generator).numpy()  # (N_train,)
        # host plan from a seeded CPU generator (CPU by design: Python lists of rows, the same on any device)
        variant = torch.randint(0, variants, (n,), generator=generator).tolist()
        template = torch.randint(0, len(TEXT_TEMPLATES), (n,), generator=generator).tolist()
        plan = []
        for start in range(0, n - batch_size + 1, batch_size):
            pos = order[start : start + batch_size]
            plan.append((self.rows[pos], [variant[p] for p in pos], [template[p] for p in pos]))
        return plan

    def batch(self, rows: np.ndarray, variants: list[int], templates: list[int]) -> tuple[torch.Tensor, dict]:
        """Pixel values (B, 3, S, S) and tokenized captions (input_ids, attention_mask: (B, L))."""
        images = torch.stack([self.augment(self.covers[r, v]) for r, v in zip(rows, variants, strict=True)])
        texts = [item_text(self.titles[r], self.genres[r], k) for r, k in zip(rows, templates, strict=True)]
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return normalize(images), dict(tokens)


def tokenizer_corpus(train_items: pd.DataFrame, genres: Sequence[str]) -> list[str]:
    """Texts the BPE merges are learned from: train captions under every template and the genre prompts."""
    pairs = zip(train_items["title"], items_genres(train_items), strict=True)
    texts = [item_text(str(t), g, k) for t, g in pairs for k in range(len(TEXT_TEMPLATES))]
    return texts + [genre_prompt(g) for g in genres]


# ------------------------------------------------------------------------------------------------ evaluation
def _features(output: torch.Tensor | object) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projection; older ones a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def embed_images(
    model: CLIPModel, processor: CLIPProcessor, images: Sequence[Image.Image], batch_size: int = 256
) -> torch.Tensor:
    """(N, P) L2-normalized image embeddings, through the processor a user calls."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = processor.image_processor(
            images=list(images[start : start + batch_size]), return_tensors="pt"
        )
        out.append(_features(model.get_image_features(pixel_values=pixels["pixel_values"])))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def embed_texts(
    model: CLIPModel, processor: CLIPProcessor, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """(N, P) L2-normalized text embeddings (truncated to the tokenizer's model_max_length)."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        tokens = processor.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
        out.append(_features(model.get_text_features(**tokens)))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def recall_at_k(sims: torch.Tensor, k: int) -> float:
    """Share of rows whose diagonal entry is among the row's k largest.

    Ties count against it, so a collapsed model (all embeddings equal) scores 0, not 1.
    """
    rivals = (sims >= sims.diagonal()[:, None]).sum(dim=1) - 1  # (N,) other entries at least as high
    return float((rivals < k).float().mean())


def evaluate_clip(
    model: CLIPModel,
    processor: CLIPProcessor,
    items: pd.DataFrame,
    *,
    images: Sequence[Image.Image] | None = None,
    genres: Sequence[str] | None = None,
    batch_size: int = 256,
) -> dict[str, object]:
    """Held-out retrieval and zero-shot genre accuracy over `items`, each beside its chance level.

    Retrieval: image→text and text→image recall@1/@5 among the items' captions (template 0); chance is k/N.
    `genre_oracle_r*` is what a retriever knowing each item's exact genre tuple and nothing else gets (random
    among items with the same tuple): about the most a model that cannot read the printed title can reach.
    Zero-shot genre: the cover against "a {genre} movie" for each of `genres` (default: every genre of
    `items`); chance is the best constant guess on these items and 1/n_genres. `images` default to the
    variant-0 covers rendered at the processor's crop size.
    """
    if len(items) < 2:
        raise ValueError(f"evaluation needs at least 2 items, got {len(items)}")
    tuples = items_genres(items)
    primary = [g[0] for g in tuples]
    candidates = sorted(genres if genres is not None else {g for t in tuples for g in t})
    missing = sorted(set(primary) - set(candidates))
    if missing:
        raise ValueError(f"primary genres {missing} are not among the zero-shot genres {candidates}")
    if images is None:
        size = int(processor.image_processor.crop_size["height"])
        years = items["year"] if "year" in items.columns else [None] * len(items)
        images = [
            render_cover(str(i), str(t), g, None if y is None or pd.isna(y) else int(y), size)
            for i, t, g, y in zip(items["item_id"], items["title"], tuples, years, strict=True)
        ]
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images for {len(items)} items")
    texts = [item_text(str(t), g) for t, g in zip(items["title"], tuples, strict=True)]
    was_training = model.training
    model.eval()
    try:
        img = embed_images(model, processor, images, batch_size)  # (N, P)
        txt = embed_texts(model, processor, texts, batch_size)  # (N, P)
        prompts = embed_texts(model, processor, [genre_prompt(g) for g in candidates], batch_size)  # (G, P)
    finally:
        model.train(was_training)
    sims = img @ txt.T  # (N images, N texts)
    predicted = [candidates[i] for i in (img @ prompts.T).argmax(dim=1).tolist()]
    n = len(items)
    same = pd.Series(tuples).map(pd.Series(tuples).value_counts()).to_numpy(dtype=float)  # (N,) tuple counts
    _, freq = np.unique(primary, return_counts=True)
    hits = np.array(predicted) == np.array(primary)
    return {
        "n_items": n,
        "i2t_r1": round(recall_at_k(sims, 1), 4),
        "i2t_r5": round(recall_at_k(sims, 5), 4),
        "t2i_r1": round(recall_at_k(sims.T, 1), 4),
        "t2i_r5": round(recall_at_k(sims.T, 5), 4),
        "chance_r1": round(1 / n, 4),
        "chance_r5": round(min(5, n) / n, 4),
        "genre_oracle_r1": round(float(np.mean(1 / same)), 4),
        "genre_oracle_r5": round(float(np.mean(np.minimum(1.0, 5 / same))), 4),
        "genre_accuracy": round(float(hits.mean()), 4),
        "genre_chance_majority": round(float(freq.max() / n), 4),
        "genre_chance_uniform": round(1 / len(candidates), 4),
        "n_genres": len(candidates),
        "per_genre_accuracy": {
            g: round(float(hits[np.array(primary) == g].mean()), 3) for g in sorted(set(primary))
        },
    }
