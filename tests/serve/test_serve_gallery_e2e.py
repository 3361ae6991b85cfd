"""The gallery end to end in headless Chromium: search an item, pick two users, see the reference beside their
covers with the explicit prompt. Uses Debian's /usr/bin/chromium, never a Playwright browser download; skipped
only when that binary or the `playwright` package is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from icg.serve import create_app


@pytest.fixture
def server(counting, serve_spec, ml100k, tmp_path, serve_in_thread):
    """The API on a free loopback port, in a thread."""
    app = create_app(counting, spec=serve_spec, dataset=ml100k, cache_dir=tmp_path / "cache")
    return serve_in_thread(app), app


def test_gallery_item_search_two_users_in_headless_chromium(
    server, counting, tmp_path, chromium, assert_page_screenshot
):
    browser = chromium
    url, app = server
    errors: list[str] = []
    foreign: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(f"{msg.text} {msg.location}"))
    page.on("request", lambda req: req.url.startswith(url) or foreign.append(req.url))
    page.goto(url)
    page.wait_for_function("() => document.getElementById('info').textContent.includes('preset tiny')")

    page.fill("#item-q", "toy story")
    result = page.locator(".item-result", has_text="Toy Story")
    result.first.wait_for()
    result.first.click()
    assert "Toy Story" in page.locator("#selected-item").inner_text()

    page.locator(".user-pick[value='1']").wait_for()
    page.check(".user-pick[value='1']")
    page.check(".user-pick[value='2']")
    page.click("#generate")
    page.wait_for_function(
        "() => document.querySelectorAll('figure.cover.done').length === 2"
        " && [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("figure.cover.failed").count() == 0
    assert page.locator("#error").inner_text() == ""
    prompt = page.locator("#prompt").inner_text()
    captions = page.locator("figure.cover .prompt").all_inner_texts()
    whos = page.locator("figure.cover .who").all_inner_texts()
    assert page.locator("#result-title").inner_text() == "Toy Story"
    reference_src = page.locator("figure.reference img").get_attribute("src")
    cover_srcs = page.locator("figure.cover img").evaluate_all("els => els.map(e => e.src)")
    shot = page.screenshot(full_page=True)

    assert errors == [] and foreign == []
    assert counting.calls == 2
    ids = [src.rsplit("/", 1)[1] for src in cover_srcs]
    assert len(set(ids)) == 2 and reference_src.endswith("/v1/items/1/reference")
    metadata = [app.state.cache.metadata(cover_id) for cover_id in ids]
    assert {m["user"]["user_id"] for m in metadata} == {"1", "2"}
    assert prompt and prompt == metadata[0]["explicit_prompt"] and captions == [prompt, prompt]
    assert sorted(w.split(" \u00b7 ")[0] for w in whos) == ["user 1", "user 2"]
    assert_page_screenshot(shot)
    _save_for_inspection(shot, tmp_path, "serve-gallery.png")


def _save_for_inspection(data: bytes, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(data)
    target = os.environ.get("ICG_SERVE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(target) / name)
