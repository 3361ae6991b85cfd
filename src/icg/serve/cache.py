"""The served covers on disk: one PNG + one JSON per cover, named by the sha256 of what made it.

Why a content key: the same (item, user or segment, preset, seed, steps, guidance, adapter) always gives
the same pixels, so a repeated request is answered from disk without touching the model, and the key
doubles as the cover's public id. Ids are 64 lower-case hex digits; a path is only ever built from an id
that matched that pattern *and* is in the index, so no request can name a file. The PNG is written first
and the JSON last, each atomically (`icg.atomic`): the JSON's presence marks a complete entry, and a crash
never leaves a half entry under a valid name. The index is the set of ids found on disk at start-up plus
those written since (64 bytes each; the disk, not memory, bounds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import torch

from icg.atomic import atomic_path, write_text_atomic
from icg.context.cache import CachedContext, ContextCache

logger = logging.getLogger(__name__)

COVER_ID_PATTERN = r"^[0-9a-f]{64}$"
_COVER_ID = re.compile(COVER_ID_PATTERN)


def is_cover_id(value: str) -> bool:
    """True for exactly 64 lower-case hex digits (nothing else can become a file name)."""
    return isinstance(value, str) and _COVER_ID.fullmatch(value) is not None


def cover_key(
    item_key: str,
    user_key: str,
    preset: str,
    seed: int,
    steps: int,
    guidance_scale: float,
    adapter_hash: str | None,
) -> str:
    """The cover id: sha256 of the length-prefixed parts (so no two part lists run together)."""
    digest = hashlib.sha256()
    parts = (
        item_key,
        user_key,
        preset,
        str(seed),
        str(steps),
        repr(float(guidance_scale)),
        adapter_hash or "",
    )
    for part in parts:
        raw = part.encode()
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


class CoverCache:
    """`directory/<id[:2]>/<id>.png` + `<id>.json`; thread-safe (the worker writes, the loop reads)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        for sidecar in self.directory.glob("??/*.json"):
            cover_id = sidecar.stem
            if (
                is_cover_id(cover_id)
                and sidecar.parent.name == cover_id[:2]
                and self._png(cover_id).is_file()
            ):
                self._ids.add(cover_id)
        if self._ids:
            logger.info("cover cache %s: %d covers", self.directory, len(self._ids))

    def _png(self, cover_id: str) -> Path:
        return self.directory / cover_id[:2] / f"{cover_id}.png"

    def _sidecar(self, cover_id: str) -> Path:
        return self.directory / cover_id[:2] / f"{cover_id}.json"

    def __contains__(self, cover_id: object) -> bool:
        with self._lock:
            return cover_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def png_path(self, cover_id: str) -> Path | None:
        """The PNG of a known id, else None (an unknown or malformed id never becomes a path)."""
        if not is_cover_id(cover_id) or cover_id not in self:
            return None
        return self._png(cover_id)

    def metadata(self, cover_id: str) -> dict[str, Any] | None:
        """The stored metadata of a known id, else None."""
        if not is_cover_id(cover_id) or cover_id not in self:
            return None
        try:
            return json.loads(self._sidecar(cover_id).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # removed or damaged behind our back: forget it
            logger.warning("cover cache entry %s unreadable (%s); dropping it", cover_id, exc)
            with self._lock:
                self._ids.discard(cover_id)
            return None

    def put(self, cover_id: str, png: bytes, metadata: dict[str, Any]) -> None:
        """Store one cover: PNG, then JSON (the completion mark), then the index."""
        if not is_cover_id(cover_id):
            raise ValueError(f"not a cover id: {cover_id!r}")
        with atomic_path(self._png(cover_id)) as tmp:
            tmp.write_bytes(png)
        write_text_atomic(self._sidecar(cover_id), json.dumps(metadata, indent=2, default=str))
        with self._lock:
            self._ids.add(cover_id)


class BoundedContextCache(ContextCache):
    """`ContextCache` whose in-memory layer keeps only the `max_memory` most recently used items.

    A server sees an open-ended stream of uploaded items; the disk keeps every item's context, memory only
    the recent ones (a dropped entry is read back from disk on its next use).
    """

    def __init__(self, directory: str | Path, max_memory: int = 1024) -> None:
        super().__init__(directory)
        if max_memory < 1:
            raise ValueError(f"max_memory must be at least 1, got {max_memory}")
        self.max_memory = max_memory

    def get(self, key: str) -> CachedContext | None:
        entry = super().get(key)
        if entry is not None:
            self._memory[key] = self._memory.pop(key, entry)  # most recently used goes last
            self._trim()
        return entry

    def put(self, key: str, prompt: str, context: torch.Tensor) -> CachedContext:
        entry = super().put(key, prompt, context)
        self._trim()
        return entry

    def _trim(self) -> None:
        while len(self._memory) > self.max_memory:
            self._memory.pop(next(iter(self._memory)))  # dicts keep insertion order: oldest first
