"""Resume and manifest: which (item, segment) covers are complete, and the merged `manifest.parquet`.

Every cover is written as sidecar JSON, then the image (both atomic); each writer batch then adds one
manifest part (`manifest/parts/part-*.parquet`, atomic). A cover is complete when its file exists and its
SHA-256 equals the checksum recorded for it (in the manifest, a part, or its sidecar). So a job killed at any
point resumes by generating exactly the missing pairs: no duplicate rows (the merge keeps one row per
(item, segment)) and no missing ones (a row only counts when its file checks out).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from icg.atomic import atomic_path
from icg.batch.writer import MANIFEST_COLUMNS, PARTS_DIR, manifest_frame

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
KEY = ["item_id", "segment"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_temp_files(out: Path) -> int:
    """Remove the temp files (`.<name>.<random>.tmp`) that a killed run's atomic writes left behind."""
    removed = 0
    for file in out.rglob(".*.tmp"):
        if file.is_file():
            file.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d temp file(s) left by an interrupted run", removed)
    return removed


def part_files(out: Path) -> list[Path]:
    """The manifest parts on disk, sorted by name."""
    folder = out / PARTS_DIR
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def recorded_rows(out: Path) -> pd.DataFrame:
    """Rows of manifest.parquet and of every part, one per (item, segment) (parts win: they are newer)."""
    frames = [pd.read_parquet(f) for f in ([out / MANIFEST_NAME] if (out / MANIFEST_NAME).is_file() else [])]
    frames += [pd.read_parquet(f) for f in part_files(out)]
    frames = [f[list(MANIFEST_COLUMNS)] for f in frames if not f.empty]
    if not frames:
        return manifest_frame([])
    rows = pd.concat(frames, ignore_index=True).astype({"segment": "int64"})
    return rows.drop_duplicates(KEY, keep="last").reset_index(drop=True)


def complete_rows(out: Path, fmt: str) -> pd.DataFrame:
    """Manifest rows of the covers under `out` whose file exists and matches its recorded checksum."""
    recorded = recorded_rows(out)
    by_path = {row.path: row._asdict() for row in recorded.itertuples(index=False)}
    rows, bad = [], 0
    for file in sorted((out / "covers").glob(f"*/segment-*.{fmt}")) if (out / "covers").is_dir() else []:
        digest = sha256_file(file)
        row = by_path.get(file.relative_to(out).as_posix())
        if row is None or row["checksum"] != digest:
            # not recorded yet (killed before the batch's manifest part) or recorded before a regeneration
            row = _sidecar_row(file)
        if row is not None and row["checksum"] == digest:
            rows.append(row)
        else:
            bad += 1
    if bad:
        logger.warning("%d cover file(s) without a matching checksum will be generated again", bad)
    return manifest_frame(rows).drop_duplicates(KEY, keep="last").reset_index(drop=True)


def _sidecar_row(file: Path) -> dict | None:
    sidecar = file.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:  # written atomically, so only a hand-edited sidecar fails to parse
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return {c: meta.get(c) for c in MANIFEST_COLUMNS}


def merge_manifest(
    out: Path, frames: list[pd.DataFrame], item_order: list[str], scanned_parts: list[Path]
) -> pd.DataFrame:
    """One manifest.parquet (atomic) from `frames` (complete rows at the scan, this run's rows) and the parts
    written since the scan; then every part is removed.

    Rows are sorted by the items' input order (items of earlier runs not in it come last), then segment.
    """
    parts = part_files(out)
    # parts written since the scan (this run's) join the rows, so a row is never lost in the merge; the
    # scanned ones were checked against their files by `complete_rows` and are in `frames` if still valid
    new = [pd.read_parquet(p) for p in parts if p not in set(scanned_parts)]
    frames = [f for f in [*new, *frames] if not f.empty]
    rows = pd.concat(frames, ignore_index=True) if frames else manifest_frame([])
    rows = manifest_frame(rows.to_dict("records")).drop_duplicates(KEY, keep="last")
    rank = {item: n for n, item in enumerate(item_order)}
    rows = rows.assign(_rank=rows["item_id"].map(lambda i: rank.get(i, len(rank))))
    rows = rows.sort_values(["_rank", "item_id", "segment"]).drop(columns="_rank").reset_index(drop=True)
    with atomic_path(out / MANIFEST_NAME) as tmp:
        rows.to_parquet(tmp, index=False)
    for part in parts:  # every part's rows are in the manifest now; a kill here leaves harmless duplicates
        part.unlink(missing_ok=True)
    return rows
