"""Synthetic reference covers: MovieLens has no cover images, so each item gets a rendered one.

A cover is a function of (item_id, title, genres, year, size, variant) only: the primary genre picks the
style (`styles.py`), the title hash and the variant pick the composition, sha256(item_id, variant) seeds the
details, and the title is set in type. Variant 0 is the reference cover; other variants are alternative
compositions of the same item for training-time augmentation. Drawing happens at twice the size and is
downsampled with LANCZOS.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from icg.data.covers.motifs import PAINTERS
from icg.data.covers.styles import Composition, GenreStyle, rgba, stable_int, style_for_genre
from icg.data.records import primary_genre

logger = logging.getLogger(__name__)

MIN_SIZE, MAX_SIZE = 64, 512
SUPERSAMPLE = 2
FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont

_FONT_FILES = {
    "sans": ("DejaVuSans-Bold.ttf",),
    "serif": ("DejaVuSerif-Bold.ttf", "DejaVuSans-Bold.ttf"),
    "condensed": ("DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Bold.ttf"),
    "mono": ("DejaVuSansMono-Bold.ttf", "DejaVuSans-Bold.ttf"),
}
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")
_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>The|A|An|La|Le|Les|Il|El|Die|Der|Das|L')$")
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


# ------------------------------------------------------------------------------------------------ validation
def check_size(size: int) -> int:
    """Sizes outside 64-512 are refused: smaller covers lose the title, larger ones cost without need."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"cover size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    return int(size)


def check_variant(variant: int) -> int:
    """Variants are composition seeds: 0 is the reference cover, 1, 2, ... augmentations."""
    if isinstance(variant, bool) or not isinstance(variant, int | np.integer) or variant < 0:
        raise ValueError(f"variant must be a non-negative integer, got {variant!r}")
    return int(variant)


def check_item_id(item_id: str) -> str:
    """Item ids become file names, so anything that could escape the output folder is refused, not rewritten
    (rewriting could make two ids share one file)."""
    item_id = str(item_id)
    if not item_id or item_id.startswith(".") or _UNSAFE_ID.search(item_id) or len(item_id) > 200:
        raise ValueError(
            f"item id {item_id!r} cannot be used as a file name "
            "(empty, starts with '.', contains a path separator or control character, "
            "or is over 200 characters)"
        )
    return item_id


