"""Item captions: an item's title with its genres ("Toy Story, an animation, children's and comedy movie").

Template 0 is the evaluation text; the mini CLIP trains on all of them. `genre_prompt` is the zero-shot
prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from icg.data.covers.render import display_title

# Template 0 is the evaluation text; training draws one of all of them per pair.
TEXT_TEMPLATES: tuple[str, ...] = (
    "{title}, {article} {genres} movie",
    "{article} {genres} movie called {title}",
    "the cover of {title}, {article} {genres} film",
    "{genres}: {title}",
    "{article} {genres} movie",
    "{primary_article} {primary} movie",  # the zero-shot prompt's form: the primary genre sets the style
)
GENRE_PROMPT = "{article} {genre} movie"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: Sequence[str]) -> str:
    """('Drama',) → 'drama'; ('Action', 'Comedy', 'War') → 'action, comedy and war'."""
    words = [w.lower() for w in words] or ["unknown"]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def item_text(title: str, genres: Sequence[str], template: int = 0) -> str:
    """The caption of one item under one of `TEXT_TEMPLATES` (title as the cover prints it)."""
    if not 0 <= template < len(TEXT_TEMPLATES):
        raise ValueError(f"template must be in [0, {len(TEXT_TEMPLATES)}), got {template}")
    joined, primary = _join(genres), _join(genres[:1])
    return TEXT_TEMPLATES[template].format(
        title=display_title(title) or "untitled",
        genres=joined,
        article=_article(joined),
        primary=primary,
        primary_article=_article(primary),
    )


def genre_prompt(genre: str) -> str:
    """Zero-shot prompt for one genre: 'an action movie'."""
    word = genre.lower()
    return GENRE_PROMPT.format(article=_article(word), genre=word)
