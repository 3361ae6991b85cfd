"""`icg serve`: the cover API (FastAPI + uvicorn) and its web gallery.

`create_app(preset_or_pipeline, dataset=..., cache_dir=..., max_queue=..., max_upload_bytes=...)` builds
the app (`icg.serve.app`); one worker thread owns the model (`icg.serve.worker`); served covers are cached
on disk under content ids (`icg.serve.cache`). `create_app` is imported lazily, so `icg.serve.cli` (what
`icg` registers) stays cheap to import: torch and diffusers load only when a server starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from icg.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'icg.serve' has no attribute {name!r}")
