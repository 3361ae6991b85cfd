"""Shared by the serve tests: the tiny preset (1 DDIM step) loaded once, ml-100k, and a counting pipeline.

`CountingPipeline` wraps the real pipeline: it counts calls (a cache hit must not call it) and, when `gate` is
set to an Event, blocks inside the worker thread until the test releases it (to fill the bounded queue).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from icg.data.movielens import load_ml100k
from icg.loading import load_cover_pipeline
from icg.presets import PresetSpec, tiny_preset
from icg.serve import create_app


class CountingPipeline:
    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.calls = 0
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test never released the gate"
        return self.pipe(*args, **kwargs)


@pytest.fixture(scope="session")
def serve_spec(tmp_path_factory: pytest.TempPathFactory) -> PresetSpec:
    return tiny_preset(tmp_path_factory.mktemp("serve-presets") / "tiny").replace(num_inference_steps=1)


@pytest.fixture(scope="session")
def serve_pipeline(serve_spec: PresetSpec):
    return load_cover_pipeline(serve_spec)


@pytest.fixture(scope="session")
def ml100k():
    return load_ml100k()


@pytest.fixture
def counting(serve_pipeline) -> CountingPipeline:
    return CountingPipeline(serve_pipeline)


@pytest.fixture
def make_client(
    counting: CountingPipeline, serve_spec: PresetSpec, ml100k, tmp_path: Path
) -> Iterator[Callable[..., TestClient]]:
    """make_client(**create_app options) → an entered TestClient (lifespan runs; the worker closes after)."""
    clients: list[TestClient] = []

    def make(**options) -> TestClient:
        options.setdefault("dataset", ml100k)
        options.setdefault("cache_dir", tmp_path / "serve-cache")
        client = TestClient(create_app(counting, spec=serve_spec, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    if counting.gate is not None:
        counting.gate.set()
    for client in clients:
        client.__exit__(None, None, None)