# ----------------------------------------------------------------------------------------------------- fonts
@lru_cache(maxsize=8)
def font_file(kind: str) -> str | None:
    """The first DejaVu TTF found for a face kind (system fonts, then matplotlib's copy); None → Pillow's own.

    The search order is fixed, so one machine always uses the same file and covers stay byte-identical there.
    """
    dirs = list(_FONT_DIRS)
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(str(Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"))
    for name in _FONT_FILES.get(kind, _FONT_FILES["sans"]):
        for folder in dirs:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    logger.info("no DejaVu %s font found; using Pillow's bundled font", kind)
    return None


@lru_cache(maxsize=512)
def get_font(kind: str, px: int) -> FontT:
    """A font of `px` pixels; Pillow ≥10.1 ships a scalable default when no TTF is found."""
    path = font_file(kind)
    return ImageFont.truetype(path, px) if path else ImageFont.load_default(size=px)


def display_title(title: str) -> str:
    """'Birdcage, The (1996 alt title)' → 'The Birdcage': MovieLens' sort order is not how covers read."""
    text = re.sub(r"\s*\([^()]*\)\s*$", "", title.strip()) or title.strip()
    match = _TRAILING_ARTICLE.match(text)
    if match:
        sep = "" if match["article"].endswith("'") else " "
        text = f"{match['article']}{sep}{match['rest']}"
    return text


def _wrap(words: list[str], font: FontT, width: float) -> list[str] | None:
    """Greedy word wrap; None when a single word is wider than the line."""
    lines: list[str] = []
    for word in words:
        if font.getlength(word) > width:
            return None
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def fit_title(
    text: str, kind: str, width: float, height: float, max_px: int, min_px: int
) -> tuple[FontT, list[str]]:
    """The largest font size whose word-wrapped lines fit the box; at the smallest, break and truncate."""
    words = text.split()
    px = max_px
    while px >= min_px:
        font = get_font(kind, px)
        lines = _wrap(words, font, width)
        if lines is not None and len(lines) * px * 1.12 <= height:
            return font, lines
        px = min(px - 1, int(px * 0.92))
    font, lines = get_font(kind, min_px), []
    for word in words:  # hard-break words that are too long, then cut to the lines that fit
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    keep = max(1, int(height // (min_px * 1.12)))
    if len(lines) > keep:
        lines = lines[:keep]
        while len(lines[-1]) > 1 and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return font, lines


# -------------------------------------------------------------------------------------------------- drawing
def composition(title: str, variant: int, style: GenreStyle) -> Composition:
    """Layout from the title hash (and variant): items of one genre share a look but not a layout."""
    r = random.Random(stable_int("composition", title, variant))
    title_pos = r.choice(style.title_positions)
    return Composition(
        focus_x=r.uniform(0.3, 0.7),
        focus_y=r.uniform(0.5, 0.6) if title_pos == "top" else r.uniform(0.35, 0.5),
        horizon=r.uniform(0.6, 0.74),
        tilt=r.uniform(-0.2, 0.2),
        mirror=r.random() < 0.5,
        title_pos=title_pos,
    )


def _background(s: int, style: GenreStyle, comp: Composition) -> Image.Image:
    """An s×s gradient between the style's two background colours (computed at 1/4 size: it is smooth)."""
    n = max(8, s // 4)
    axis = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if style.background_kind == "radial":
        dx, dy = axis[None, :] - comp.focus_x, axis[:, None] - 0.45
        t = np.clip(np.sqrt(dx * dx + dy * dy) / 0.75, 0.0, 1.0)
    elif style.background_kind == "diagonal":
        t = (axis[None, :] + axis[:, None]) / 2
    else:
        t = np.broadcast_to(axis[:, None], (n, n))
    c0, c1 = (np.array(rgba(c)[:3], dtype=np.float32) for c in style.background)
    small = np.clip(c0 + (c1 - c0) * t[..., None] + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((s, s), Image.Resampling.BILINEAR)


def _paint(s: int, style: GenreStyle, comp: Composition, rnd: random.Random) -> Image.Image:
    """Background + motif at s×s (no text)."""
    img = _background(s, style, comp)
    PAINTERS[style.motif](ImageDraw.Draw(img, "RGBA"), s, style, comp, rnd)
    return img


def _badge(img: Image.Image, genre: str, seed: int, box: tuple[int, int, int]) -> None:
    """A round inset in a secondary genre's style: the cover says 'Horror, also Comedy' at a glance."""
    x, y, d = box
    style = style_for_genre(genre)
    inset = _paint(d, style, Composition(focus_y=0.45, horizon=0.62), random.Random(seed))
    mask = Image.new("L", (d, d), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, d - 1, d - 1], fill=255)
    img.paste(inset, (x, y), mask)
    ImageDraw.Draw(img).ellipse(
        [x, y, x + d - 1, y + d - 1], outline=rgba(style.accent), width=max(2, d // 12)
    )


def _draw_title(img: Image.Image, text: str, style: GenreStyle, comp: Composition, rule: str | None) -> None:
    s = img.width
    text = text.upper() if style.uppercase else text
    margin, width = 0.07 * s, 0.86 * s
    font, lines = fit_title(
        text, style.font, width, 0.34 * s, max(8, int(0.15 * s)), max(7 * SUPERSAMPLE, s // 16)
    )
    px = font.size if isinstance(font, ImageFont.FreeTypeFont) else int(0.1 * s)
    line_h = px * 1.12
    block = line_h * len(lines)
    top = 0.05 * s if comp.title_pos == "top" else 0.95 * s - block
    d = ImageDraw.Draw(img, "RGBA")
    if style.band_alpha:
        y0, y1 = (0.0, top + block + 0.04 * s) if comp.title_pos == "top" else (top - 0.04 * s, float(s))
        for k in range(4):  # soft-edged band behind the type
            inset = k * 0.012 * s
            edge0, edge1 = (y0, y1 - inset) if comp.title_pos == "top" else (y0 + inset, y1)
            d.rectangle([0, edge0, s, edge1], fill=rgba(style.outline, style.band_alpha // 4))
    stroke = max(1, px // 12)
    for i, line in enumerate(lines):
        y = top + i * line_h
        x = margin if style.align == "left" else (s - font.getlength(line)) / 2
        d.text(
            (x, y),
            line,
            font=font,
            fill=rgba(style.ink),
            stroke_width=stroke,
            stroke_fill=rgba(style.outline),
        )
    if rule is not None:
        ry = top + block + 0.01 * s if comp.title_pos == "top" else top - 0.025 * s
        x0 = margin if style.align == "left" else 0.3 * s
        d.rectangle([x0, ry, x0 + 0.4 * s, ry + 0.014 * s], fill=rgba(rule))


def render_cover(
    item_id: str,
    title: str,
    genres: Sequence[str],
    year: int | None = None,
    size: int = 256,
    variant: int = 0,
) -> Image.Image:
    """One RGB cover of size×size; the same arguments always give the same pixels on one machine."""
    size, variant = check_size(size), check_variant(variant)
    genres = [genres] if isinstance(genres, str) else genres  # one genre name, not its letters
    genres = [str(g) for g in genres if str(g)] or ["unknown"]
    style = style_for_genre(genres[0])
    comp = composition(title, variant, style)
    seed = stable_int("detail", item_id, variant)
    s = size * SUPERSAMPLE
    img = _paint(s, style, comp, random.Random(seed))
    if comp.mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if style.grain:
        noise = np.random.default_rng(seed).normal(0.0, style.grain, (s, s, 1)).astype(np.float32)
        img = Image.fromarray(
            np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB"
        )
    secondary = [g for g in dict.fromkeys(genres[1:]) if style_for_genre(g) is not style]
    d, pad = int(0.2 * s), int(0.04 * s)
    badge_y = s - pad - d if comp.title_pos == "top" else pad
    if secondary:
        _badge(img, secondary[0], seed + 1, (pad, badge_y, d))
    text = display_title(title)
    if text:
        rule = style_for_genre(secondary[1]).accent if len(secondary) > 1 else None
        _draw_title(img, text, style, comp, rule)
    if year is not None and not pd.isna(year) and size >= 96:
        font = get_font(style.font, int(0.06 * s))
        label = str(int(year))
        x = s - pad - font.getlength(label)
        y = badge_y + (d - font.size) / 2 if isinstance(font, ImageFont.FreeTypeFont) else badge_y
        ImageDraw.Draw(img).text(
            (x, y),
            label,
            font=font,
            fill=rgba(style.ink),
            stroke_width=max(1, s // 128),
            stroke_fill=rgba(style.outline),
        )
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ------------------------------------------------------------------------------------------------ batch/disk
def item_genres(value: object) -> tuple[str, ...]:
    """Genres from an items-table cell: a tuple/list (the schema), a '|'-joined string, or missing → ()."""
    if isinstance(value, str):
        return tuple(g for g in value.split("|") if g)
    if isinstance(value, Sequence | np.ndarray):
        return tuple(str(g) for g in value if str(g))
    return ()


def items_genres(items: pd.DataFrame) -> list[tuple[str, ...]]:
    """Genre tuples of an items table (primary first); items without genres get ('unknown',)."""
    return [item_genres(g) or ("unknown",) for g in items["genres"]]


def primary_genres(items: pd.DataFrame) -> list[str]:
    return [primary_genre(g) for g in items_genres(items)]


def cover_filename(item_id: str, variant: int = 0) -> str:
    """'{item_id}.png' for the reference cover, '{item_id}.v{variant}.png' for augmentation variants."""
    item_id = check_item_id(item_id)
    return f"{item_id}.png" if variant == 0 else f"{item_id}.v{variant}.png"


def _is_complete(path: Path, size: int) -> bool:
    """A PNG of the requested size that decodes: what a finished earlier run leaves behind."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.size != (size, size):
                return False
            im.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def save_png_atomic(img: Image.Image, path: Path) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a half-written PNG."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            img.save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_covers(
    items: pd.DataFrame,
    out_dir: Path,
    size: int,
    limit: int | None = None,
    variant: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Render and save covers for an items table (schema of `icg.data.records`), resuming an earlier run.

    Returns item_id, title, primary_genre, path and `rendered` (False where a complete file was kept).
    All ids are checked before anything is written, so a bad id fails fast instead of half-way through.
    """
    from tqdm.auto import tqdm

    size, variant = check_size(size), check_variant(variant)
    for column in ("item_id", "title", "genres"):
        if column not in items.columns:
            raise ValueError(f"items table lacks column '{column}' (have {list(items.columns)})")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        items = items.iloc[:limit]
    ids = [str(i) for i in items["item_id"]]
    names = [cover_filename(i, variant) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate item ids would overwrite each other's covers: {dupes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    years = items["year"] if "year" in items.columns else pd.Series([None] * len(items), index=items.index)
    rows, done, start = [], 0, time.perf_counter()
    bar = tqdm(total=len(ids), desc=f"covers {size}px", unit="cover", disable=not progress)
    for item_id, name, title, genres, year in zip(
        ids, names, items["title"], items["genres"], years, strict=True
    ):
        title = "" if title is None or pd.isna(title) else str(title)
        genres = item_genres(genres)
        path = out_dir / name
        fresh = not _is_complete(path, size)
        if fresh:
            year = None if year is None or pd.isna(year) else int(year)
            save_png_atomic(render_cover(item_id, title, genres, year, size, variant), path)
            done += 1
        rows.append((item_id, title, genres[0] if genres else "unknown", str(path), fresh))
        bar.update(1)
    bar.close()
    logger.info(
        "covers: %d rendered, %d kept from an earlier run, %.1fs, in %s",
        done,
        len(rows) - done,
        time.perf_counter() - start,
        out_dir,
    )
    return pd.DataFrame(rows, columns=["item_id", "title", "primary_genre", "path", "rendered"])
