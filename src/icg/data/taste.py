"""Stated genre taste in a profile sentence: written from ratings, read back as a vector (issue 18).

    "likes horror, sci-fi and war; dislikes romance and musical; a 24-year-old male technician"

`taste_clauses` writes the clauses from a user's per-genre taste scores (strongest first); `parse_taste` reads
any sentence with "likes/loves/enjoys/prefers …" and "dislikes/hates/avoids …" clauses into a (G,) vector over
a genre vocabulary: +w for liked, −w for disliked genres, w = 1 for the first named genre of a clause and
smaller for later ones (the writer lists the strongest first), 0 for genres not named. A person can write the
same words ("loves horror and sci-fi"), so a cold-start user states taste through the same path.
Genre names match case-insensitively as whole words; "science fiction" and "scifi" read as sci-fi, "noir" as
film-noir, "children" and "kids" as children's. "a horror fan" (or "… lover", "… buff", "… enthusiast", "a
horror and sci-fi fan") reads as liking the genres named before the word, as a cold-start user may write it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

LIKE_WORDS = ("likes", "like", "loves", "love", "enjoys", "enjoy", "prefers", "prefer", "fan of")
DISLIKE_WORDS = ("dislikes", "dislike", "hates", "hate", "avoids", "avoid", "not into")
_ALIASES = {
    "science fiction": "sci-fi", "scifi": "sci-fi", "sci fi": "sci-fi", "noir": "film-noir",
    "film noir": "film-noir", "children": "children's", "kids": "children's", "childrens": "children's",
    "animated": "animation", "documentaries": "documentary", "westerns": "western", "musicals": "musical",
    "thrillers": "thriller", "comedies": "comedy", "dramas": "drama", "mysteries": "mystery",
    "romantic": "romance", "war movies": "war", "horror movies": "horror",
}  # fmt: skip
FAN_WORDS = ("fan", "fans", "lover", "lovers", "buff", "buffs", "enthusiast", "enthusiasts")
_CLAUSE = re.compile(
    r"\b("
    + "|".join(re.escape(w) for w in sorted(DISLIKE_WORDS + LIKE_WORDS, key=len, reverse=True))
    + r")\b"
)


def taste_clauses(scores: pd.Series, n_likes: int = 5, n_dislikes: int = 5) -> str:
    """'likes a, b and c; dislikes d' from genre → score (positive = liked); '' when no genre has a sign."""
    ordered = scores.sort_values(kind="stable")
    likes = [str(g) for g, v in ordered.iloc[::-1].items() if v > 0][:n_likes]
    dislikes = [str(g) for g, v in ordered.items() if v < 0][:n_dislikes]
    parts = [
        f"likes {join_words(likes)}" if likes else "",
        f"dislikes {join_words(dislikes)}" if dislikes else "",
    ]
    return "; ".join(p for p in parts if p)


def join_words(words: Sequence[str]) -> str:
    """('Action', 'Comedy', 'War') → 'action, comedy and war' (the context teacher's style)."""
    words = [w.lower() for w in words]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _genre_pattern(genres: Sequence[str]) -> tuple[re.Pattern[str], dict[str, int]]:
    index = {g.lower(): n for n, g in enumerate(genres)}
    names = {**{g: g for g in index}, **{a: g for a, g in _ALIASES.items() if g in index}}
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(r"(?<![\w-])(" + alternatives + r")(?![\w-])"), {n: index[g] for n, g in names.items()}


def _fan_phrases(pattern: re.Pattern[str], text: str) -> list[list[str]]:
    """Genre lists written before a fan word ("horror and sci-fi fan"), each in the order written."""
    genre = pattern.pattern
    run = re.compile(
        genre
        + r"(?:\s*(?:,|and|&|/|or)\s*"
        + genre
        + r")*\s+(?:(?:movie|film)s?\s+)?(?:"
        + "|".join(FAN_WORDS)
        + r")\b"
    )
    return [[h.group(1) for h in pattern.finditer(m.group(0))] for m in run.finditer(text)]


def parse_taste(texts: Sequence[str], genres: Sequence[str], decay: float = 1 / 6) -> Tensor:
    """Profile sentences → (B, G) float32 stated taste over `genres` (see the module docstring).

    Within one clause the k-th named genre (from 0) weighs max(1 − k·decay, decay); a genre named twice keeps
    its last clause's sign."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of profile sentences, not one string")
    if not genres:
        raise ValueError("parse_taste needs a non-empty genre vocabulary")
    pattern, column = _genre_pattern(genres)
    out = torch.zeros(len(texts), len(genres))
    for row, text in enumerate(texts):
        lowered = str(text).lower()
        for named in _fan_phrases(pattern, lowered):  # clauses below override a genre they name again
            for k, name in enumerate(named):
                out[row, column[name]] = max(1.0 - k * decay, decay)
        marks = list(_CLAUSE.finditer(lowered))
        for n, mark in enumerate(marks):
            end = marks[n + 1].start() if n + 1 < len(marks) else len(lowered)
            clause = lowered[mark.end() : end].split(";")[0]
            sign = -1.0 if mark.group(1) in DISLIKE_WORDS else 1.0
            for k, hit in enumerate(pattern.finditer(clause)):
                out[row, column[hit.group(1)]] = sign * max(1.0 - k * decay, decay)
    return out
