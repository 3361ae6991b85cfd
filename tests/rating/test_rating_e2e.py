"""End to end in headless Chromium: a rater enters an invite code, rates every cover by click and by keyboard,
the rows land in SQLite, and the page stays anonymous. Uses Debian's /usr/bin/chromium, never a Playwright
browser download; skipped only when that binary or the `playwright` package is missing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from icg.rating.app import create_app, rater_order

RATER = "r01"  # the first invite made by make_study


@pytest.fixture
def server(study, tmp_path, serve_in_thread):
    """The rating app for `study` on a free loopback port, in a thread."""
    db = tmp_path / "ratings.sqlite"
    return serve_in_thread(create_app(study, db), lifespan="off"), db


def test_rate_every_cover_in_headless_chromium(server, study, tmp_path, chromium, assert_page_screenshot):
    browser = chromium
    url, db = server
    order = rater_order(study, RATER)
    invite = next(t for t, r in study.invites.items() if r == RATER)
    total = len(order)
    bodies: list[str] = []
    foreign: list[str] = []
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 900, "height": 760})
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(f"{msg.text} {msg.location}"))
    page.on("request", lambda req: req.url.startswith(url) or foreign.append(req.url))

    def keep_text(response):
        if "image/" not in (response.headers.get("content-type") or ""):
            bodies.append(response.text())

    page.on("response", keep_text)
    page.goto(url)
    assert page.locator("#login").is_visible() and page.locator("#rate").is_hidden()
    page.fill("#token", invite)
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
            assert_page_screenshot(shot)
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

    page.reload()  # the invite is remembered: straight to the thank-you
    page.locator("#done").wait_for(state="visible")
    assert page.evaluate("localStorage.getItem('icg-rater')") == invite
    link = browser.new_page()  # an invite link starts the session and leaves the address bar clean
    link.goto(f"{url}?token={invite}")
    link.locator("#done").wait_for(state="visible")
    assert "token" not in link.url

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
