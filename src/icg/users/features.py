"""Feature vocabularies for the two-tower user encoder, and the profile-only (cold-start) path.

Every vocabulary keeps index 0 for `<unk>`: an id, occupation or word never seen in training maps there, and
training drops ids and profile fields to `<unk>` now and then, so that slot holds a learned "unknown" vector.
Bag features (genres, title words) pad with one extra row, `vocab.size`, which EmbeddingBag leaves out of the
mean.

Profile sentences ("a 24-year-old male technician") are parsed by `parse_profile_sentence`:
- age: the first "<n>-year-old", "<n> years old", "<n> y/o", "aged <n>" or "age: <n>"; 0 ≤ n ≤ 120, else a
  ValueError;
- gender: the first of male/man/boy/guy/gentleman or female/woman/girl/lady as a whole word;
- occupation: the longest vocabulary occupation found as whole words ('_' and '/' read as spaces).
Anything not found is None and becomes `<unk>`. For example "person", which `profile_sentence` writes for the
"other" and "none" occupations, is not an occupation, so such sentences encode their occupation as `<unk>`.
A stated genre taste ("loves horror and sci-fi", "a horror fan") is read by `FeatureVocab.stated_taste` with
`icg.data.taste.parse_taste` over this vocabulary's genres.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.atomic import write_text_atomic
from icg.data.records import InteractionData
from icg.data.taste import parse_taste
from icg.errors import DataError

UNK = "<unk>"
VOCAB_FORMAT = "icg.users.vocab/1"
# Age bucket lower edges (ml-1m's codes): <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_EDGES: tuple[int, ...] = (18, 25, 35, 45, 50, 56)
MAX_AGE = 120

_GENDER_SYNONYMS = {
    "m": "male", "male": "male", "man": "male", "boy": "male", "guy": "male", "gentleman": "male",
    "f": "female", "female": "female", "woman": "female", "girl": "female", "lady": "female",
}  # fmt: skip
_GENDER_WORDS = sorted((w for w in _GENDER_SYNONYMS if len(w) > 1), key=len, reverse=True)
_GENDER_RE = re.compile(r"(?<![a-z])(" + "|".join(_GENDER_WORDS) + r")(?![a-z])")
_AGE_RES = (
    re.compile(r"(?<!\d)(\d{1,3})\s*-?\s*(?:years?|yrs?)[\s-]*old\b"),
    re.compile(r"(?<!\d)(\d{1,3})\s*(?:y/o|yo)\b"),
    re.compile(r"\bage[d]?\s*:?\s*(\d{1,3})(?!\d)"),
)
_WORD_RE = re.compile(r"[a-z0-9]+")


def age_bucket_labels(edges: Sequence[int] = AGE_EDGES) -> tuple[str, ...]:
    """Bucket names for `edges`, `<unk>` first: ('<unk>', '<18', '18-24', …, '56+')."""
    labels = [UNK, f"<{edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return (*labels, f"{edges[-1]}+")


def normalize_gender(value: object) -> str | None:
    """'M', 'man', 'Male' → 'male'; 'F', 'woman' → 'female'; other text lower-cased; missing → None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip().lower()
    return _GENDER_SYNONYMS.get(text, text) or None


