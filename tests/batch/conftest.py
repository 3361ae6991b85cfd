"""Shared fixtures of the batch-job tests: one tiny preset and at most one local Ray per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from icg.presets import PresetSpec, tiny_preset


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch-presets") / "tiny"
    tiny_preset(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_spec(tiny_dir: Path) -> PresetSpec:
    return tiny_preset(tiny_dir)


@pytest.fixture(scope="session")
def ray_address():
    """A 2-CPU local Ray shared by the session's Ray tests (start-up takes seconds); yields its address."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
