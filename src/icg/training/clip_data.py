"""Data and measurement for the mini CLIP: captions, item split, cover cache, augmentations, evaluation.

Texts pair an item's title with its genres ("Toy Story, an animation, children's and comedy movie"); the
rendered cover shows the title in type and the genres as style (primary), badge (second) and rule (third).
The split is by item, so held-out retrieval asks about covers and titles the model never saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from icg.atomic import atomic_path
from icg.data.covers.render import check_size, display_title, item_genres, render_cover
from icg.data.records import primary_genre

logger = logging.getLogger(__name__)

# Template 0 is the evaluation text; training draws one of all of them per pair.
TEXT_TEMPLATES: tuple[str, ...] = (
    "{title}, {article} {genres} movie",
    "{article} {genres} movie called {title}",
    "the cover of {title}, {article} {genres} film",
    "{genres}: {title}",
    "{article} {genres} movie",
    "{primary_article} {primary} movie",  # the zero-shot prompt's form: the primary genre sets the style
)
GENRE_PROMPT = "{article} {genre} movie"
# OpenAI CLIP's normalization: the mini model's processor stays a drop-in for a real CLIP processor (and code
# that normalizes with CLIP's constants by hand gets the same pixels).
IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: Sequence[str]) -> str:
    """('Drama',) → 'drama'; ('Action', 'Comedy', 'War') → 'action, comedy and war'."""
    words = [w.lower() for w in words] or ["unknown"]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def item_text(title: str, genres: Sequence[str], template: int = 0) -> str:
    """The caption of one item under one of `TEXT_TEMPLATES` (title as the cover prints it)."""
    if not 0 <= template < len(TEXT_TEMPLATES):
        raise ValueError(f"template must be in [0, {len(TEXT_TEMPLATES)}), got {template}")
    joined, primary = _join(genres), _join(genres[:1])
    return TEXT_TEMPLATES[template].format(
        title=display_title(title) or "untitled",
        genres=joined,
        article=_article(joined),
        primary=primary,
        primary_article=_article(primary),
    )


def genre_prompt(genre: str) -> str:
    """Zero-shot prompt for one genre: 'an action movie'."""
    word = genre.lower()
    return GENRE_PROMPT.format(article=_article(word), genre=word)


def items_genres(items: pd.DataFrame) -> list[tuple[str, ...]]:
    """Genre tuples of an items table (primary first); items without genres get ('unknown',)."""
    return [item_genres(g) or ("unknown",) for g in items["genres"]]


def primary_genres(items: pd.DataFrame) -> list[str]:
    return [primary_genre(g) for g in items_genres(items)]


@dataclass(frozen=True)
class ItemSplit:
    """Row positions (into the items table) of train, validation and test items."""

    train: np.ndarray  # (N_train,)
    val: np.ndarray  # (N_val,)
    test: np.ndarray  # (N_test,)


def split_items(n_items: int, seed: int, val_fraction: float, test_fraction: float) -> ItemSplit:
    """A seeded item-level split; validation and test get at least 2 items each (retrieval needs a choice)."""
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    n_test = max(2, round(test_fraction * n_items))
    n_val = max(2, round(val_fraction * n_items))
    if n_items - n_test - n_val < 2:
        raise ValueError(
            f"{n_items} items are too few for a train/val/test split ({n_val} val, {n_test} test)"
        )
    order = np.random.default_rng([seed, 2718]).permutation(n_items)
    return ItemSplit(
        train=np.sort(order[n_test + n_val :]),
        val=np.sort(order[n_test : n_test + n_val]),
        test=np.sort(order[:n_test]),
    )


def _cache_key(items: pd.DataFrame, size: int, variants: int) -> str:
    payload = [list(map(str, items["item_id"])), list(map(str, items["title"])), items_genres(items)]
    years = items["year"] if "year" in items.columns else [None] * len(items)
    payload.append([None if y is None or pd.isna(y) else int(y) for y in years])
    text = json.dumps([payload, size, variants], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_cover_cache(
    items: pd.DataFrame, cache_dir: Path, size: int, variants: int, progress: bool = True
) -> torch.Tensor:
    """(N, variants, 3, size, size) uint8 covers of every item, variant 0..variants-1, rendered once.

    Stored as `covers_{size}px_{variants}v_{key}.pt` (atomic write); the key hashes ids, titles, genres and
    years, so a different items table never reads another table's covers.
    """
    size = check_size(size)
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    path = Path(cache_dir) / f"covers_{size}px_{variants}v_{_cache_key(items, size, variants)}.pt"
    if path.is_file():
        covers = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(covers, torch.Tensor) and covers.shape == (len(items), variants, 3, size, size):
            logger.info("covers from cache %s", path)
            return covers
        logger.warning("ignoring cover cache %s with unexpected shape", path)
    covers = torch.empty(
        (len(items), variants, 3, size, size), dtype=torch.uint8
    )  # data building: host cache
    genres = items_genres(items)
    years = items["year"] if "year" in items.columns else pd.Series([None] * len(items))
    rows = zip(items["item_id"], items["title"], genres, years, strict=True)
    bar = tqdm(
        total=len(items) * variants, desc=f"render covers {size}px", unit="cover", disable=not progress
    )
    for n, (item_id, title, g, year) in enumerate(rows):
        year = None if year is None or pd.isna(year) else int(year)
        for v in range(variants):
            img = render_cover(str(item_id), "" if pd.isna(title) else str(title), g, year, size, v)
            covers[n, v] = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
            bar.update(1)
    bar.close()
    with atomic_path(path) as tmp:
        torch.save(covers, tmp)
    return covers


def to_pil(cover: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 → RGB PIL image (what a user hands the processor)."""
    return Image.fromarray(cover.permute(1, 2, 0).contiguous().numpy(), "RGB")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float pixel values with IMAGE_MEAN/IMAGE_STD (as CLIPImageProcessor computes)."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


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


def _recall(sims: torch.Tensor, k: int) -> float:
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
        "i2t_r1": round(_recall(sims, 1), 4),
        "i2t_r5": round(_recall(sims, 5), 4),
        "t2i_r1": round(_recall(sims.T, 1), 4),
        "t2i_r5": round(_recall(sims.T, 5), 4),
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
