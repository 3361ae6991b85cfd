"""Load a platform's own logs: the schema to export interactions, items and (optionally) users in.

Each table is one file, Parquet (``.parquet``/``.pq``) or CSV with a header row (``.csv``, comma-separated,
UTF-8; ``.tsv`` for tab-separated). Column order does not matter; extra columns are ignored. Ids may be
numbers or text: they are read as text, so ``42`` in one file matches ``42`` in another.

interactions (required), one row per user-item event:

==============  ========  =========================================================================
column          required  meaning
==============  ========  =========================================================================
``user_id``     yes       who
``item_id``     yes       what; every id must appear in the items table
``signal``      no        relevance: rating, watch time, likes... (number; default 1.0 = a click)
``timestamp``   no        Unix seconds, a Parquet timestamp or ISO 8601 text (default 0 = unknown)
==============  ========  =========================================================================

A (user, item) pair logged more than once keeps one row: the highest ``signal``, then the latest
``timestamp``. How many rows were dropped is logged.

items (required), one row per item, ``item_id`` unique:

================  ========  =======================================================================
column            required  meaning
================  ========  =======================================================================
``item_id``       yes       id used by the interactions
``title``         yes       display title, used in prompts
``genres``        no        ``|``-separated, primary first (``Drama|Romance``), or a Parquet list
``year``          no        release year (integer)
``cover_path``    no        current cover image; relative paths are resolved against the folder
                            holding the items file; paths that do not exist are treated as missing
================  ========  =======================================================================

users (optional), one row per user, ``user_id`` unique:

================  ========  =======================================================================
column            required  meaning
================  ========  =======================================================================
``user_id``       yes       id used by the interactions
``age``           no        years (integer)
``gender``        no        ``M``/``F`` or a word
``occupation``    no        free text
``zip``           no        postal code
``profile``       no        a sentence describing the user; built from age, gender and occupation
                            where missing ("a 24-year-old male technician")
================  ========  =======================================================================

Without a users table, or for interaction users missing from it, users get a profile saying there is no
profile data. Missing values in optional columns take the default; values of the wrong kind (text in
``signal``, ``year`` or ``age``) are errors naming the file, column and row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.records import InteractionData, add_profiles, empty_users
from icg.data.tables import (
    existing_files,
    read_parquet_table,
    read_table,
    reject_unknown_items,
    require_values,
    row_error,
    to_unix_seconds,
)
from icg.errors import DataError

logger = logging.getLogger(__name__)

LOG_SUFFIXES: dict[str, str | None] = {".parquet": None, ".pq": None, ".csv": ",", ".tsv": "\t"}
"""Accepted file suffixes → CSV separator (None: Parquet)."""

_TEXT_COLUMNS = (
    "user_id",
    "item_id",
    "title",
    "genres",
    "cover_path",
    "gender",
    "occupation",
    "zip",
    "profile",
)


def read_log_table(path: str | Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Read one log table by its suffix, checking the required `columns`."""
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in LOG_SUFFIXES:
        raise DataError(
            f"unsupported file type '{suffix or file.name}'",
            path=file,
            expected=f"{what} as one of {list(LOG_SUFFIXES)}",
        )
    sep = LOG_SUFFIXES[suffix]
    if sep is None:
        return read_parquet_table(file, columns=columns, what=what)
    return read_table(file, sep=sep, columns=columns, dtype=dict.fromkeys(_TEXT_COLUMNS, str), what=what)


