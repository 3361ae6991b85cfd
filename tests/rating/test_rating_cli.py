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


def _method_folders(tmp_path, methods=("base", "ours")):
    from PIL import Image

    for method in methods:
        (tmp_path / method).mkdir()
        for k in range(2):
            Image.new("RGB", (16, 16), "red").save(tmp_path / method / f"movie{k}.png")


def test_make_study_refuses_a_method_named_twice(tmp_path):
    """Issue 19, defect 4: `--method icg=A --method icg=B` silently dropped A."""
    _method_folders(tmp_path)
    args = ["make-study", str(tmp_path / "s"), "--method", f"icg={tmp_path / 'base'}"]
    args += ["--method", f"icg={tmp_path / 'ours'}"]
    result = CliRunner().invoke(rate_app, args)
    assert result.exit_code != 0 and "--method: 'icg' is given twice" in str(result.exception)
    assert not (tmp_path / "s").exists()


def test_make_study_with_a_truncated_png_is_one_line(tmp_path, monkeypatch, capsys):
    """Issue 19, defect 3: through `icg`'s entry point, a cut PNG is one line naming it, exit code 2."""
    import sys

    from icg.cli import main

    _method_folders(tmp_path)
    cut = tmp_path / "ours" / "movie1.png"
    cut.write_bytes(cut.read_bytes()[:50])
    monkeypatch.setattr(sys, "argv", ["icg", "rate", "make-study", str(tmp_path / "s")] + [
        "--method", f"base={tmp_path / 'base'}", "--method", f"ours={tmp_path / 'ours'}"
    ])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "movie1.png" in err


def test_summary_table_prints_raters_and_ratings(study):
    store = RatingStore(study.default_db)
    for image in study.images[:5]:
        store.add("r01", image.id, image.method, 2)
    table = CliRunner().invoke(rate_app, ["summary", "--study", str(study.root)])
    assert table.exit_code == 0, table.output
    assert "5 ratings by 1 raters" in table.stdout and "raters" in table.stdout and "ratings" in table.stdout


def test_invite_adds_tokens(study):
    before = len(study.invites)
    result = CliRunner().invoke(rate_app, ["invite", "--study", str(study.root), "--raters", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")[1]) == 32 for line in lines)
    from icg.rating.study import load_study

    assert len(load_study(study.root).invites) == before + 2
