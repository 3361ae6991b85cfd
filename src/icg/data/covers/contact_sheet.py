"""An HTML contact sheet of rendered covers, one section per primary genre, to eyeball a render run."""

from __future__ import annotations

import html
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import pandas as pd

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #f4f4f2; color: #222; }
nav a { margin-right: .8rem; }
section { margin-top: 2rem; }
h2 span { font-weight: normal; color: #777; font-size: .8em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: .8rem; }
figure { margin: 0; }
figure img { width: 100%; aspect-ratio: 1; image-rendering: auto; border-radius: 4px; display: block; }
figcaption { font-size: .8rem; margin-top: .25rem; overflow-wrap: anywhere; }
"""


def _write_text_atomic(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _anchor(genre: str) -> str:
    return "genre-" + "".join(c if c.isalnum() else "-" for c in genre.lower())


def write_contact_sheet(rendered: pd.DataFrame, out_dir: Path, title: str) -> Path:
    """Write `{out_dir}/index.html` (atomically) from the table `render_covers` returns; returns its path.

    Sections are ordered by size (largest genre first); image links are relative, so the folder can be moved.
    """
    for column in ("item_id", "title", "primary_genre", "path"):
        if column not in rendered.columns:
            raise ValueError(f"rendered table lacks column '{column}' (have {list(rendered.columns)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = rendered["primary_genre"].astype(str).value_counts()
    order = sorted(counts.index, key=lambda g: (-counts[g], g))
    nav = " ".join(f'<a href="#{_anchor(g)}">{html.escape(g)} ({counts[g]})</a>' for g in order)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(rendered)} covers in {len(order)} genres.</p><nav>{nav}</nav>",
    ]
    for genre in order:
        rows = rendered[rendered["primary_genre"].astype(str) == genre]
        parts.append(
            f'<section id="{_anchor(genre)}"><h2>{html.escape(genre)} <span>({len(rows)})</span></h2>'
        )
        parts.append('<div class="grid">')
        for row in rows.itertuples(index=False):
            rel = Path(os.path.relpath(Path(row.path).resolve(), out_dir.resolve())).as_posix()
            caption = html.escape(str(row.title))
            parts.append(
                f'<figure><img src="{html.escape(quote(rel))}" alt="{caption}" loading="lazy">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    path = out_dir / "index.html"
    _write_text_atomic("\n".join(parts), path)
    logger.info("contact sheet: %d covers, %d genres → %s", len(rendered), len(order), path)
    return path
