"""The CLI contracts of the foundation issue, run through the real `icg` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def icg(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `icg ARGS` in a fresh interpreter, as a user would."""
    code = "from icg.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_stats_ml100k_json_contract() -> None:
    result = icg("data", "stats", "ml-100k", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["ratings"]) == (943, 1682, 100000)
    assert stats["users_with_6plus"] == 943  # every ml-100k user rated at least 20 movies


def test_pairs_writes_parquet_with_split_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "pairs.parquet"
    result = icg("data", "pairs", "ml-100k", "--k1", "5", "--k2", "5", "--seed", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    pairs = pd.read_parquet(out)
    assert set(pairs["split"].astype(str)) == {"train", "val", "test"}
    assert summary["pairs"] == len(pairs) == sum(summary["pairs_per_split"].values())
    assert summary["users_kept"] == 943 and summary["users_dropped"] == 0
    assert json.loads(out.with_suffix(".parquet.json").read_text())["pairs"] == len(pairs)


def test_render_writes_pngs_and_contact_sheet(tmp_path: Path) -> None:
    result = icg("covers", "render", "ml-100k", "--size", "64", "--limit", "12", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.png"))) == 12
    assert (tmp_path / "1.png").is_file()
    assert "Toy Story" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("data", "stats", "ml-1m", "--path", "/nonexistent/ml-1m"), "/nonexistent/ml-1m"),
        (("data", "stats", "ml-1m"), "--path"),
        (("data", "stats", "no-such-dataset"), "ml-100k"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args: tuple[str, ...], needle: str) -> None:
    result = icg(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert needle in result.stderr


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,timestamp\n1,2,3\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n2,Heat (1995),Action\n")
    result = icg("data", "stats", "ml-25m", "--path", str(tmp_path), "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ratings.csv" in result.stderr and "rating" in result.stderr


def test_train_user_encoder_passes_its_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`icg train user-encoder --max-minutes` reaches the trainer (whose budget stop resumes: tests/users)."""
    import icg.users.train
    from icg.cli import main

    seen: dict = {}

    def fake_train(data, out, **options):
        seen.update(options, out=out)
        return {"auc": 0.5}

    monkeypatch.setattr(icg.users.train, "train_user_encoder", fake_train)
    argv = ["icg", "train", "user-encoder", "ml-100k", "--out", str(tmp_path), "--max-minutes", "2.5"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert seen == {"seed": 0, "max_minutes": 2.5, "out": tmp_path}
