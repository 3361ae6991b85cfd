"""The template teacher: the mini preset's stand-in for an MLLM-written explicit prompt.

The real preset's explicit prompt P_exp comes from Qwen2.5-VL reading the reference cover and the title.
The mini preset has no pretrained MLLM, so its tiny Qwen2.5-VL learns to write a *documented template*:

    "a {genres} movie poster in {palette words}"

built from the item's (first three) genres and colour words of its primary genre's cover style. No
MLLM knowledge is involved; everything that shows a mini prompt says it was learned from this template.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import pandas as pd
from PIL import ImageColor

from icg.data.covers.render import item_genres
from icg.data.covers.styles import style_for_genre

TEMPLATE_TEACHER = "template-teacher"


def join_words(words: Sequence[str]) -> str:
    """('Drama',) → 'drama'; ('Action', 'Comedy', 'War') → 'action, comedy and war'."""
    words = [w.lower() for w in words] or ["unknown"]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def colour_name(hex_colour: str) -> str:
    """'#14213a' → 'dark blue': a coarse HSV name, enough for a caption."""
    r, g, b = (c / 255 for c in ImageColor.getrgb(hex_colour)[:3])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.18:
        return "black"
    if s < 0.15:
        return "white" if v > 0.85 else "grey"
    bounds = ((15, "red"), (40, "orange"), (65, "yellow"), (160, "green"), (200, "cyan"), (255, "blue"))
    bounds += ((290, "purple"), (335, "pink"), (361, "red"))
    name = next(n for limit, n in bounds if h * 360 < limit)
    return f"dark {name}" if v < 0.45 else f"pale {name}" if s < 0.4 and v > 0.8 else name


def template_caption(genres: tuple[str, ...]) -> str:
    """'a {genres} movie poster in {palette words}' (colours of the primary genre's style)."""
    genres = genres or ("unknown",)
    style = style_for_genre(genres[0])
    colours = list(dict.fromkeys(colour_name(c) for c in (*style.background, style.palette[0])))
    words = join_words([g.lower() for g in genres[:3]])
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words} movie poster in {join_words(colours)}"


def explicit_prompt_teacher(title: str, genres: tuple[str, ...]) -> str:
    """The mini's explicit-prompt target: `template_caption(genres)`.

    `title` is accepted (the real MLLM reads it) but not written into the target: a first mini trained on
    '{title}, ' + caption memorised training titles instead of copying them (0 of 50 held-out titles right,
    e.g. "Dead Man Walking" → "Pil a, …"), so the prompt carried a garbled title. The pipeline has the title
    anyway; the mini's prompt describes what the cover shows: genres and palette.
    """
    del title
    return template_caption(genres)


def template_captions(items: pd.DataFrame) -> dict[str, str]:
    """Caption per item id from the template teacher (stand-in for the context encoder's explicit prompt)."""
    return {
        str(i): template_caption(item_genres(g))
        for i, g in zip(items["item_id"], items["genres"], strict=True)
    }
