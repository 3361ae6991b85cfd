"""Batch-job inputs: an items table (title + reference image) and a users table (user_id, profile).

Items come from a dataset of the registry (`ml-100k`, …; items without a cover file get their rendered
reference cover, as in `icg generate --item-id`) or from a Parquet/CSV table with `title` and `image_path`
(or `image`) columns and an optional `item_id` (default: the row number). Relative image paths resolve
against the table's folder. Every image path is checked before any model loads.

The rows are plain columns (strings, ints, string lists) so they travel through Ray Data blocks as they are;
the image itself is read (or rendered) inside the context stage, on the worker (`stages.item_image`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from icg.errors import DataError, ICGError
from icg.generate import slug

logger = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_id", "folder", "title", "image_path", "render_title", "genres", "year")
TABLE_SUFFIXES = (".parquet", ".csv")


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("file not found", path=path, expected="a .parquet or .csv table")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def is_table(source: str) -> bool:
    return Path(source).suffix.lower() in TABLE_SUFFIXES


def load_items(source: str, dataset_path: Path | None = None, max_items: int | None = None) -> pd.DataFrame:
    """Items as ITEM_COLUMNS (image_path "" = render the reference cover); the first `max_items` rows."""
    if max_items is not None and max_items < 1:
        raise ICGError(f"--max-items must be ≥ 1, got {max_items}")
    if is_table(source):
        items = _items_from_table(Path(source).expanduser())
    else:
        items = _items_from_dataset(source, dataset_path)
    if max_items is not None:
        items = items.head(max_items).reset_index(drop=True)
    if items.empty:
        raise ICGError(f"{source}: no items")
    ids = items["item_id"]
    if ids.duplicated().any():
        raise DataError(f"item id '{ids[ids.duplicated()].iloc[0]}' appears more than once", path=source)
    folders = ids.map(slug)  # covers/<folder>/: file-name-safe, checked here so workers need not import it
    if folders.duplicated().any():
        clash = ids[folders == folders[folders.duplicated()].iloc[0]].tolist()
        raise DataError(f"item ids {clash} map to the same cover folder name", path=source)
    items.insert(1, "folder", folders)
    return items


def _items_from_dataset(name: str, path: Path | None) -> pd.DataFrame:
    from icg.data.covers.render import display_title
    from icg.data.registry import load_dataset

    items = load_dataset(name, path).items
    raw = items["title"].astype(str)
    return pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            # the title as a cover prints it: what the MLLM reads best (see icg.generate.dataset_item)
            "title": [display_title(t) or t for t in raw],
            "image_path": [str(p) if isinstance(p, str) and p else "" for p in items["cover_path"]],
            "render_title": raw,
            "genres": [[str(g) for g in gs] for gs in items["genres"]],
            "year": [int(y) if pd.notna(y) else -1 for y in items["year"]],
        }
    ).reset_index(drop=True)


def _items_from_table(path: Path) -> pd.DataFrame:
    table = _read_table(path)
    image_col = next((c for c in ("image_path", "image") if c in table.columns), None)
    if "title" not in table.columns or image_col is None:
        raise DataError(
            f"columns {list(table.columns)}", path=path, expected="columns title and image_path (or image)"
        )
    titles = table["title"].astype(str).str.strip()
    if (titles == "").any():
        raise DataError(f"row {int((titles == '').idxmax())} has an empty title", path=path, column="title")
    images = []
    for row, value in enumerate(table[image_col].astype(str)):
        file = Path(value).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise DataError(f"row {row}: image file {file} not found", path=path, column=image_col)
        images.append(str(file.resolve()))
    ids = (
        table["item_id"].astype(str) if "item_id" in table.columns else pd.Series(map(str, range(len(table))))
    )
    return pd.DataFrame(
        {
            "item_id": ids.to_numpy(),
            "title": titles.to_numpy(),
            "image_path": images,
            "render_title": titles.to_numpy(),
            "genres": [[] for _ in range(len(table))],
            "year": [-1] * len(table),
        }
    )


def load_users(source: str, dataset_path: Path | None = None, max_users: int | None = None) -> pd.DataFrame:
    """Users (user_id, profile) from a dataset name or a Parquet/CSV table with user_id [, profile]."""
    if max_users is not None and max_users < 1:
        raise ICGError(f"--max-users must be ≥ 1, got {max_users}")
    if is_table(source):
        table = _read_table(Path(source).expanduser())
        if "user_id" not in table.columns:
            raise DataError(f"columns {list(table.columns)}", path=source, expected="a user_id column")
    else:
        from icg.data.registry import load_dataset

        table = load_dataset(source, dataset_path).users
    users = pd.DataFrame({"user_id": table["user_id"].astype(str)})
    users["profile"] = table["profile"].astype(object) if "profile" in table.columns else None
    if max_users is not None:
        users = users.head(max_users)
    return users.reset_index(drop=True)