def normalize_occupation(value: object) -> str | None:
    """Lower-case, '_' → ' ', trimmed; missing or empty → None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = " ".join(str(value).replace("_", " ").lower().split())
    return text or None


def check_age(age: object) -> int | None:
    """An age as int, or None when missing; a ValueError for negative or implausible (> 120) ages."""
    if age is None or (not isinstance(age, str) and pd.isna(age)):
        return None
    try:
        value = int(age)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"age must be a whole number of years, got {age!r}") from exc
    if not 0 <= value <= MAX_AGE:
        raise ValueError(f"age must be between 0 and {MAX_AGE}, got {value}")
    return value


@dataclass(frozen=True)
class UserProfile:
    """What is known about a user without their id; None means unknown."""

    age: int | None = None
    gender: str | None = None
    occupation: str | None = None


def parse_profile_sentence(text: str, occupations: Iterable[str] = ()) -> UserProfile:
    """Age, gender and occupation from a sentence like "a 24-year-old male technician" (see module doc)."""
    if not isinstance(text, str):
        raise ValueError(f"a profile sentence must be a string, got {type(text).__name__}")
    lowered = text.lower()
    age = None
    for pattern in _AGE_RES:
        if match := pattern.search(lowered):
            age = check_age(int(match.group(1)))
            break
    gender_match = _GENDER_RE.search(lowered)
    gender = _GENDER_SYNONYMS[gender_match.group(1)] if gender_match else None
    spaced = " ".join(lowered.replace("_", " ").replace("/", " ").split())
    occupation = None
    candidates = {normalize_occupation(o) for o in occupations} - {None, UNK}
    for name in sorted(candidates, key=lambda o: (-len(o), o)):
        form = " ".join(name.replace("/", " ").split())
        if re.search(r"(?<![a-z0-9])" + re.escape(form) + r"(?![a-z0-9])", spaced):
            occupation = name
            break
    return UserProfile(age=age, gender=gender, occupation=occupation)


def title_tokens(title: object) -> list[str]:
    """Lower-case alphanumeric words of a title."""
    return _WORD_RE.findall(str(title).lower()) if isinstance(title, str) else []


@dataclass(frozen=True)
class Vocab:
    """An ordered token list with `<unk>` at index 0."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != UNK:
            raise ValueError(f"a vocabulary must start with '{UNK}', got {self.tokens[:3]!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary must not repeat tokens")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, values: Iterable[object]) -> Vocab:
        """Unique non-missing values in first-seen order (deterministic for a given table)."""
        seen = dict.fromkeys(str(v) for v in values if v is not None and not pd.isna(v) and str(v) != UNK)
        return cls((UNK, *seen))

    @property
    def size(self) -> int:
        return len(self.tokens)

    def index(self, token: object) -> int:
        """The token's index, 0 (`<unk>`) when unknown or missing."""
        return self._index.get(str(token), 0) if token is not None else 0

    def __contains__(self, token: object) -> bool:
        return token is not None and str(token) in self._index and str(token) != UNK

    def lookup(self, values: Iterable[object]) -> np.ndarray:
        """Vectorized `index` over many values → int64 array."""
        series = pd.Series(list(values), dtype="object")
        return series.map(self._index).fillna(0).to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class UserFeatures:
    """Index tensors for a batch of users, each (B,) int64; index 0 is `<unk>`.

    `taste` (B, n_genres) float is the stated genre taste of users without a known id (columns follow the
    vocabulary's genres; a zero row states nothing), or None; the user tower reads it only for `<unk>` ids.
    """

    user: torch.Tensor
    age: torch.Tensor
    gender: torch.Tensor
    occupation: torch.Tensor
    taste: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.user, self.age, self.gender, self.occupation)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(
                f"UserFeatures tensors must share one (B,) shape, got {sorted(map(tuple, shapes))}"
            )
        if self.taste is not None and (self.taste.dim() != 2 or self.taste.shape[0] != self.user.shape[0]):
            raise ValueError(f"UserFeatures.taste must be (B, n_genres), got {tuple(self.taste.shape)}")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def to(self, device: torch.device | str) -> UserFeatures:
        ids = (t.to(device) for t in (self.user, self.age, self.gender, self.occupation))
        return UserFeatures(*ids, taste=None if self.taste is None else self.taste.to(device))

    def without_ids(self) -> UserFeatures:
        """The same users with ids masked to `<unk>`: the cold-start view."""
        return UserFeatures(torch.zeros_like(self.user), self.age, self.gender, self.occupation, self.taste)

    @staticmethod
    def cat(parts: Sequence[UserFeatures]) -> UserFeatures:
        """Rows of all parts in order; a part without taste states none (zero rows) when others have it."""
        tastes = [p.taste for p in parts if p.taste is not None]
        taste = None
        if tastes:
            width, like = tastes[0].shape[1], tastes[0]
            taste = torch.cat(
                [p.taste if p.taste is not None else like.new_zeros(len(p), width) for p in parts]
            )
        return UserFeatures(
            *(
                torch.cat([getattr(p, name) for p in parts])
                for name in ("user", "age", "gender", "occupation")
            ),
            taste=taste,
        )