def _ids(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Ids as stripped text; integral floats (Parquet ints with gaps) lose their '.0' so files match."""
    require_values(frame, column, path, "text")
    values = frame[column]
    if pd.api.types.is_float_dtype(values.dtype) and (values % 1 == 0).all():
        values = values.astype("Int64")
    return values.astype(str).str.strip()


def _numbers(frame: pd.DataFrame, column: str, path: Path, default: float) -> pd.Series:
    """An optional numeric column as float64: absent or missing → `default`; text → DataError."""
    if column not in frame.columns:
        return pd.Series(default, index=frame.index, dtype="float64")
    values = frame[column]
    # Missing cells are checked as 0 so that only text is reported; they then take the default.
    require_values(
        frame.assign(**{column: values.astype("object").where(values.notna(), 0)}), column, path, "number"
    )
    return pd.to_numeric(values, errors="coerce").fillna(default).astype("float64")


def _integers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """An optional integer column (year, age) as Int64, <NA> when missing; text or fractions → DataError."""
    if column not in frame.columns:
        return pd.Series(pd.array([pd.NA] * len(frame), dtype="Int64"), index=frame.index)
    numbers = _numbers(frame, column, path, np.nan)
    fractional = numbers.notna() & (numbers % 1 != 0)
    if fractional.any():
        raise row_error(fractional, "non-integer value", path, column, "whole numbers", frame[column])
    return numbers.astype("Int64")


def _texts(frame: pd.DataFrame, column: str) -> pd.Series:
    """An optional text column with None for absent, missing or blank values."""
    if column not in frame.columns:
        return pd.Series(None, index=frame.index, dtype=object)
    values = frame[column].astype("object")
    text = values.where(values.notna(), "").astype(str).str.strip()
    return text.astype("object").where(text != "", None)


def _genre_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple | np.ndarray):
        parts = [str(v) for v in value]
    elif value is None or pd.isna(value):
        parts = []
    else:
        parts = str(value).split("|")
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _genres(frame: pd.DataFrame) -> pd.Series:
    """`genres` as tuples; text is split once per distinct string."""
    if "genres" not in frame.columns:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    values = frame["genres"]
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):  # not a Parquet list column
        filled = values.fillna("")
        unique = pd.unique(filled)
        return filled.map(dict(zip(unique, (_genre_tuple(u) for u in unique), strict=True))).astype(object)
    return values.map(_genre_tuple).astype(object)


def _cover_paths(frame: pd.DataFrame, items_file: Path) -> pd.Series:
    """Covers resolved against the items file's folder; missing files become None (logged)."""
    given = _texts(frame, "cover_path")
    known = given.notna()
    if not known.any():
        return given
    base = str(items_file.parent) + os.sep
    texts = given[known].astype(str)
    absolute = texts.map(os.path.isabs).astype(bool)
    resolved = given.copy()
    resolved[known] = texts.where(absolute, base + texts)
    exists = existing_files(resolved)
    missing = known & ~exists
    if missing.any():
        logger.warning(
            "%s: %d cover files do not exist (e.g. %s); those items have no cover",
            items_file,
            int(missing.sum()),
            resolved[missing].iloc[0],
        )
    return resolved.where(exists, None).astype(object)


def deduplicate(interactions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (user, item): the highest signal, then the latest timestamp; file order otherwise kept."""
    ranked = interactions.sort_values(["signal", "timestamp"], ascending=False, kind="stable")
    kept = ranked.drop_duplicates(["user_id", "item_id"], keep="first").sort_index()
    return kept.reset_index(drop=True), len(interactions) - len(kept)


def _unique_ids(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        raise DataError(
            f"{int(duplicated.sum())} duplicated ids, e.g. {list(pd.unique(ids[duplicated])[:5])}",
            path=path,
            column=column,
            expected="one row per id",
        )


def _users_table(users_file: Path | None, user_ids: pd.Series) -> pd.DataFrame:
    """Users from the users file (profiles filled in), plus bare rows for interaction users it lacks."""
    if users_file is None:
        return empty_users(user_ids)
    raw = read_log_table(users_file, ["user_id"], "users")
    ids = _ids(raw, "user_id", users_file)
    _unique_ids(ids, users_file, "user_id")
    table = pd.DataFrame(
        {
            "user_id": ids,
            "age": _integers(raw, "age", users_file),
            "gender": _texts(raw, "gender"),
            "occupation": _texts(raw, "occupation"),
            "zip": _texts(raw, "zip"),
        }
    )
    given = _texts(raw, "profile")
    table = add_profiles(table)
    table["profile"] = given.where(given.notna(), table["profile"])
    absent = pd.unique(user_ids[~user_ids.isin(ids)])
    if len(absent):
        logger.info("%s: %d interaction users have no row; they get no profile data", users_file, len(absent))
        table = pd.concat([table, empty_users(pd.Series(absent))], ignore_index=True)
    return table.reset_index(drop=True)


def load_logs(
    interactions: str | Path, items: str | Path, users: str | Path | None = None, name: str = "logs"
) -> InteractionData:
    """A platform's logs (schema in the module docstring) in the shared schema, one row per (user, item)."""
    inter_file, items_file = Path(interactions).expanduser(), Path(items).expanduser()
    users_file = Path(users).expanduser() if users is not None else None

    raw_items = read_log_table(items_file, ["item_id", "title"], "items")
    item_ids = _ids(raw_items, "item_id", items_file)
    _unique_ids(item_ids, items_file, "item_id")
    require_values(raw_items, "title", items_file, "text")
    items_table = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": raw_items["title"].astype(str).str.strip(),
            "year": _integers(raw_items, "year", items_file),
            "genres": _genres(raw_items),
            "cover_path": _cover_paths(raw_items, items_file),
        }
    ).reset_index(drop=True)

    raw = read_log_table(inter_file, ["user_id", "item_id"], "interactions")
    table = pd.DataFrame(
        {
            "user_id": _ids(raw, "user_id", inter_file),
            "item_id": _ids(raw, "item_id", inter_file),
            "signal": _numbers(raw, "signal", inter_file, 1.0),
            "timestamp": (
                to_unix_seconds(raw["timestamp"], inter_file, "timestamp")
                if "timestamp" in raw.columns
                else pd.Series(0, index=raw.index, dtype="int64")
            ),
        }
    )
    known = table["item_id"].isin(items_table["item_id"])
    reject_unknown_items(~known, table["item_id"], inter_file, items_file)
    table, dropped = deduplicate(table)
    if dropped:
        logger.info(
            "%s: dropped %d duplicated (user, item) rows, keeping the highest signal, then latest timestamp",
            inter_file,
            dropped,
        )
    users_table = _users_table(users_file, table["user_id"])
    signal_name = "signal" if "signal" in raw.columns else "click"
    extra = {"interactions_file": str(inter_file), "items_file": str(items_file)}
    if users_file is not None:
        extra["users_file"] = str(users_file)
    return InteractionData(
        name, users_table, items_table, table, signal_name=signal_name, source=inter_file.parent, extra=extra
    )
