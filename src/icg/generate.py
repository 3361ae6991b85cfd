"""`icg generate`: inputs from files or a dataset → covers + JSON sidecars + index.html, written atomically.

All inputs are read and validated, and all covers generated, before anything is written; each file is then
written atomically and index.html last, so a failed run never leaves a half-written output folder.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import PIL.Image

from icg import validation
from icg.atomic import atomic_path, write_text_atomic
from icg.cover_record import RunInfo, cover_record  # RunInfo lived here: `icg.generate.RunInfo` still works
from icg.errors import ICGError
from icg.pipeline import CoverItem, CoverPipelineOutput, CoverUser

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def read_image(path: str | Path) -> PIL.Image.Image:
    """An RGB image from `path`, or an ICGError naming the file (missing, truncated, a bomb)."""
    return validation.read_image(path)


def dataset_item(dataset: str, item_id: str, size: int = 256) -> CoverItem:
    """A dataset item as a CoverItem: its cover file if it has one, else its rendered reference cover."""
    from icg.data.covers.render import display_title, render_cover
    from icg.data.registry import load_dataset

    row = load_dataset(dataset).item_by_id(item_id)
    if row["cover_path"] is not None:
        image = read_image(row["cover_path"])
    else:
        year = None if row["year"] is None or str(row["year"]) == "<NA>" else int(row["year"])
        image = render_cover(str(row["item_id"]), row["title"], row["genres"], year=year, size=size)
    # the title as a cover prints it ("Usual Suspects, The" → "The Usual Suspects"): what an MLLM reads best
    # and what the mini context encoder was trained on
    title = display_title(str(row["title"])) or str(row["title"])
    return CoverItem(title=title, image=image, item_id=str(row["item_id"]))


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe fragment of `text` (never a path separator or '..')."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")[:limit]
    return cleaned or hashlib.sha256(text.encode()).hexdigest()[:8]


def cover_file_stem(meta: dict[str, Any]) -> str:
    item = slug(meta["item_id"] or meta["title"])
    if meta["user_id"] is not None:
        user = f"user-{slug(str(meta['user_id']))}"
    elif meta["profile"] is not None:
        user = "profile-" + hashlib.sha256(str(meta["profile"]).encode()).hexdigest()[:8]
    else:
        user = "nouser"
    return f"{item}__{user}__{meta['image_index']}"


def write_covers(output: CoverPipelineOutput, out_dir: Path, info: RunInfo) -> list[Path]:
    """Write each cover as PNG + JSON sidecar, then index.html; returns the PNG paths.

    A sidecar is the cover's `CoverRecord` (`icg.cover_record`) over the pipeline's metadata for it, which
    adds every other setting that regenerates it (scheduler, size, adapter scale, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    written: list[Path] = []
    for image, meta in zip(output.images, output.metadata, strict=True):
        stem = cover_file_stem(meta)
        sidecar = {**meta, **cover_record(meta, info).fields()}
        with atomic_path(out_dir / f"{stem}.png") as tmp:
            image.save(tmp, format="PNG")
        write_text_atomic(out_dir / f"{stem}.json", json.dumps(sidecar, indent=2, default=str))
        rows.append((stem, sidecar))
        written.append(out_dir / f"{stem}.png")
    write_text_atomic(out_dir / "index.html", _index_html(rows, info))
    return written


def _index_html(rows: list[tuple[str, dict[str, Any]]], info: RunInfo) -> str:
    """A grid: one row per item, one column per user, explicit prompt under the item's title."""
    by_item: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for stem, meta in rows:
        by_item.setdefault(meta["item_id"] or meta["title"], []).append((stem, meta))
    sections = []
    for entries in by_item.values():
        first = entries[0][1]
        cells = "".join(
            f'<figure><img src="{html.escape(stem)}.png" alt=""><figcaption>'
            f"{html.escape(str(meta['user_id'] or meta['profile'] or 'no user'))} · seed {meta['seed']}"
            "</figcaption></figure>"
            for stem, meta in entries
        )
        sections.append(
            f"<section><h2>{html.escape(first['title'])}</h2>"
            f"<p class=prompt>explicit prompt: {html.escape(first['explicit_prompt'])}</p>"
            f"<div class=grid>{cells}</div></section>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>ICG covers</title><style>"
        "body{font-family:sans-serif;margin:2em;background:#111;color:#eee}"
        ".grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
        "img{width:192px;height:192px;image-rendering:pixelated;border:1px solid #444}"
        "figcaption{font-size:12px;color:#aaa}.prompt{color:#9cf;font-size:13px}</style>"
        f"<h1>ICG covers — preset {html.escape(info.preset)}</h1>"
        f"<p>adapter {html.escape(str(info.adapter_hash))}</p>" + "".join(sections)
    )


def parse_users(user_ids: list[str], profiles: list[str]) -> list[CoverUser] | None:
    """CoverUsers from repeated --user-id and --profile options (ids first, then profile-only users)."""
    users = [CoverUser(user_id=u) for u in user_ids] + [CoverUser(profile=p) for p in profiles]
    for p in profiles:
        if not p.strip():
            raise ICGError(f"--profile is empty: give a sentence ({validation.PROFILE_HINT})")
        validation.check_profile(p)  # printable, at most MAX_PROFILE_CHARS (the encoder's check comes later)
    return users or None


def check_profiles(pipe: Any, users: list[CoverUser] | None) -> None:
    """Each profile sentence must be one the pipeline's user encoder can read (the API's rule)."""
    encoder = getattr(pipe, "user_encoder", None)
    vocab = getattr(encoder, "vocab", None)
    for user in users or []:
        if user.profile is not None:
            validation.check_profile(user.profile, vocab)
