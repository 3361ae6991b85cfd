"""The served covers on disk: one PNG + one JSON per cover, named by the sha256 of what made it.

Why a content key: the same (item, user or segment, preset, seed, steps, guidance, adapter) always gives
the same pixels, so a repeated request is answered from disk without touching the model, and the key
doubles as the cover's public id. The cache is bounded (bytes and/or covers, least recently used evicted). Ids are 64 lower-case hex digits; a path is only ever built from an id
that matched that pattern *and* is in the index, so no request can name a file. The PNG is written first
and the JSON last, each atomically (`icg.atomic`): the JSON's presence marks a complete entry, and a crash
never leaves a half entry under a valid name. The index is the set of ids found on disk at start-up plus
those written since, in least-recently-used order; an entry found broken when read is dropped and regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
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


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG


def looks_complete_png(data: bytes) -> bool:
    """A cheap integrity check: PNG signature at the start, IEND chunk at the end (a cut file fails)."""
    return len(data) > len(PNG_MAGIC) + len(PNG_END) and data.startswith(PNG_MAGIC) and data.endswith(PNG_END)


class CoverCache:
    """`directory/<id[:2]>/<id>.png` + `<id>.json`; thread-safe (the worker writes, the loop reads).

    Bounded: past `max_bytes` (PNG + JSON sizes) or `max_covers` entries, the least recently used covers are
    deleted (at start-up the order is the files' modification time). An entry whose PNG is missing or cut,
    or whose JSON is unreadable, is dropped when it is next asked for, so the caller generates it again.
    """

    def __init__(
        self, directory: str | Path, *, max_bytes: int | None = None, max_covers: int | None = None
    ) -> None:
        for name, bound in (("max_bytes", max_bytes), ("max_covers", max_covers)):
            if bound is not None and bound < 1:
                raise ValueError(f"{name} must be at least 1, got {bound}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_covers = max_covers
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # id → bytes on disk, least recently used first
        self._bytes = 0
        self.evicted = 0
        self.dropped = 0
        found: list[tuple[float, str, int]] = []
        for sidecar in self.directory.glob("??/*.json"):
            cover_id = sidecar.stem
            png = self._png(cover_id)
            if is_cover_id(cover_id) and sidecar.parent.name == cover_id[:2] and png.is_file():
                with contextlib.suppress(OSError):
                    stat = png.stat()
                    found.append((stat.st_mtime, cover_id, stat.st_size + sidecar.stat().st_size))
        for _, cover_id, size in sorted(found):
            self._entries[cover_id] = size
            self._bytes += size
        with self._lock:
            self._evict_locked(keep=None)
        if self._entries:
            logger.info(
                "cover cache %s: %d covers, %d bytes", self.directory, len(self._entries), self._bytes
            )

    def _png(self, cover_id: str) -> Path:
        return self.directory / cover_id[:2] / f"{cover_id}.png"

    def _sidecar(self, cover_id: str) -> Path:
        return self.directory / cover_id[:2] / f"{cover_id}.json"

    def __contains__(self, cover_id: object) -> bool:
        with self._lock:
            return cover_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int | None]:
        with self._lock:
            return {
                "covers": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_covers": self.max_covers,
                "evicted": self.evicted,
                "dropped": self.dropped,
            }

    def png_path(self, cover_id: str) -> Path | None:
        """The PNG of a known id, else None (an unknown or malformed id never becomes a path)."""
        if not is_cover_id(cover_id) or cover_id not in self:
            return None
        return self._png(cover_id)

    def png(self, cover_id: str) -> bytes | None:
        """The PNG bytes of a known, intact entry (and mark it recently used); a broken entry is dropped."""
        if not is_cover_id(cover_id) or cover_id not in self:
            return None
        try:
            data = self._png(cover_id).read_bytes()
        except OSError as exc:
            return self._drop(cover_id, f"PNG unreadable ({exc.strerror or exc})")
        if not looks_complete_png(data):
            return self._drop(cover_id, "PNG cut or not a PNG")
        self._touch(cover_id)
        return data

    def metadata(self, cover_id: str) -> dict[str, Any] | None:
        """The stored metadata of a known id, else None."""
        if not is_cover_id(cover_id) or cover_id not in self:
            return None
        try:
            return json.loads(self._sidecar(cover_id).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # removed or damaged behind our back: forget it
            return self._drop(cover_id, f"metadata unreadable ({exc})")

    def entry(self, cover_id: str) -> dict[str, Any] | None:
        """Metadata of an entry whose PNG is present and complete too (what a cache hit needs), else None."""
        metadata = self.metadata(cover_id)
        if metadata is None or self.png(cover_id) is None:
            return None
        return metadata

    def put(self, cover_id: str, png: bytes, metadata: dict[str, Any]) -> None:
        """Store one cover: PNG, then JSON (the completion mark), then the index; then evict past the bounds."""
        if not is_cover_id(cover_id):
            raise ValueError(f"not a cover id: {cover_id!r}")
        with atomic_path(self._png(cover_id)) as tmp:
            tmp.write_bytes(png)
        text = json.dumps(metadata, indent=2, default=str)
        write_text_atomic(self._sidecar(cover_id), text)
        size = len(png) + len(text.encode())
        with self._lock:
            self._bytes += size - self._entries.pop(cover_id, 0)
            self._entries[cover_id] = size
            self._evict_locked(keep=cover_id)

    def _touch(self, cover_id: str) -> None:
        with self._lock:
            if cover_id in self._entries:
                self._entries.move_to_end(cover_id)

    def _drop(self, cover_id: str, why: str) -> None:
        logger.warning(
            "cover cache entry %s: %s; dropping it (it will be generated again)", cover_id[:12], why
        )
        with self._lock:
            self._bytes -= self._entries.pop(cover_id, 0)
            self.dropped += 1
        self._unlink(cover_id)
        return None

    def _evict_locked(self, keep: str | None) -> None:
        def over() -> bool:
            too_many = self.max_covers is not None and len(self._entries) > self.max_covers
            return too_many or (self.max_bytes is not None and self._bytes > self.max_bytes)

        while over() and self._entries:
            cover_id = next(iter(self._entries))
            if cover_id == keep:
                if len(self._entries) == 1:
                    break  # one cover larger than the bound: keep it (it was just asked for)
                self._entries.move_to_end(cover_id)
                continue
            self._bytes -= self._entries.pop(cover_id)
            self.evicted += 1
            self._unlink(cover_id)

    def _unlink(self, cover_id: str) -> None:
        for path in (self._sidecar(cover_id), self._png(cover_id)):  # the completion mark goes first
            with contextlib.suppress(OSError):
                path.unlink()


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
