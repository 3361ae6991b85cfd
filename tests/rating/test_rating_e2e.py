"""End to end in headless Chromium: a rater enters an id, rates every cover by clicking (and by keyboard),
the rows land in SQLite, and the page stays anonymous. Uses Debian's /usr/bin/chromium, never a Playwright
browser download; skipped only when that binary or the `playwright` package is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icg.rating.app import create_app, rater_order

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RATER = "e2e-rater"


def _require_browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (CI installs it with `apt-get install -y chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture
def server(study, tmp_path):
    """uvicorn serving the study on a free loopback port, in a thread."""
    import uvicorn

    db = tmp_path / "ratings.sqlite"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(study, db), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/", db
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _assert_non_blank_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300
    assert pixels.std() > 10, "screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "screenshot has almost no content"


def test_rate_every_cover_in_headless_chromium(server, study, tmp_path):
    sync_playwright = _require_browser()
    url, db = server
    order = rater_order(study, RATER)
    total = len(order)
    bodies: list[str] = []
    foreign: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console", lambda msg: msg.type == "error" and errors.append(f"{msg.text} {msg.location}")
            )
            page.on("request", lambda req: req.url.startswith(url) or foreign.append(req.url))

            def keep_text(response):
                if "image/" not in (response.headers.get("content-type") or ""):
                    bodies.append(response.text())

            page.on("response", keep_text)
            page.goto(url)
            assert page.locator("#login").is_visible() and page.locator("#rate").is_hidden()
            page.fill("#rater", RATER)
            page.click("#login-form button[type=submit]")

            expected: dict[str, int] = {}
            for index, image_id in enumerate(order):
                page.wait_for_function(
                    "([id, text]) => document.getElementById('cover').src.endsWith('images/' + id)"
                    " && document.getElementById('cover').complete"
                    " && document.getElementById('cover').naturalWidth > 0"
                    " && document.getElementById('progress').textContent === text",
                    arg=[image_id, f"{index} / {total}"],
                )
                assert page.locator("#caption").inner_text() == study.by_id[image_id].caption
                if index == 1:
                    shot = page.screenshot(full_page=True)
                    _assert_non_blank_png(shot)
                    _save_for_inspection(shot, tmp_path, "rating-page.png")
                score = 1 + index % 3
                expected[image_id] = score
                if index % 4 == 3:
                    page.keyboard.press(str(score))  # keyboard 1-3
                else:
                    page.click(f".scale button[data-score='{score}']")

            page.locator("#done").wait_for(state="visible")
            assert page.locator("#progress").inner_text() == f"{total} / {total}"
            assert f"all {total} covers" in page.locator("#done-text").inner_text()
            _save_for_inspection(page.screenshot(full_page=True), tmp_path, "rating-done.png")

            page.reload()  # the rater id is remembered: straight to the thank-you
            page.locator("#done").wait_for(state="visible")
            assert page.evaluate("localStorage.getItem('icg-rater')") == RATER
        finally:
            browser.close()

    assert errors == [] and foreign == []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rater, image_id, method, score, revisions FROM ratings").fetchall()
    assert len(rows) == total
    assert {row[1]: row[3] for row in rows} == expected
    assert all(row[0] == RATER and row[4] == 0 for row in rows)
    assert {row[2] for row in rows} == set(study.methods)
    seen = "\n".join(bodies)
    assert seen and all(method not in seen for method in study.methods)


def _save_for_inspection(data: bytes, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(data)
    target = os.environ.get("ICG_RATING_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(target) / name)
