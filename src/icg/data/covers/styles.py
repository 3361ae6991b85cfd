"""What each genre looks like: a style table (data); `motifs.py` turns a motif kind into shapes.

A `GenreStyle` is plain data (colours, background kind, motif kind, type face); the painters in motifs.py
turn a motif kind into shapes. Colours are chosen so that every genre occupies its own region of colour
space (the genre probe in `genre_probe.py` checks that a colour histogram alone recovers the primary genre).
"""

from __future__ import annotations

import colorsys
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from PIL import ImageColor

RGBA = tuple[int, int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class GenreStyle:
    """The look of one genre: background gradient, motif, motif colours and title typography."""

    name: str
    background: tuple[str, str]  # gradient from (top / centre) to (bottom / edge), hex colours
    background_kind: str  # "linear" | "radial" | "diagonal"
    palette: tuple[str, ...]  # motif colours, most prominent first
    accent: str  # this genre's colour when it is a secondary genre (badge ring, rule under the title)
    ink: str  # title colour
    outline: str  # title stroke colour
    motif: str  # key into motifs.PAINTERS
    font: str = "sans"  # "sans" | "serif" | "condensed" | "mono"
    uppercase: bool = False
    title_positions: tuple[str, ...] = ("top", "bottom")
    align: str = "center"  # "center" | "left"
    grain: float = 0.0  # film-grain amplitude (0-255 units)
    band_alpha: int = 110  # opacity of the soft band behind the title (0 disables it)


@dataclass(frozen=True)
class Composition:
    """Layout knobs that vary between items of one genre (derived from the title hash and the variant)."""

    focus_x: float = 0.5  # horizontal centre of the main motif, fraction of the width
    focus_y: float = 0.5
    horizon: float = 0.66  # ground line, fraction of the height
    tilt: float = 0.0  # angle of diagonal elements, radians
    mirror: bool = False
    title_pos: str = "bottom"


def stable_int(*parts: object) -> int:
    """A 64-bit integer from sha256 of the parts: stable across runs and machines, unlike hash()."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@lru_cache(maxsize=512)
def rgba(colour: str, alpha: int = 255) -> RGBA:
    """'#rrggbb' → (r, g, b, alpha)."""
    r, g, b = ImageColor.getrgb(colour)[:3]
    return (r, g, b, alpha)


# --------------------------------------------------------------------------------------------------- shapes

# ---------------------------------------------------------------------------------------------- style table
_S = GenreStyle
GENRE_STYLES: dict[str, GenreStyle] = {
    s.name: s
    for s in (
        _S("Action", ("#14213a", "#e0601a"), "linear",
           ("#ff9a1f", "#ffd23a", "#fff6d8", "#cfd8e0", "#1a1414"),
           "#ff8c1a", "#ffffff", "#101010", "burst", "condensed", True, ("top",)),
        _S("Adventure", ("#3f9cc0", "#f0c070"), "linear", ("#1f5e3a", "#2f7d46", "#4f9a52", "#ffe07a"),
           "#2f9d55", "#fff8e0", "#1b3a24", "mountains", "serif", True, ("top",)),
        _S("Animation", ("#00aee0", "#8ce4f6"), "linear", ("#f03838", "#ffdc00", "#5cc83c", "#ffffff"),
           "#ffdc00", "#ffdc00", "#26144a", "cartoon", "sans", False, ("top",), band_alpha=0),
        _S("Children's", ("#ffe4f2", "#d4f2ff"), "linear",
           ("#ffb8cc", "#ffd9a0", "#fff2a8", "#c4efc4", "#d2c4ff"),
           "#ffb8cc", "#7a4aa8", "#ffffff", "bubbles", "sans", False, ("top",), band_alpha=0),
        _S("Comedy", ("#ffd83c", "#ffa814"), "radial", ("#f04a24", "#fff3b0", "#3a1c08", "#ffffff"),
           "#ffd83c", "#3a1c08", "#fff3b0", "dots", "sans", False, ("top", "bottom"), band_alpha=0),
        _S("Crime", ("#08142c", "#183a64"), "linear", ("#f5c800", "#111111", "#050a16", "#e02828", "#2850f0"),
           "#f5c800", "#f5c800", "#000000", "tape", "condensed", True, ("bottom",)),
        _S("Documentary", ("#ecebe6", "#c9c7c0"), "linear", ("#141414", "#b83226", "#8a8a86"),
           "#b83226", "#141414", "#ecebe6", "frames", "sans", False, ("top", "bottom"), "left", 10.0, 0),
        _S("Drama", ("#3a4a6e", "#8a96b0"), "radial", ("#f0b860", "#0e1220", "#d8e0f0"),
           "#5a78c0", "#f6efe0", "#0e1220", "silhouette", "serif", False, ("top",)),
        _S("Fantasy", ("#3c2270", "#b48ee0"), "linear", ("#1c0c40", "#ffd47a"),
           "#b48ee0", "#ffe6a8", "#1c0c40", "castle", "serif", False, ("top",)),
        _S("Film-Noir", ("#0e0e0e", "#5a5a5a"), "diagonal", ("#c8c8c8", "#000000", "#ffffff"),
           "#9a9a9a", "#f0f0f0", "#000000", "blinds", "serif", True, ("top",), "left", 14.0),
        _S("Horror", ("#000000", "#5c0008"), "linear", ("#9a0010", "#cc1020", "#ece4cc", "#060000"),
           "#cc1020", "#e8e0c8", "#000000", "drips", "serif", True, ("bottom",), grain=8.0),
        _S("Musical", ("#8c0868", "#e03c96"), "radial", ("#ffd25a", "#ffffff", "#3c0228"),
           "#e03c96", "#ffe27a", "#3c0228", "spotlights", "serif", False, ("top",)),
        _S("Mystery", ("#081e10", "#24502e"), "radial", ("#b4c8b0", "#c8a03c", "#040c06"),
           "#3c8c50", "#dce8d4", "#040c06", "fog", "serif", False, ("top", "bottom")),
        _S("Romance", ("#ffc4d2", "#e0587a"), "radial", ("#d81c44", "#b01030", "#fff0f4"),
           "#ff6e96", "#ffffff", "#a0102e", "hearts", "serif", False, ("top", "bottom"), band_alpha=0),
        _S("Sci-Fi", ("#03020e", "#2c0a5a"), "linear", ("#00e4ff", "#ff2cd4", "#ffffff"),
           "#00e4ff", "#00e4ff", "#03020e", "grid", "mono", True, ("top",)),
        _S("Thriller", ("#022428", "#0c5660"), "radial", ("#e42828", "#e8f4f4"),
           "#e42828", "#ffffff", "#022428", "crosshair", "condensed", True, ("top", "bottom")),
        _S("War", ("#3c4220", "#8c8a58"), "linear", ("#56602c", "#6c5a38", "#2a2614", "#e0782c", "#bcbcb0"),
           "#6c7a30", "#f0ead0", "#2a2614", "camo", "condensed", True, ("top",), grain=6.0),
        _S("Western", ("#f6cc88", "#e07c3c"), "linear", ("#fff0c4", "#a8582c", "#48281a", "#c87838"),
           "#d08a40", "#48281a", "#fff0c4", "desert", "serif", True, ("top",), grain=9.0, band_alpha=0),
        _S("unknown", ("#7c8088", "#a4a8b0"), "radial", ("#ffffff", "#d0d4dc", "#50545c"),
           "#a4a8b0", "#ffffff", "#30343c", "shapes", "sans", False, ("top", "bottom")),
    )
}  # fmt: skip

_KEYS = {re.sub(r"[^a-z]", "", name.lower()): name for name in GENRE_STYLES}
_KEYS.update(
    {"children": "Children's", "kids": "Children's", "scifi": "Sci-Fi", "sciencefiction": "Sci-Fi",
     "noir": "Film-Noir", "nogenreslisted": "unknown", "": "unknown"}
)  # fmt: skip
_FALLBACK_MOTIFS = ("shapes", "dots", "bubbles", "mountains", "burst", "crosshair", "hearts", "castle")


def _hsv_hex(h: float, sat: float, val: float) -> str:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(1.0, sat), min(1.0, val))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


@lru_cache(maxsize=256)
def style_for_genre(genre: str) -> GenreStyle:
    """The table's style for a known genre (case and punctuation ignored), else one derived from a hash.

    Unknown genres (PixelRec tags, platform categories) get a stable hue and motif from sha256 of the name, so
    the same tag always looks the same without anyone having to extend the table.
    """
    name = _KEYS.get(re.sub(r"[^a-z]", "", genre.lower()))
    if name is not None:
        return GENRE_STYLES[name]
    h = stable_int("genre-style", genre)
    hue, dark = (h % 360) / 360.0, (h >> 9) % 2 == 0
    top, bottom = (_hsv_hex(hue, 0.7, 0.2), _hsv_hex(hue + 0.05, 0.75, 0.55)) if dark else (
        _hsv_hex(hue, 0.35, 0.95), _hsv_hex(hue + 0.05, 0.6, 0.8))  # fmt: skip
    palette = (
        _hsv_hex(hue + 0.5, 0.8, 0.95),
        _hsv_hex(hue + 0.1, 0.5, 1.0),
        _hsv_hex(hue, 0.9, 0.3),
        _hsv_hex(hue + 0.15, 0.9, 0.9),
        _hsv_hex(hue - 0.1, 0.6, 0.5),
    )  # every painter finds 5 colours
    return GenreStyle(
        name=genre,
        background=(top, bottom),
        background_kind=("linear", "radial", "diagonal")[(h >> 12) % 3],
        palette=palette,
        accent=palette[0],
        ink="#ffffff" if dark else _hsv_hex(hue, 0.9, 0.25),
        outline="#000000" if dark else "#ffffff",
        motif=_FALLBACK_MOTIFS[(h >> 16) % len(_FALLBACK_MOTIFS)],
    )
