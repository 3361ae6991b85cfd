"""The report's cover grid: held-out items × contrasting users × methods, each row from one noise.

Columns: reference cover | rule-based (the explicit prompt into the plain backbone, adapter off) | context
only (adapter with the item's meta tokens, no user) | ICG per user | PMG per user (rule-based + the user's
preference keywords; only when `icg.baselines.pmg` is importable). Each column is one pipeline call over all
rows with the same seed; the pipeline seeds cover k with seed + k, so row k starts from the same noise in
every column and any difference along a row comes from the conditioning, not the seed.

Items: `icg.demo.held_out_items` (per genre, the mini CLIP's test-split item most purely of it), topped up
from the rest of the test split when more are asked for. Users: `icg.demo.contrasting_users` (training
users leaning most towards Children's, Horror and Romance).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from icg.atomic import atomic_path
from icg.data.covers.render import display_title, item_genres, render_cover
from icg.data.records import InteractionData

logger = logging.getLogger(__name__)

COVERS_DIR = "images/covers"  # relative to the report folder


@dataclass(frozen=True)
class Column:
    key: str  # file-name safe
    method: str  # the column group: reference, rule-based, context only, ICG, PMG
    user: str = ""  # "user 13: horror +30%" for per-user columns
    note: str = ""  # e.g. the PMG keywords of that user


@dataclass(frozen=True)
class Row:
    title: str
    item_id: str
    genres: tuple[str, ...]
    prompt: str  # the explicit prompt the MLLM wrote for the item (shared by every column)
    images: tuple[str, ...]  # one PNG per column, relative to the report folder


@dataclass(frozen=True)
class CoverGrid:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...]
    size: int  # cover side in pixels
    seed: int
    seconds: float


def grid_items(items: pd.DataFrame, n_items: int) -> pd.DataFrame:
    """`held_out_items` (one per genre), topped up in test-split order when `n_items` exceeds them."""
    from icg.data.splits import split_items
    from icg.demo import ITEM_GENRES, held_out_items

    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    chosen = held_out_items(items, ITEM_GENRES[: min(n_items, len(ITEM_GENRES))])
    if n_items > len(chosen):
        test = items.iloc[split_items(len(items), 0, 0.1, 0.1).test]
        extra = test.loc[~test.index.isin(chosen.index)].head(n_items - len(chosen))
        chosen = pd.concat([chosen, extra])
    return chosen


def _pmg():
    """(preference_keywords, pmg_suffix, train_item_ids), or None when the PMG baseline is not installed."""
    try:
        from icg.baselines.pmg import pmg_suffix, preference_keywords, train_item_ids
    except ImportError as err:
        logger.warning("PMG columns skipped: %s", err)
        return None
    return preference_keywords, pmg_suffix, train_item_ids


def _save(image: Image.Image, out_dir: Path, name: str) -> str:
    relative = f"{COVERS_DIR}/{name}.png"
    with atomic_path(out_dir / relative) as tmp:
        image.convert("RGB").save(tmp, format="PNG")
    return relative


def make_cover_grid(
    spec, data: InteractionData, out_dir: Path, *, n_items: int = 4, seed: int = 0, progress: bool = True
) -> CoverGrid:
    """Generate the grid with `spec`'s pipeline at its own steps and guidance; PNGs under out_dir/images."""
    from icg.context.cache import ContextCache
    from icg.demo import contrasting_users
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverItem, CoverUser

    started = time.perf_counter()
    rows_df = grid_items(data.items, n_items)
    users = contrasting_users(data)
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.context_encoder.cache = ContextCache()  # each item's context once, reused by every column
    size = pipe.default_size
    titles = [display_title(str(t)) or str(t) for t in rows_df["title"]]
    references = [
        render_cover(
            str(r["item_id"]),
            str(r["title"]),
            item_genres(r["genres"]),
            None if pd.isna(r["year"]) else int(r["year"]),
            size,
        )
        for _, r in rows_df.iterrows()
    ]
    items = [
        CoverItem(title=t, image=ref, item_id=str(i))
        for t, ref, i in zip(titles, references, rows_df["item_id"], strict=True)
    ]
    common = {
        **spec.generation_config().to_kwargs(),
        "output_type": "pil",
        "seed": seed,
    }

    # (column, how to call the pipeline); every call covers all rows, so row k gets noise seed + k everywhere
    calls: list[tuple[Column, dict]] = [
        (Column("rule_based", "rule-based"), {"users": None, "adapter_scale": 0.0}),
        (Column("context_only", "context only"), {"users": None}),
    ]
    calls += [
        (Column(f"icg_{u.user_id}", "ICG", u.label), {"users": [CoverUser(user_id=u.user_id)]}) for u in users
    ]
    notes = []
    if spec.adapter is None:
        notes.append(
            f"Preset '{spec.name}' has no trained adapter: the context-only and ICG columns use an "
            "untrained one."
        )
    pmg = _pmg()
    if pmg is None:
        notes.append("PMG columns skipped: the `icg.baselines.pmg` module is not available in this install.")
    else:
        keywords_of, suffix_of, train_ids = pmg
        allowed = train_ids(data)
        for u in users:
            suffix = suffix_of(keywords_of(data, u.user_id, allowed))
            column = Column(f"pmg_{u.user_id}", "PMG", u.label, f"keywords: {suffix or '(none)'}")
            calls.append((column, {"users": None, "adapter_scale": 0.0, "prompt_suffixes": [suffix]}))

    covers: dict[str, list[Image.Image]] = {}
    prompts: list[str] = []
    for column, kwargs in tqdm(calls, desc="report covers", disable=not progress):
        out = pipe(items, **kwargs, **common)
        covers[column.key] = list(out.images)  # one per item, in row order
        if column.key == "rule_based":
            prompts = [m["explicit_prompt"] for m in out.metadata]
    columns = (Column("reference", "reference"), *(c for c, _ in calls))
    rows = []
    for k, (_, row) in enumerate(rows_df.iterrows()):
        images = [_save(references[k], out_dir, f"row{k}_reference")]
        images += [_save(covers[c.key][k], out_dir, f"row{k}_{c.key}") for c, _ in calls]
        rows.append(
            Row(titles[k], str(row["item_id"]), item_genres(row["genres"]), prompts[k], tuple(images))
        )
    seconds = round(time.perf_counter() - started, 1)
    logger.info("report grid: %d rows × %d columns in %.1f s", len(rows), len(columns), seconds)
    return CoverGrid(columns, tuple(rows), tuple(notes), size, seed, seconds)
