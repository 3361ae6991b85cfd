"""The loaded dataset as the API sees it: item search by title, a user list, reference covers by item id.

Ids from a request are looked up in dicts built from the dataset, never joined into a path. Reference covers
are rendered (or read from the dataset's own cover file) on demand and kept in a small LRU, so memory stays
bounded whatever ids are asked for.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pandas as pd
import PIL.Image

from icg.data.covers.render import display_title, item_genres, render_cover
from icg.data.records import InteractionData
from icg.pipeline import CoverItem

REFERENCE_SIZE = 256  # what `icg generate --item-id` renders, so a served cover equals the CLI's


@dataclass(frozen=True)
class ItemRow:
    item_id: str
    title: str  # as the dataset spells it ("Usual Suspects, The")
    display: str  # as a cover prints it ("The Usual Suspects"): what the context encoder reads
    year: int | None
    genres: tuple[str, ...]
    cover_path: str | None

    def public(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.display,
            "dataset_title": self.title,
            "year": self.year,
            "genres": list(self.genres),
        }


def _year(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


class Catalog:
    """Items and users of one InteractionData, indexed by their string ids."""

    def __init__(
        self, data: InteractionData, *, reference_size: int = REFERENCE_SIZE, lru: int = 128
    ) -> None:
        self.name = data.name
        self.reference_size = reference_size
        self.items: dict[str, ItemRow] = {}
        for row in data.items.itertuples(index=False):
            item_id, title = str(row.item_id), str(row.title)
            cover = getattr(row, "cover_path", None)
            self.items[item_id] = ItemRow(
                item_id=item_id,
                title=title,
                display=display_title(title) or title,
                year=_year(row.year),
                genres=item_genres(row.genres),
                cover_path=None if cover is None or pd.isna(cover) else str(cover),
            )
        self._search_keys = [(f"{r.title}\n{r.display}".lower(), r) for r in self.items.values()]
        profiles = data.users["profile"] if "profile" in data.users.columns else [None] * len(data.users)
        self.users: dict[str, str | None] = {
            str(user_id): None if profile is None else str(profile)
            for user_id, profile in zip(data.users["user_id"], profiles, strict=True)
        }
        self._lru: OrderedDict[str, PIL.Image.Image] = OrderedDict()
        self._lru_size = lru
        self._lock = threading.Lock()

    def search_items(self, query: str, limit: int) -> tuple[int, list[ItemRow]]:
        """Items whose title contains every word of `query` (case-insensitive); prefix matches first."""
        words = query.lower().split()
        hits = [(key, row) for key, row in self._search_keys if all(w in key for w in words)]
        if words:
            first = words[0]
            hits.sort(key=lambda h: not (h[1].display.lower().startswith(first) or h[0].startswith(first)))
        return len(hits), [row for _, row in hits[:limit]]

    def search_users(self, query: str, limit: int) -> tuple[int, list[tuple[str, str | None]]]:
        """Users whose id starts with `query` or whose profile sentence contains it."""
        q = query.strip().lower()
        hits = [
            (user_id, profile)
            for user_id, profile in self.users.items()
            if not q or user_id.lower().startswith(q) or (profile is not None and q in profile.lower())
        ]
        return len(hits), hits[:limit]

    @property
    def cached_images(self) -> int:
        """How many reference images are held in memory (at most `lru`)."""
        return len(self._lru)

    def reference_image(self, item_id: str) -> PIL.Image.Image:
        """The item's reference cover (RGB); KeyError for an unknown id."""
        row = self.items[item_id]
        with self._lock:
            image = self._lru.get(item_id)
            if image is not None:
                self._lru.move_to_end(item_id)
                return image
        if row.cover_path is not None:
            from icg.generate import read_image

            image = read_image(row.cover_path)
        else:
            image = render_cover(row.item_id, row.title, row.genres, year=row.year, size=self.reference_size)
        with self._lock:
            self._lru[item_id] = image
            while len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        return image

    def reference_png(self, item_id: str) -> bytes:
        buffer = io.BytesIO()
        self.reference_image(item_id).save(buffer, format="PNG")
        return buffer.getvalue()

    def cover_item(self, item_id: str) -> CoverItem:
        """What the pipeline gets for a dataset item: display title + reference cover (as `icg generate`)."""
        row = self.items[item_id]
        return CoverItem(title=row.display, image=self.reference_image(item_id), item_id=row.item_id)
