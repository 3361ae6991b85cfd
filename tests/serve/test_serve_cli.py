"""`icg serve`'s command function: loopback by default, options reach the app, a warning for other hosts."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from typer.testing import CliRunner

from icg.loopback import is_loopback
from icg.serve.cli import serve


def _captured_run(monkeypatch) -> list[dict]:
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    return calls


def test_binds_loopback_by_default(monkeypatch, serve_spec, tmp_path):
    calls = _captured_run(monkeypatch)
    preset_dir = str(Path(serve_spec.base_model).parent)  # the tiny preset's folder (preset.json)
    serve(preset=preset_dir, dataset="none", cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000 and calls[0]["workers"] == 1
    app = calls[0]["app"]
    assert app.state.spec.name == "tiny" and app.state.catalog is None
    assert app.state.worker.max_queue == 32
    app.state.worker.close()


def test_options_through_typer_and_a_warning_for_public_hosts(monkeypatch, serve_spec, tmp_path, caplog):
    calls = _captured_run(monkeypatch)
    cli = typer.Typer()
    cli.command("serve")(serve)
    preset_dir = str(Path(serve_spec.base_model).parent)
    args = ["--preset", preset_dir, "--dataset", "none", "--cache-dir", str(tmp_path / "c")]
    args += ["--host", "0.0.0.0", "--port", "9123", "--max-queue", "3", "--max-upload-kb", "64"]
    args += ["--api-key", "k" * 16]
    with caplog.at_level(logging.WARNING, logger="icg.serve.cli"):
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "http://0.0.0.0:9123/" in result.output
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 9123
    app = calls[0]["app"]
    assert app.state.worker.max_queue == 3
    assert any("reachable from other machines" in r.message for r in caplog.records)
    app.state.worker.close()


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
