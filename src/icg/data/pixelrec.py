"""PixelRec loader: short-video interactions with item engagement counts, titles, tags and cover images.

Folder layout (as distributed by the PixelRec authors):

- ``Pixel200K.csv`` / ``Pixel1M.csv`` / ``Pixel8M.csv`` / ``PixelRec.csv``: interactions with columns
  ``item_id,user_id,timestamp`` (the first one found in that order is used unless one is named)
- ``item_info.csv``: ``item_id``, engagement counts (``view_number``, ``comment_number``, ``thumbup_number``,
  ``share_number``, ``coin_number``, ``favorite_number``, ``barrage_number``), ``title_en``, ``title``,
  ``description``, ``tag``; standard CSV quoting, since titles contain commas and quotes
- ``images/{item_id}.jpg``: cover images (any subset; items without one get ``cover_path`` None)

Interactions are implicit (a user watched an item), so each interaction's signal is an engagement count of
its item, chosen with ``signal``; ``signal="click"`` gives every interaction 1.0 instead.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.records import InteractionData, empty_users
from icg.data.tables import (
    existing_files,
    read_table,
    reject_unknown_items,
    require_dir,
    require_values,
    to_unix_seconds,
)
from icg.errors import DataError

logger = logging.getLogger(__name__)

INTERACTION_FILES: tuple[str, ...] = ("Pixel200K.csv", "Pixel1M.csv", "Pixel8M.csv", "PixelRec.csv")
ITEM_FILE = "item_info.csv"
IMAGE_DIR = "images"
CLICK_SIGNAL = "click"

# A tag string holding one of these is a list of tags; otherwise whitespace separates them.
_TAG_LIST_SEPARATORS = re.compile(r"\s*[|,;，、；]\s*")


def pick_interaction_file(folder: Path, interactions_file: str | None = None) -> Path:
    """The interactions file: the one named, else the first of INTERACTION_FILES present in `folder`."""
    if interactions_file is not None:
        return folder / interactions_file
    for name in INTERACTION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        "no PixelRec interactions file found",
        path=folder,
        expected=f"one of {list(INTERACTION_FILES)}",
    )


def engagement_columns(columns: pd.Index) -> list[str]:
    """The count columns of item_info.csv that can serve as a signal (view_number, thumbup_number, ...)."""
    return [str(c) for c in columns if str(c).endswith("_number")]


def split_tags(tags: pd.Series) -> pd.Series:
    """Tag strings → tuples, primary first, duplicates dropped; missing or blank → ().

    'a|b', 'a, b' and 'a b' each give ('a', 'b'). Computed once per distinct string, since few exist.
    """

    def split_one(text: str) -> tuple[str, ...]:
        text = text.strip()
        parts = _TAG_LIST_SEPARATORS.split(text) if _TAG_LIST_SEPARATORS.search(text) else text.split()
        return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))

    filled = tags.fillna("").astype(str)
    unique = pd.unique(filled)
    return filled.map(dict(zip(unique, (split_one(t) for t in unique), strict=True)))


def _items_table(info: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Shared-schema items: English title when present, tags as genres, covers that exist on disk."""
    item_id = info["item_id"].astype(str).str.strip()
    title = info["title"].fillna("").astype(str).str.strip()
    if "title_en" in info.columns:
        title_en = info["title_en"].fillna("").astype(str).str.strip()
        title = title_en.where(title_en != "", title)
    genres = split_tags(info["tag"]) if "tag" in info.columns else pd.Series([()] * len(info), dtype=object)
    candidates = (str(folder / IMAGE_DIR) + os.sep) + item_id + ".jpg"
    has_cover = existing_files(candidates).to_numpy()
    logger.info(
        "pixelrec: %d of %d items have a cover in %s", int(has_cover.sum()), len(info), folder / IMAGE_DIR
    )
    return pd.DataFrame(
        {
            "item_id": item_id.to_numpy(),
            "title": title.to_numpy(),
            "year": pd.array([pd.NA] * len(info), dtype="Int64"),
            "genres": genres.to_numpy(),
            "cover_path": pd.Series(np.where(has_cover, candidates.to_numpy(), None), dtype=object),
        }
    )


def load_pixelrec(
    path: str | Path, interactions_file: str | None = None, signal: str = "view_number"
) -> InteractionData:
    """PixelRec (any of its four sizes) in the shared schema; `signal` picks the item count used as relevance.

    The engagement counts are per item, so every user's interactions with one item carry the same signal.
    """
    folder = require_dir(path, f"{ITEM_FILE}, one of {list(INTERACTION_FILES)} and {IMAGE_DIR}/")
    inter_file = pick_interaction_file(folder, interactions_file)
    item_file = folder / ITEM_FILE
    info = read_table(
        item_file, sep=",", columns=["item_id", "title"], dtype=str, what="PixelRec item features"
    )
    valid = engagement_columns(info.columns)
    if signal != CLICK_SIGNAL and signal not in valid:
        raise DataError(
            f"unknown signal '{signal}'",
            path=item_file,
            expected=f"one of {[*valid, CLICK_SIGNAL]}",
        )
    require_values(info, "item_id", item_file, "text")
    duplicated = info["item_id"].duplicated()
    if duplicated.any():
        logger.warning(
            "pixelrec: %d duplicated item ids in %s; keeping the first", int(duplicated.sum()), item_file
        )
        info = info.loc[~duplicated].reset_index(drop=True)

    inter = read_table(
        inter_file,
        sep=",",
        columns=["item_id", "user_id", "timestamp"],
        dtype={"item_id": str, "user_id": str},
        what="PixelRec interactions",
    )
    for column in ("item_id", "user_id"):
        require_values(inter, column, inter_file, "text")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).str.strip(),
            "item_id": inter["item_id"].astype(str).str.strip(),
            "timestamp": to_unix_seconds(inter["timestamp"], inter_file, "timestamp"),
        }
    )

    items = _items_table(info, folder)
    if signal == CLICK_SIGNAL:
        counts = pd.DataFrame({"item_id": items["item_id"], "signal": 1.0})
    else:
        # Missing counts are zero engagement; text in a count column is a broken file.
        require_values(info.assign(**{signal: info[signal].fillna("0")}), signal, item_file, "number")
        counts = pd.DataFrame(
            {"item_id": items["item_id"], "signal": pd.to_numeric(info[signal]).fillna(0.0).astype("float64")}
        )
    interactions = interactions.merge(counts, on="item_id", how="left", validate="many_to_one")
    reject_unknown_items(interactions["signal"].isna(), interactions["item_id"], inter_file, item_file)
    interactions = interactions[["user_id", "item_id", "signal", "timestamp"]]
    users = empty_users(interactions["user_id"])
    logger.info(
        "pixelrec: %d users, %d items, %d interactions from %s (signal %s)",
        len(users),
        len(items),
        len(interactions),
        inter_file.name,
        signal,
    )
    return InteractionData(
        "pixelrec",
        users,
        items,
        interactions,
        signal_name=signal,
        source=folder,
        extra={"interactions_file": inter_file.name},
    )
