"""PMG baseline (Shen et al. 2024; paper §4.2): a user's history → preference keywords in the prompt.

PMG turns what a user interacted with into text and asks a pre-trained LLM for *preference keywords*
("dark, horror, suspense"), which then steer the image generator. In this library the keywords are appended
to the item's explicit prompt: `pipe(items, [CoverUser(u)], adapter_scale=0.0, prompt_suffixes=[pmg_suffix(
keywords)])` — ICG's adapter is off, so only the keywords personalize the cover.

**The paper's PMG uses an LLM to write the keywords; the mini preset does not.** It has no pretrained LLM, so
`preference_keywords` applies a documented rule to the user's history instead:
  1. history = the user's ratings of *allowed* items only (for evaluation: the training split of
     `split_items(len(items), 0, 0.1, 0.1)`, the mini models' item split, see `train_item_ids`), so no
     held-out item ever shapes the keywords; μ = the user's mean rating over that history;
  2. liked genres: the liked items are those rated above μ, each weighted by rating − μ; a genre's lift is
     its weighted share among the liked items minus its share among all users' ratings of allowed items
     (`genre_base_rates`): what this user favours more than people in general. Genres with a positive lift,
     highest first (ties: alphabetical), at most n − n // 2 of them;
  3. title words: the content words (lower-cased, ≥ 3 letters, no stopwords, no digits, not a genre name) of
     the titles of liked items (rating > μ); a word counts once per title, weighted by rating − μ, and must
     occur in ≥ 2 liked titles; heaviest first (ties: alphabetical), filling the remaining slots;
  4. free slots left over are filled with further liked genres; all keywords lower-cased and deduplicated.
The result depends only on ratings of allowed items (the user's for the keywords, everyone's for the base
rates): row order and anything about non-allowed items leave it unchanged.

For the real preset, `llm_preference_keywords` sends a PMG-style request built from the same history to any
text-generation callable (e.g. a chat LLM) and parses its comma-separated answer; the request text is ours,
not PMG's verbatim prompt, and no real LLM has been run through it here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection

import pandas as pd

from icg.data.covers.render import display_title, item_genres
from icg.data.records import InteractionData
from icg.data.splits import split_items
from icg.errors import DataError

logger = logging.getLogger(__name__)

MIN_TITLES_PER_WORD = 2  # a title word is a preference only when it recurs across liked titles
# English function words plus words every movie title list is full of; kept short and explicit
_STOPWORD_TEXT = """
a about after again against all also am an and any are as at be because been before being between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just let me more most my no nor not now of off on once only or other our out
over own same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
movie movies film films part story ii iii iv vi vii viii les der die das des del los las und
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z][a-z']*[a-z]|[a-z]")


def train_item_ids(data: InteractionData) -> set[str]:
    """Training-split item ids: `split_items(len(items), 0, 0.1, 0.1).train`, the mini's item split."""
    items = data.items.reset_index(drop=True)
    split = split_items(len(items), 0, 0.1, 0.1)
    return set(items["item_id"].astype(str).iloc[split.train])


def user_history(data: InteractionData, user_id: str, allowed_item_ids: Collection[str]) -> pd.DataFrame:
    """The user's ratings of allowed items with title and genres, best first.

    Columns item_id, signal, timestamp, title, genres; sorted by rating (high first), then recency (latest
    first: the current taste), then item id (string order). Empty when the user rated no allowed item; a
    `DataError` when the user has no interaction at all.
    """
    inter = data.interactions
    mine = inter.loc[inter["user_id"].astype(str) == str(user_id), ["item_id", "signal", "timestamp"]]
    if mine.empty:
        raise DataError(f"user {user_id!r} has no interactions in {data.name}")
    mine = mine.assign(item_id=mine["item_id"].astype(str))
    mine = mine.loc[mine["item_id"].isin({str(i) for i in allowed_item_ids})]
    items = data.items.assign(item_id=data.items["item_id"].astype(str))[["item_id", "title", "genres"]]
    history = mine.merge(items, on="item_id", how="left", validate="many_to_one")
    history = history.assign(genres=history["genres"].map(item_genres), title=history["title"].fillna(""))
    history = history.sort_values(["signal", "timestamp", "item_id"], ascending=[False, False, True])
    return history.reset_index(drop=True)


def title_words(title: str) -> list[str]:
    """Distinct content words of a title as the cover prints it ('Nightmare on Elm Street, A' → nightmare,
    elm, street): lower-cased, ≥ 3 letters, no stopwords or digits, in order of appearance."""
    words = _WORD.findall(display_title(str(title)).lower())
    return list(dict.fromkeys(w for w in words if len(w) >= 3 and w not in STOPWORDS))


def genre_base_rates(data: InteractionData, allowed_item_ids: Collection[str]) -> dict[str, float]:
    """Lower-case genre → share of all users' ratings of allowed items that fall on an item of that genre."""
    allowed = {str(i) for i in allowed_item_ids}
    item_ids = data.interactions["item_id"].astype(str)
    counts = item_ids[item_ids.isin(allowed)].value_counts()  # ratings per allowed item
    total = int(counts.sum())
    if total == 0:
        return {}
    genres_of = dict(
        zip(data.items["item_id"].astype(str), data.items["genres"].map(item_genres), strict=True)
    )
    rates: dict[str, float] = {}
    for item_id, count in counts.items():
        for genre in dict.fromkeys(g.lower() for g in genres_of.get(str(item_id), ())):
            rates[genre] = rates.get(genre, 0.0) + int(count)
    return {g: c / total for g, c in sorted(rates.items())}


def liked_genres(history: pd.DataFrame, base_rates: dict[str, float]) -> list[tuple[str, float]]:
    """(genre, lift) of genres the user favours: weighted share among liked items (rating > μ, weight
    rating − μ) minus the genre's base rate; positive lifts only, highest first, ties alphabetical."""
    if history.empty:
        return []
    deviation = history["signal"] - history["signal"].mean()
    liked = deviation > 0
    total = float(deviation[liked].sum())
    if total <= 0:  # every rating equal: nothing stands out
        return []
    weight: dict[str, float] = {}
    for genres, dev in zip(history.loc[liked, "genres"], deviation[liked], strict=True):
        for genre in dict.fromkeys(g.lower() for g in genres):
            weight[genre] = weight.get(genre, 0.0) + float(dev)
    lifts = {g: w / total - base_rates.get(g, 0.0) for g, w in weight.items()}
    ranked = sorted(((g, v) for g, v in lifts.items() if v > 1e-9), key=lambda gv: (-gv[1], gv[0]))
    return [(g, round(v, 6)) for g, v in ranked]


def liked_title_words(history: pd.DataFrame, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
    """(word, weight) of content words recurring in ≥ MIN_TITLES_PER_WORD liked titles (rating > μ)."""
    if history.empty:
        return []
    deviation = history["signal"] - history["signal"].mean()
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    for title, dev in zip(history["title"], deviation, strict=True):
        if dev <= 0:
            continue
        for word in title_words(title):
            if word in exclude:
                continue
            weight[word] = weight.get(word, 0.0) + float(dev)
            count[word] = count.get(word, 0) + 1
    kept = [(w, v) for w, v in weight.items() if count[w] >= MIN_TITLES_PER_WORD]
    return [(w, round(v, 6)) for w, v in sorted(kept, key=lambda wv: (-wv[1], wv[0]))]


def preference_keywords(
    data: InteractionData,
    user_id: str,
    allowed_item_ids: Collection[str],
    n: int = 5,
    base_rates: dict[str, float] | None = None,
) -> list[str]:
    """Up to `n` preference keywords of `user_id` by the module's documented rule (the mini's stand-in for
    PMG's LLM): liked genres, then recurring liked title words, then further genres; lower-case, distinct.

    Only ratings of `allowed_item_ids` are read (pass `train_item_ids(data)` for evaluation). A user with no
    allowed history gets [] (and a warning): the cover then gets no suffix. `base_rates` (from
    `genre_base_rates(data, allowed_item_ids)`) may be passed to compute them once for many users.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    history = user_history(data, user_id, allowed_item_ids)
    if history.empty:
        logger.warning("user %s rated no allowed item: no PMG keywords", user_id)
        return []
    if base_rates is None:
        base_rates = genre_base_rates(data, allowed_item_ids)
    genres = [g for g, _ in liked_genres(history, base_rates)]
    all_genres = {g.lower() for gs in history["genres"] for g in gs}
    words = [w for w, _ in liked_title_words(history, exclude=all_genres)]
    n_genres = n - n // 2
    chosen = genres[:n_genres] + words[: n - min(n_genres, len(genres))]
    chosen += genres[n_genres:]  # words ran short: more genres
    return list(dict.fromkeys(chosen))[:n]


def pmg_suffix(keywords: list[str]) -> str:
    """The prompt suffix of a user's keywords: 'horror, thriller, night' ('' for none)."""
    return ", ".join(k.strip().lower() for k in keywords if k.strip())


# ----------------------------------------------------------------------------------------- real preset: LLM
def keyword_request(
    data: InteractionData, user_id: str, allowed_item_ids: Collection[str], n: int = 5, max_items: int = 20
) -> str:
    """PMG-style LLM request: the user's best-rated allowed items as text; asks for `n` keywords."""
    history = user_history(data, user_id, allowed_item_ids).head(max_items)
    lines = [
        f"- {display_title(t) or t} ({', '.join(g) or 'unknown genre'}), rated {r:g}"
        for t, g, r in zip(history["title"], history["genres"], history["signal"], strict=True)
    ]
    return (
        "A user watched and rated these movies (best first):\n"
        + "\n".join(lines)
        + f"\nWrite {n} short keywords describing the visual style and themes this user prefers in movie "
        "posters. Answer with the keywords only, separated by commas."
    )


def parse_keywords(text: str, n: int = 5) -> list[str]:
    """An LLM's answer → up to `n` distinct lower-case keywords (commas, semicolons or new lines split)."""
    parts = (re.sub(r"^[\s\-*\d.)]+", "", p).strip(" .\"'").lower() for p in re.split(r"[,;\n]", text))
    return list(dict.fromkeys(p for p in parts if p))[:n]


def llm_preference_keywords(
    generate: Callable[[str], str],
    data: InteractionData,
    user_id: str,
    allowed_item_ids: Collection[str],
    n: int = 5,
) -> list[str]:
    """PMG's way (real preset): `generate` (request → answer text, e.g. a chat LLM) writes the keywords."""
    return parse_keywords(generate(keyword_request(data, user_id, allowed_item_ids, n)), n)
