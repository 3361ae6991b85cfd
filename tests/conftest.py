"""Test-session set-up: never the network, never the user's own ICG_HOME."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("ICG_HOME", tempfile.mkdtemp(prefix="icg-test-home-"))


# --- headless browser and loopback server, shared by the web pages' end-to-end tests ----------------------
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never a Playwright browser download
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture
def chromium():
    """A headless Chromium browser (Playwright); skipped only where the binary or the package is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (CI installs it with `apt-get install -y chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def serve_in_thread():
    """start(app, **uvicorn_config) → the base URL of uvicorn serving `app` on a free loopback port in a
    thread; every server is stopped after the test."""
    import uvicorn

    running = []

    def start(app, **config) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def assert_page_screenshot():
    """check(png bytes): a real page screenshot, at least 300² px and not blank."""

    def check(data: bytes) -> None:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300
        assert pixels.std() > 10, "screenshot is blank"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "screenshot has almost no content"

    return check


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (small ops on a busy 2-core machine run fastest so)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