@dataclass(frozen=True)
class FeatureVocab:
    """All vocabularies of one trained encoder; saved as vocab.json beside the weights."""

    users: Vocab
    genders: Vocab
    occupations: Vocab
    items: Vocab
    genres: Vocab
    title_words: Vocab
    age_edges: tuple[int, ...] = AGE_EDGES
    max_genres: int = 6
    max_title_tokens: int = 12

    def __post_init__(self) -> None:
        if list(self.age_edges) != sorted(set(self.age_edges)) or not self.age_edges:
            raise ValueError(f"age_edges must be strictly increasing, got {self.age_edges}")
        if self.max_genres < 1 or self.max_title_tokens < 1:
            raise ValueError("max_genres and max_title_tokens must be at least 1")

    @classmethod
    def from_data(
        cls,
        data: InteractionData,
        *,
        title_min_count: int = 2,
        max_title_words: int = 20_000,
        max_title_tokens: int = 12,
    ) -> FeatureVocab:
        """Vocabularies from a dataset; title words in fewer than `title_min_count` titles map to <unk>."""
        users = Vocab.build(pd.concat([data.users["user_id"], data.interactions["user_id"]]).astype(str))
        items = Vocab.build(pd.concat([data.items["item_id"], data.interactions["item_id"]]).astype(str))
        genders = Vocab.build(sorted({g for g in map(normalize_gender, data.users["gender"]) if g}))
        occupations = Vocab.build(
            sorted({o for o in map(normalize_occupation, data.users["occupation"]) if o})
        )
        genres = Vocab.build(sorted({g for gs in data.items["genres"] for g in gs}))
        counts = Counter(w for t in data.items["title"] for w in set(title_tokens(t)))
        frequent = sorted(
            (w for w, c in counts.items() if c >= title_min_count), key=lambda w: (-counts[w], w)
        )
        max_genres = max((len(g) for g in data.items["genres"]), default=1)
        return cls(
            users=users,
            genders=genders,
            occupations=occupations,
            items=items,
            genres=genres,
            title_words=Vocab.build(frequent[:max_title_words]),
            max_genres=max(1, max_genres),
            max_title_tokens=max_title_tokens,
        )

    @property
    def age_buckets(self) -> tuple[str, ...]:
        return age_bucket_labels(self.age_edges)

    def age_index(self, ages: Iterable[object]) -> np.ndarray:
        """Bucket index per age, 0 for missing (vectorized)."""
        values = pd.to_numeric(pd.Series(list(ages), dtype="object"), errors="coerce").to_numpy(dtype=float)
        buckets = 1 + np.searchsorted(np.asarray(self.age_edges, dtype=float), values, side="right")
        return np.where(np.isnan(values), 0, buckets).astype(np.int64)

    def profile_indices(self, profile: UserProfile) -> tuple[int, int, int]:
        """(age bucket, gender, occupation) indices; unknown parts → 0."""
        age = check_age(profile.age)
        return (
            int(self.age_index([age])[0]),
            self.genders.index(normalize_gender(profile.gender)),
            self.occupations.index(normalize_occupation(profile.occupation)),
        )

    def features_from_profile(
        self, age: int | None = None, gender: str | None = None, occupation: str | None = None
    ) -> UserFeatures:
        """One cold-start user (B = 1, id `<unk>`) from whatever profile fields are known."""
        a, g, o = self.profile_indices(UserProfile(age, gender, occupation))
        # host-side features (CPU by design, like the tokenizer's ids): the user encoder moves them
        return UserFeatures(*(torch.tensor([v], dtype=torch.long) for v in (0, a, g, o)))

    def parse_profile_sentence(self, text: str) -> UserProfile:
        """`parse_profile_sentence` with occupations matched against this vocabulary."""
        return parse_profile_sentence(text, self.occupations.tokens[1:])

    def stated_taste(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, n_genres) stated taste of profile sentences (`parse_taste`), columns as `genres.tokens`.

        The `<unk>` column and an "unknown" genre stay 0: they are not tastes a person states."""
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of profile sentences, not one string")
        out = torch.zeros(len(texts), self.genres.size)
        columns = [n for n, g in enumerate(self.genres.tokens) if n > 0 and g.lower() != "unknown"]
        if columns and len(texts):
            names = [self.genres.tokens[n] for n in columns]
            out[:, columns] = parse_taste(list(texts), names)
        return out

    def user_table(self, users: pd.DataFrame) -> np.ndarray:
        """(n_users, 3) profile indices (age, gender, occupation) per user row; users without a row → 0."""
        table = np.zeros((self.users.size, 3), dtype=np.int64)
        rows = self.users.lookup(users["user_id"].astype(str))
        table[rows, 0] = self.age_index(users["age"].astype("object"))
        table[rows, 1] = self.genders.lookup(map(normalize_gender, users["gender"]))
        table[rows, 2] = self.occupations.lookup(map(normalize_occupation, users["occupation"]))
        table[0] = 0  # <unk> user: unknown profile
        return table

    def item_tables(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Padded genre (n_items, max_genres) and title-word (n_items, max_title_tokens) indices per item row.

        Pad value is the vocabulary size (the EmbeddingBag padding row); items without a row are all padding.
        """
        genres = np.full((self.items.size, self.max_genres), self.genres.size, dtype=np.int64)
        titles = np.full((self.items.size, self.max_title_tokens), self.title_words.size, dtype=np.int64)
        rows = self.items.lookup(items["item_id"].astype(str))
        for row, item_genres, title in zip(rows, items["genres"], items["title"], strict=True):
            if row == 0:
                continue
            g = [self.genres.index(x) for x in tuple(item_genres)[: self.max_genres]]
            t = [self.title_words.index(w) for w in title_tokens(title)[: self.max_title_tokens]]
            genres[row, : len(g)] = g
            titles[row, : len(t)] = t
        return genres, titles

    def sizes(self) -> dict[str, int]:
        """Vocabulary sizes as TwoTowerConfig fields."""
        return {
            "n_users": self.users.size,
            "n_age_buckets": len(self.age_buckets),
            "n_genders": self.genders.size,
            "n_occupations": self.occupations.size,
            "n_items": self.items.size,
            "n_genres": self.genres.size,
            "n_title_words": self.title_words.size,
            "max_genres": self.max_genres,
            "max_title_tokens": self.max_title_tokens,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "format": VOCAB_FORMAT,
            "age_edges": list(self.age_edges),
            "age_buckets": list(self.age_buckets),
            "max_genres": self.max_genres,
            "max_title_tokens": self.max_title_tokens,
            **{name: list(getattr(self, name).tokens) for name in _VOCAB_FIELDS},
        }

    @classmethod
    def from_dict(cls, payload: dict[str, object], path: Path | None = None) -> FeatureVocab:
        """Inverse of `to_dict`; a DataError naming `path` when the payload is not a vocabulary."""
        if not isinstance(payload, dict) or payload.get("format") != VOCAB_FORMAT:
            raise DataError(
                "not an ICG user-encoder vocabulary", path=path, expected=f"format '{VOCAB_FORMAT}'"
            )
        missing = [
            k for k in (*_VOCAB_FIELDS, "age_edges", "max_genres", "max_title_tokens") if k not in payload
        ]
        if missing:
            raise DataError(f"vocabulary lacks {missing}", path=path)
        try:
            return cls(
                **{name: Vocab(tuple(payload[name])) for name in _VOCAB_FIELDS},
                age_edges=tuple(int(e) for e in payload["age_edges"]),
                max_genres=int(payload["max_genres"]),
                max_title_tokens=int(payload["max_title_tokens"]),
            )
        except (TypeError, ValueError) as exc:
            raise DataError(f"invalid vocabulary: {exc}", path=path) from exc

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> FeatureVocab:
        file = Path(path)
        if not file.is_file():
            raise DataError(
                "vocabulary file not found", path=file, expected="vocab.json from save_pretrained"
            )
        try:
            payload = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"vocabulary is not valid JSON: {exc}", path=file) from exc
        return cls.from_dict(payload, path=file)


_VOCAB_FIELDS = ("users", "genders", "occupations", "items", "genres", "title_words")
