"""Test-session set-up: never the network, never the user's own ICG_HOME."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("ICG_HOME", tempfile.mkdtemp(prefix="icg-test-home-"))
