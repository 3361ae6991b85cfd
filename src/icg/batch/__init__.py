"""Catalogue batch job: covers for items × user segments on Ray Data, resumable (`icg batch`).

Exports load lazily: Ray workers import `icg.batch.stages` / `icg.batch.writer` without pulling in the
driver's modules (sklearn, the input loaders).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchConfig": "icg.batch.job",
    "BatchResult": "icg.batch.job",
    "run_batch": "icg.batch.job",
    "Segments": "icg.batch.segments",
    "build_segments": "icg.batch.segments",
    "fit_segments": "icg.batch.segments",
    "read_segments": "icg.batch.segments",
    "user_embeddings": "icg.batch.segments",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'icg.batch' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
