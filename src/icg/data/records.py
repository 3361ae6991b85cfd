"""One record schema for every data source (MovieLens, PixelRec, a platform's own logs).

Three pandas tables travel together in an `InteractionData`:

- users:        user_id (str), age (Int64, nullable), gender (str|None), occupation (str|None),
                zip (str|None), profile (str: a sentence such as "a 24-year-old male technician")
- items:        item_id (str), title (str), year (Int64, nullable), genres (tuple[str, ...], primary first),
                cover_path (str|None: an existing cover image, or None when the source has none)
- interactions: user_id (str), item_id (str), signal (float64: rating, views, likes or 1.0 for a click),
                timestamp (int64 seconds; 0 when unknown)

Ids are strings everywhere so that sources with numeric and alphanumeric ids mix without surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from icg.errors import DataError

USER_COLUMNS: tuple[str, ...] = ("user_id", "age", "gender", "occupation", "zip", "profile")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "year", "genres", "cover_path")
INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "signal", "timestamp")

_GENDER_WORDS = {"M": "male", "F": "female", "m": "male", "f": "female"}


@dataclass(frozen=True)
class InteractionData:
    """Users, items and interactions of one dataset, in the shared schema."""

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    signal_name: str = "rating"
    source: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table, columns in (
            ("users", USER_COLUMNS),
            ("items", ITEM_COLUMNS),
            ("interactions", INTERACTION_COLUMNS),
        ):
            missing = [c for c in columns if c not in getattr(self, table).columns]
            if missing:
                raise DataError(
                    f"{self.name} {table} table lacks columns {missing}",
                    path=self.source,
                    expected=f"columns {list(columns)}",
                )

    def item_by_id(self, item_id: str) -> pd.Series:
        """The item row for `item_id`, or a DataError naming the dataset."""
        rows = self.items.loc[self.items["item_id"] == str(item_id)]
        if rows.empty:
            raise DataError(f"unknown item id '{item_id}' in {self.name}", path=self.source)
        return rows.iloc[0]

    def user_by_id(self, user_id: str) -> pd.Series:
        """The user row for `user_id`, or a DataError naming the dataset."""
        rows = self.users.loc[self.users["user_id"] == str(user_id)]
        if rows.empty:
            raise DataError(f"unknown user id '{user_id}' in {self.name}", path=self.source)
        return rows.iloc[0]


def profile_sentence(age: object, gender: object, occupation: object) -> str:
    """A short natural-language profile, e.g. "a 24-year-old male technician".

    Missing fields are left out; with none at all the sentence says so, so that text encoders never see "nan".
    """
    words: list[str] = []
    if age is not None and not pd.isna(age):
        words.append(f"{int(age)}-year-old")
    if gender is not None and not pd.isna(gender) and str(gender):
        words.append(_GENDER_WORDS.get(str(gender), str(gender).lower()))
    if occupation is not None and not pd.isna(occupation) and str(occupation) not in ("", "none", "other"):
        words.append(str(occupation).replace("_", " "))
    else:
        words.append("person" if words else "")
    text = " ".join(w for w in words if w)
    if not text:
        return "a user with no profile data"
    article = "an" if text[0] in "aeiou8" or text.startswith("11-") or text.startswith("18-") else "a"
    return f"{article} {text}"


def add_profiles(users: pd.DataFrame) -> pd.DataFrame:
    """Fill the `profile` column from age/gender/occupation (vectorized over unique combinations)."""
    users = users.copy()
    fields = users[["age", "gender", "occupation"]]
    # None (not NaN) marks missing values: NaN != NaN would make equal combinations miss the lookup.
    keys = fields.astype("object").where(fields.notna(), None)
    combos = keys.drop_duplicates()
    sentences = {row: profile_sentence(*row) for row in combos.itertuples(index=False, name=None)}
    users["profile"] = [sentences[row] for row in keys.itertuples(index=False, name=None)]
    return users


def empty_users(user_ids: pd.Series) -> pd.DataFrame:
    """A users table for sources without user features: ids only, profile says so."""
    ids = pd.Series(pd.unique(user_ids.astype(str)), name="user_id")
    return pd.DataFrame(
        {
            "user_id": ids,
            "age": pd.array([pd.NA] * len(ids), dtype="Int64"),
            "gender": None,
            "occupation": None,
            "zip": None,
            "profile": "a user with no profile data",
        }
    )


def split_genres(values: pd.Series, sep: str) -> pd.Series:
    """Split a genre string column into tuples (primary genre first); empty or missing → ()."""
    filled = values.fillna("").astype(str)
    return filled.map(lambda s: tuple(g for g in s.split(sep) if g and g != "(no genres listed)"))


def primary_genre(genres: tuple[str, ...]) -> str:
    """The first genre, or 'unknown' when there is none."""
    return genres[0] if len(genres) else "unknown"
