"""`icg rate …` commands through Typer's CliRunner: summary (JSON and table), make-study, serve's defaults."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from icg.rating.cli import rate_app
from icg.rating.store import RatingStore


def test_cli_summary_json_and_table(study):
    store = RatingStore(study.default_db)
    alpha = [img for img in study.images if img.method == "methodalpha"]
    for rater, scores in (("ann", (3, 3, 2, 2)), ("bob", (3, 2, 3, 3))):
        for image, score in zip(alpha, scores, strict=True):
            store.add(rater, image.id, image.method, score)
    beta = next(img for img in study.images if img.method == "methodbeta")
    store.add("ann", beta.id, beta.method, 1)

    runner = CliRunner()
    result = runner.invoke(rate_app, ["summary", "--study", str(study.root), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_raters"] == 2 and payload["ci"].startswith("t-interval")
    rows = {row["method"]: row for row in payload["methods"]}
    assert rows["methodalpha"]["n"] == 8 and rows["methodalpha"]["mean"] == pytest.approx(21 / 8)
    assert rows["methodalpha"]["n_raters"] == 2 and rows["methodalpha"]["n_images"] == 4
    assert rows["methodbeta"]["n"] == 1 and rows["methodbeta"]["ci_low"] is None
    assert rows["methodgamma"]["n"] == 0

    table = runner.invoke(rate_app, ["summary", "--study", str(study.root)])
    assert table.exit_code == 0, table.output
    assert "methodalpha" in table.stdout and "2.625" in table.stdout and "t-interval" in table.stdout


def test_cli_summary_without_ratings_fails_clearly(study):
    result = CliRunner().invoke(rate_app, ["summary", "--study", str(study.root)])
    assert result.exit_code != 0 and "no ratings yet" in str(result.exception)


def test_cli_make_study(tmp_path):
    from PIL import Image

    for method, color in (("base", "red"), ("ours", "blue")):
        (tmp_path / method).mkdir()
        for k in range(2):
            Image.new("RGB", (16, 16), color).save(tmp_path / method / f"movie{k}.png")
    out = tmp_path / "study"
    args = [
        "make-study",
        str(out),
        "--method",
        f"base={tmp_path / 'base'}",
        "--method",
        f"ours={tmp_path / 'ours'}",
    ]
    result = CliRunner().invoke(rate_app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted((row["method"], row["item"]) for row in manifest["images"]) == [
        ("base", "movie0"),
        ("base", "movie1"),
        ("ours", "movie0"),
        ("ours", "movie1"),
    ]
    bad = CliRunner().invoke(rate_app, ["make-study", str(tmp_path / "s2"), "--method", "nofolder"])
    assert bad.exit_code != 0 and "NAME=FOLDER" in str(bad.exception)


def test_cli_serve_binds_loopback_by_default(study, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    result = CliRunner().invoke(rate_app, ["serve", "--study", str(study.root), "--port", "8123"])
    assert result.exit_code == 0, result.output
    ((app, options),) = calls
    assert options["host"] == "127.0.0.1" and options["port"] == 8123
    assert app.state.store.path == study.default_db and len(app.state.study.images) == 12
    assert "http://127.0.0.1:8123/" in result.stdout
