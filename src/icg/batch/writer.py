"""Output files of the batch job, and its light stages (expansion, manifest parts). No torch, no models.

The light stages run as Ray tasks that ask for no CPU, in worker processes that never import torch or
diffusers, so they start in a moment and never wait for a core held by a model actor.

`write_cover` (called by the generation actor as soon as a cover is made) writes the cover's JSON sidecar,
then the image, both atomically. The order makes "cover file present" imply "sidecar with its checksum
present", so a job killed at any instant leaves every cover either complete or absent (temp files aside,
which the next run removes). `write_part` then records each block's rows as one manifest part (atomic).

Why the generation actor writes the covers itself rather than a separate writer task: Ray Data buffers a
UDF's output batches into blocks of up to `DataContext.target_max_block_size` (128 MiB) before passing them
downstream, so a writer task would only see covers once a whole input block is generated (a kill would lose
all of them), and every image would cross the object store on its way to disk.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from icg.atomic import atomic_path, write_text_atomic

MANIFEST_COLUMNS = (
    "item_id", "title", "segment", "path", "seed", "preset", "prompt", "checksum", "num_inference_steps",
    "guidance_scale",
)  # fmt: skip
PARTS_DIR = Path("manifest") / "parts"


def cover_relpath(folder: str, segment: int, fmt: str) -> Path:
    """Where a cover lives under the output folder: covers/<item folder>/segment-<k>.<fmt>."""
    return Path("covers") / folder / f"segment-{int(segment)}.{fmt}"


def pair_seed(seed: int, item_id: str, segment: int) -> int:
    """A deterministic noise seed per (item, segment), independent of batching, order and reruns."""
    digest = hashlib.sha256(f"{seed}|{item_id}|{int(segment)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array of `values` (np.array would turn equal-length lists into a 2-D array)."""
    column = np.empty(len(values), dtype=object)
    for n, value in enumerate(values):
        column[n] = value
    return column


def expand_segments(row: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One item row (context + the `segments` still to make) → one row per (item, segment)."""
    item_id = str(row["item_id"])
    return [
        {
            "item_id": item_id,
            "folder": row["folder"],
            "title": row["title"],
            "segment": int(s),
            "seed": pair_seed(seed, item_id, s),
            "prompt": row["explicit_prompt"],
            "context": row["context"],  # (N, D)
        }
        for s in row["segments"]
    ]


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Manifest rows with fixed columns and dtypes (also when empty)."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return frame.astype(
        {"segment": "int64", "seed": "int64", "num_inference_steps": "int64", "guidance_scale": "float64"}
    )


def write_cover(
    out_dir: str | Path, folder: str, data: bytes, meta: dict[str, Any], fmt: str
) -> dict[str, Any]:
    """Write one cover's sidecar, then its file (both atomic); returns its manifest row.

    `meta` holds the row's fields (item_id, title, segment, seed, preset, prompt, num_inference_steps,
    guidance_scale; extra keys go to the sidecar only); path and checksum are added here.
    """
    out = Path(out_dir)
    rel = cover_relpath(folder, int(meta["segment"]), fmt)
    sidecar = {**meta, "path": rel.as_posix(), "checksum": hashlib.sha256(data).hexdigest()}
    write_text_atomic((out / rel).with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))
    with atomic_path(out / rel) as tmp:
        tmp.write_bytes(data)
    return {c: sidecar[c] for c in MANIFEST_COLUMNS}


def write_part(batch: pd.DataFrame, out_dir: str) -> pd.DataFrame:
    """One manifest part (atomic) for a block of manifest rows; returns the rows."""
    frame = manifest_frame(batch.to_dict("records"))
    with atomic_path(Path(out_dir) / PARTS_DIR / f"part-{uuid.uuid4().hex}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return frame
