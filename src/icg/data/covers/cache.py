"""A tensor cache of rendered reference covers: every item, every variant, rendered once per items table."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icg.atomic import atomic_path
from icg.data.covers.render import check_size, items_genres, render_cover

logger = logging.getLogger(__name__)


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
