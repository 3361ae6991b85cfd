"""Per-item context cache: an item's explicit prompt and C_ref are computed once, then read back.

Why: the MLLM pass (generation of up to 77 tokens plus a prefill) dominates the cost of a cover, and the item
context does not depend on the user, so every user of the same item shares it. Entries live in memory and,
when a directory is given, on disk as one safetensors file per key (written to a temp file, then
`os.replace`d, so a crash never leaves a half-written entry under a valid name).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)


def image_digest(image: Image.Image) -> bytes:
    """Digest of the decoded pixels (mode, size, bytes): the same picture hits whatever file it came from."""
    h = hashlib.sha256()
    h.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    h.update(image.tobytes())
    return h.digest()


def context_key(title: str, image: Image.Image | bytes, model_id: str, num_meta_tokens: int) -> str:
    """Hex key of (title, image pixels, model id, N); parts are length-prefixed so they cannot run together.

    `image` may be a PIL image (its decoded pixels are hashed) or raw bytes (hashed as given).
    """
    pixels = image if isinstance(image, bytes) else image_digest(image)
    h = hashlib.sha256()
    for part in (title.encode(), pixels, model_id.encode(), str(num_meta_tokens).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True)
class CachedContext:
    """One item's context: the explicit prompt P_exp and C_ref."""

    prompt: str
    context: torch.Tensor  # (N, D), float32, CPU


class ContextCache:
    """In-memory dict in front of an optional on-disk store (`directory/<key[:2]>/<key>.safetensors`)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, CachedContext] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _path(directory: Path, key: str) -> Path:
        return directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> CachedContext | None:
        """Memory first, then disk (promoted to memory); an unreadable file counts as a miss."""
        entry = self._memory.get(key)
        if (
            entry is None
            and self.directory is not None
            and (path := self._path(self.directory, key)).is_file()
        ):
            try:
                with safe_open(str(path), framework="pt") as f:
                    prompt = (f.metadata() or {})["prompt"]
                    entry = CachedContext(prompt=prompt, context=f.get_tensor("context"))
            except (OSError, KeyError, ValueError, SafetensorError) as err:  # corrupt or foreign file
                logger.warning("ignoring unreadable context cache entry %s: %s", path, err)
                entry = None
            if entry is not None:
                self._memory[key] = entry
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, prompt: str, context: torch.Tensor) -> CachedContext:
        """Store C_ref (N, D) for one item; written atomically when the cache has a directory."""
        if context.ndim != 2:
            raise ValueError(f"expected one item's context of shape (N, D), got {tuple(context.shape)}")
        entry = CachedContext(prompt=prompt, context=context.detach().float().cpu().contiguous())
        self._memory[key] = entry
        if self.directory is not None:
            path = self._path(self.directory, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
            os.close(fd)
            try:
                save_file({"context": entry.context}, tmp, metadata={"prompt": prompt})
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return entry

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (
            self.directory is not None and self._path(self.directory, key).is_file()
        )

    def __len__(self) -> int:
        """Entries held in memory (the disk store may hold more)."""
        return len(self._memory)
