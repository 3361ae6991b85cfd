"""Read delimited and Parquet tables with errors that say which file, which column and what was expected."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from icg.errors import DataError

_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", "::": "'::'", "|": "'|'", ";": "';'"}


def require_dir(path: str | Path, what: str) -> Path:
    """Return `path` as a Path if it is an existing folder, else a DataError naming `what` it should hold."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError("folder not found", path=folder, expected=f"a folder holding {what}")
    return folder


def require_file(path: str | Path, what: str) -> Path:
    """Return `path` if it is an existing, non-empty file, else a DataError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError("file not found", path=file, expected=what)
    if file.stat().st_size == 0:
        raise DataError("file is empty", path=file, expected=what)
    return file


def read_table(
    path: str | Path,
    *,
    sep: str,
    columns: Sequence[str],
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    dtype: dict[str, object] | None = None,
    what: str = "a table",
) -> pd.DataFrame:
    """Read a delimited file and check it holds `columns`.

    `names` gives column names for files without a header row. A file that parses into a single column
    while more were expected is reported as a wrong separator, naming the one that was expected.
    """
    file = require_file(path, what)
    sep_name = _SEPARATOR_NAMES.get(sep, repr(sep))
    engine = "python" if len(sep) > 1 else "c"
    try:
        frame = pd.read_csv(
            file,
            sep=sep,
            header=None if names is not None else "infer",
            names=list(names) if names is not None else None,
            encoding=encoding,
            dtype=dtype,
            engine=engine,
            keep_default_na=True,
        )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"cannot decode byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start}",
            path=file,
            expected=f"text encoded as {encoding}",
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError("file has no rows", path=file, expected=what) from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(
            f"cannot parse: {str(exc).splitlines()[0]}", path=file, expected=f"{sep_name}-separated {what}"
        ) from None
    if frame.empty:
        raise DataError("file has no data rows", path=file, expected=what)
    if names is not None and len(columns) > 1 and frame[list(names)[1:]].isna().all().all():
        raise DataError(
            "every row parsed into one field: wrong separator",
            path=file,
            expected=f"{sep_name}-separated fields {list(names)}",
        )
    if len(frame.columns) == 1 and len(columns) > 1 and any(c not in frame.columns for c in columns):
        raise DataError(
            "header parsed into one field: wrong separator",
            path=file,
            expected=f"{sep_name}-separated columns {list(columns)}",
        )
    return require_columns(frame, columns, file)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], file: Path) -> pd.DataFrame:
    """`frame` when it has every one of `columns`; else a DataError naming the first missing one."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column; found {list(frame.columns)}",
            path=file,
            column=missing[0],
            expected=f"columns {list(columns)}",
        )
    return frame


def row_error(
    flags: pd.Series,
    problem: str,
    path: str | Path,
    column: str,
    expected: str,
    values: pd.Series | None = None,
) -> DataError:
    """The DataError for the first flagged row ("non-numeric value 'x' in row 3", rows counted from 1), so
    every column check words it alike; `values` given, the row's value is quoted."""
    row = int(flags.to_numpy().argmax())
    shown = f" {values.iloc[row]!r}" if values is not None else ""
    return DataError(f"{problem}{shown} in row {row + 1}", path=path, column=column, expected=expected)


def require_values(frame: pd.DataFrame, column: str, path: str | Path, kind: str) -> None:
    """Raise a DataError if `column` holds missing values or values not convertible to `kind` ('number')."""
    values = frame[column]
    if kind == "number":
        converted = pd.to_numeric(values, errors="coerce")
        bad = converted.isna() & values.notna()
        if bad.any():
            raise row_error(bad, "non-numeric value", path, column, "numbers", values)
    if values.isna().any():
        raise row_error(values.isna(), "missing value", path, column, "a value in every row")


def read_parquet_table(path: str | Path, *, columns: Sequence[str], what: str = "a table") -> pd.DataFrame:
    """Read a Parquet file and check it holds `columns`; errors name the file like `read_table` does."""
    file = require_file(path, what)
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(
            f"cannot read as Parquet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            path=file,
            expected=f"a Parquet file holding {what}",
        ) from None
    if frame.empty:
        raise DataError("file has no data rows", path=file, expected=what)
    return require_columns(frame, columns, file)


def to_unix_seconds(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """Timestamps as int64 Unix seconds: numbers pass through, datetimes and ISO 8601 text are converted.

    Missing values become 0 (the schema's "unknown"); anything else unreadable is a DataError naming the row.
    Naive datetimes are taken as UTC.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        stamps = pd.to_datetime(values, utc=True)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        text = values.notna() & numbers.isna()
        if not text.any():
            return numbers.fillna(0).astype("int64")
        try:
            stamps = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError):
            expected = "Unix seconds or ISO 8601 date-times"
            raise row_error(text, "unreadable timestamp", path, column, expected, values) from None
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.fillna(0).astype("int64")


def existing_files(paths: pd.Series) -> pd.Series:
    """Which of `paths` (str or missing) name existing files.

    One directory listing per folder instead of a stat per row: cover folders can hold millions of images.
    """
    present = pd.Series(False, index=paths.index)
    known = paths.notna() & (paths.astype("object").astype(str) != "")
    if not known.any():
        return present
    parts = paths[known].astype(str).str.rpartition(os.sep)
    folders, names = parts[0], parts[2]
    for folder, group in names.groupby(folders, sort=False):
        try:
            with os.scandir(folder or ".") as entries:
                listed = {entry.name for entry in entries if entry.is_file()}
        except OSError:
            continue
        present[group.index] = group.isin(listed)
    return present


def reject_unknown_items(
    unknown: pd.Series, item_ids: pd.Series, inter_file: str | Path, items_file: str | Path
) -> None:
    """DataError if any interaction (where `unknown` is True) names an item the items file does not list."""
    if not unknown.any():
        return
    ids = pd.unique(item_ids[unknown])
    raise DataError(
        f"{int(unknown.sum())} interactions name {len(ids)} item ids absent from {Path(items_file).name}, "
        f"e.g. {list(ids[:5])}",
        path=inter_file,
        column="item_id",
        expected=f"item ids listed in {items_file}",
    )
