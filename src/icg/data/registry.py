"""Dataset names → loaders, so the CLI and scripts load any source with one call.

Every loader in DATASETS takes `(path, **options)` and returns an `InteractionData` in the shared schema.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from icg.data.logs import LOG_SUFFIXES, load_logs
from icg.data.movielens import load_ml1m, load_ml100k, load_ml_csv
from icg.data.pixelrec import INTERACTION_FILES, load_pixelrec
from icg.data.records import InteractionData
from icg.data.tables import require_dir
from icg.errors import DataError

Loader = Callable[..., InteractionData]

_ML_CSV = ("ml-25m", "ml-20m", "ml-latest", "ml-latest-small")


def _log_file(folder: Path, table: str) -> Path | None:
    """`folder/table.<suffix>` for the first accepted suffix present (Parquet before CSV), else None."""
    for suffix in LOG_SUFFIXES:
        candidate = folder / f"{table}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _required_log_file(folder: Path, table: str) -> Path:
    file = _log_file(folder, table)
    if file is None:
        raise DataError(
            f"no {table} table found",
            path=folder,
            expected=f"one of {[f'{table}{s}' for s in LOG_SUFFIXES]}",
        )
    return file


def load_logs_dir(path: str | Path) -> InteractionData:
    """Logs laid out as interactions.*, items.* and optionally users.* (Parquet or CSV) in one folder."""
    folder = require_dir(path, "interactions.{parquet,csv}, items.{parquet,csv} and optionally users.*")
    return load_logs(
        _required_log_file(folder, "interactions"),
        _required_log_file(folder, "items"),
        _log_file(folder, "users"),
        name="logs",
    )


DATASETS: dict[str, Loader] = {
    "ml-100k": lambda path=None: load_ml100k(path),
    "ml-1m": lambda path: load_ml1m(path),
    **{name: (lambda path, _name=name: load_ml_csv(path, name=_name)) for name in _ML_CSV},
    "pixelrec": lambda path, interactions_file=None, signal="view_number": load_pixelrec(
        path, interactions_file=interactions_file, signal=signal
    ),
    "logs": lambda path: load_logs_dir(path),
}
"""Known dataset names → loaders called as `loader(path, **options)`."""

_OPTIONS: dict[str, tuple[str, ...]] = {"pixelrec": ("interactions_file", "signal")}
_PATH_OPTIONAL = frozenset({"ml-100k"})
_LAYOUTS: dict[str, str] = {
    "ml-1m": "users.dat, movies.dat and ratings.dat",
    **dict.fromkeys(_ML_CSV, "ratings.csv and movies.csv"),
    "pixelrec": f"item_info.csv, one of {', '.join(INTERACTION_FILES)} and images/",
    "logs": "interactions.{parquet,csv}, items.{parquet,csv} and optionally users.{parquet,csv}",
}


def load_dataset(name: str, path: str | Path | None = None, **options: object) -> InteractionData:
    """Load dataset `name`; errors say which names, paths and options exist instead of a TypeError."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'", expected=f"one of {list(DATASETS)}")
    allowed = _OPTIONS.get(name, ())
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise DataError(
            f"{name} does not take option(s) {unknown}",
            expected=f"options {list(allowed)}" if allowed else "no options",
        )
    if path is None and name not in _PATH_OPTIONAL:
        raise DataError(f"{name} needs --path DIR", expected=f"a folder holding {_LAYOUTS[name]}")
    return DATASETS[name](path, **options)
