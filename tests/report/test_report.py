"""`build_report` on the tiny preset: the page holds the cover grid, the tables, the plots and the honest
gaps, and it renders in headless Chromium (Debian's /usr/bin/chromium, never a Playwright browser download;
skipped only when that binary or the `playwright` package is missing)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.data.movielens import load_ml100k
from icg.presets import tiny_preset
from icg.report import build_report
from icg.report.plots import moving_average

TABLE4 = {
    "table": "table4",
    "rows": {
        "icg": {"LPIPS-miniCLIP": 1.67, "SSIM": 0.12, "FD-miniCLIP": 126.8, "seconds": 5.0},
        "w/o meta token": {"LPIPS-miniCLIP": 1.61, "SSIM": 0.13, "FD-miniCLIP": 103.4, "seconds": 5.0},
        "w/o user feature": {"LPIPS-miniCLIP": 1.66, "SSIM": 0.11, "FD-miniCLIP": 126.3, "seconds": 1.0},
    },
    "paper": {"icg": {"LPIPS": 0.4018, "FID": 31.23}, "w/o meta token": {"LPIPS": 0.5854, "FID": 37.02}},
    "metric_notes": {"LPIPS": "reported as LPIPS-miniCLIP instead (mini CLIP, its own scale)"},
    "setup": {"preset": "tiny", "n_users": 2, "n_items": 2, "fd_real_set": 4, "seed": 0, "steps": 2,
              "guidance_scale": 7.0, "threads": 1, "seconds": 11.0},
}  # fmt: skip


def _history(steps: int) -> list[dict]:
    rows = [
        {"step": s, "reward/personalized": 0.1 * s, "reward/clip": 0.3 - 0.01 * s, "loss/total": 1.0 / s}
        for s in range(1, steps + 1)
    ]
    rows[-1] |= {"guard/ssim": 0.12, "guard/judge_personalized": -0.5, "guard/flagged": True}
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """One report on the tiny preset (2 DDIM steps, 2 items) with a fake results folder and training run."""
    root = tmp_path_factory.mktemp("report")
    spec = tiny_preset(root / "tiny").replace(num_inference_steps=2)
    results = root / "results"
    results.mkdir()
    (results / "table4_mini.json").write_text(json.dumps(TABLE4), encoding="utf-8")
    (results / "notes.md").write_text("# Hand notes\n\n| a | b |\n|---|---|\n| x1 | 2 |\n", encoding="utf-8")
    run = root / "runs" / "adapter"
    (run / "samples").mkdir(parents=True)
    history = _history(5)
    (run / "metrics.json").write_text(json.dumps({"stage": "reward", "history": history}), encoding="utf-8")
    Image.new("RGB", (128, 32), "teal").save(run / "samples" / "step-000005.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine runs the tiny UNet fastest on one thread
    try:
        index = build_report(
            spec, load_ml100k(), root / "out", results_dir=results, runs=[run, root / "runs" / "absent"],
            n_items=2, seed=0, progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return index


def test_page_holds_grid_tables_plots_and_gaps(report):
    out = report.parent
    assert report == out / "index.html" and report.is_file()
    page = report.read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sources and all((out / s).is_file() for s in sources), "every image the page shows exists"
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page  # self-contained
    covers = [s for s in sources if s.startswith("images/covers/")]
    assert len(covers) == 2 * 9  # 2 items × (reference, rule-based, context only, 3 × ICG, 3 × PMG)
    assert {Image.open(out / s).size for s in covers} == {Image.open(out / covers[1]).size}
    for method in ("reference", "rule-based", "context only", "ICG", "PMG"):
        assert f">{method}</th>" in page
    assert page.count("explicit prompt:") == 2 and "keywords:" in page
    # the table, through the evaluation's own Markdown writer, beside the paper; its bars; the stand-in names
    assert "<td>w/o meta token</td>" in page and "0.5854" in page and "126.8" in page
    assert "images/plots/table4_mini.png" in sources
    assert "<td>x1</td>" in page  # an unknown Markdown file, rendered
    assert "<h3>Hand notes</h3>" not in page and "<h4>Hand notes</h4>" in page  # below the page's headings
    # what is missing is said so, never invented
    assert "not measured yet" in page
    for stem in ("table1_mini", "table5_mini", "table6_ml100k", "table7_ml100k", "adapter_heldout"):
        assert f"{stem}.json</code>): not measured yet" in page
    runs = [s for s in sources if s.startswith("images/runs/")]
    assert any(s.endswith("adapter.png") for s in runs) and any("step-000005" in s for s in runs)
    assert "absent/metrics.json not found" in page
    assert "tiny</b> preset" in page and "<dt>machine</dt>" in page


def test_moving_average_is_a_trailing_mean():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4, np.nan, 6], 2), [1, 1.5, 2.5, 3.5, 4, 6])


def test_page_renders_in_headless_chromium(report, tmp_path, chromium):
    browser = chromium
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(report.resolve().as_uri())
    page.wait_for_load_state("load")
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    n_images = page.evaluate("document.images.length")
    shot = page.screenshot(full_page=True)
    (tmp_path / "report.png").write_bytes(shot)
    assert n_images > 20 and broken == []
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(shot)) as image:
        pixels = np.asarray(image.convert("RGB")).astype(np.uint32)  # (H, W, 3)
    assert pixels.shape[1] >= 1000 and pixels.shape[0] >= 2000, "a full page: header, grid, tables, plots"
    assert pixels.std() > 10, "screenshot is blank"
    colors = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert len(colors) > 500, "screenshot has almost no content"
