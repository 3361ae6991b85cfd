"""Vocabularies, age buckets, profile sentences: the index side of the user encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from icg.data.records import InteractionData, add_profiles, profile_sentence
from icg.errors import DataError
from icg.users.features import (
    UNK,
    FeatureVocab,
    UserProfile,
    Vocab,
    age_bucket_labels,
    parse_profile_sentence,
)

OCCUPATIONS = ("technician", "other", "student", "k-12 student", "doctor/health care", "writer")


def tiny_data() -> InteractionData:
    users = add_profiles(
        pd.DataFrame(
            {
                "user_id": ["u1", "u2", "u3"],
                "age": pd.array([24, 53, None], dtype="Int64"),
                "gender": ["M", "F", None],
                "occupation": ["technician", "other", "writer"],
                "zip": [None, None, None],
            }
        )
    )
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "title": ["Star Wars", "Star Trek: The Motion Picture", "Heat"],
            "year": pd.array([1977, 1979, 1995], dtype="Int64"),
            "genres": [("Sci-Fi", "Action"), ("Sci-Fi",), ()],
            "cover_path": None,
        }
    )
    inter = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u9"],
            "item_id": ["i1", "i2", "i4"],
            "signal": [5.0, 3.0, 4.0],
            "timestamp": 0,
        }
    )
    return InteractionData("tiny", users, items, inter)


def test_age_buckets_follow_movielens_edges() -> None:
    vocab = FeatureVocab.from_data(tiny_data())
    assert age_bucket_labels() == ("<unk>", "<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
    got = vocab.age_index([None, 7, 17, 18, 24, 25, 49, 50, 55, 56, 73, pd.NA])
    assert got.tolist() == [0, 1, 1, 2, 2, 3, 5, 6, 6, 7, 7, 0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a 24-year-old male technician", UserProfile(24, "male", "technician")),
        ("a 53-year-old female person", UserProfile(53, "female", None)),
        ("A Woman aged 31, a K-12 student", UserProfile(31, "female", "k-12 student")),
        ("student, 19 years old, man", UserProfile(19, "male", "student")),
        ("female doctor/health care worker", UserProfile(None, "female", "doctor/health care")),
        ("works as a doctor health care", UserProfile(None, None, "doctor/health care")),
        ("a user with no profile data", UserProfile(None, None, None)),
        ("a 30 y/o otherworldly writer", UserProfile(30, None, "writer")),
    ],
)
def test_parse_profile_sentence(text: str, expected: UserProfile) -> None:
    assert parse_profile_sentence(text, OCCUPATIONS) == expected


def test_parse_profile_sentence_reads_what_records_write() -> None:
    for age, gender, occupation in [(24, "M", "technician"), (18, "F", "student"), (None, None, "writer")]:
        sentence = profile_sentence(age, gender, occupation)
        parsed = parse_profile_sentence(sentence, OCCUPATIONS)
        assert parsed == UserProfile(age, {"M": "male", "F": "female"}.get(gender), occupation), sentence


def test_parse_profile_sentence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="between 0 and 120"):
        parse_profile_sentence("a 200-year-old man")
    with pytest.raises(ValueError, match="string"):
        parse_profile_sentence(None)  # type: ignore[arg-type]


def test_vocab_has_unk_slot_and_vectorized_lookup() -> None:
    vocab = Vocab.build(["b", "a", "b", None, "c"])
    assert vocab.tokens == (UNK, "b", "a", "c")
    assert vocab.index("a") == 2 and vocab.index("zzz") == 0 and vocab.index(None) == 0
    assert vocab.lookup(["c", "zzz", "b", None]).tolist() == [3, 0, 1, 0]
    assert "a" in vocab and UNK not in vocab
    with pytest.raises(ValueError, match="<unk>"):
        Vocab(("a", "b"))
    with pytest.raises(ValueError, match="repeat"):
        Vocab((UNK, "a", "a"))


def test_feature_vocab_from_data() -> None:
    data = tiny_data()
    vocab = FeatureVocab.from_data(data, title_min_count=2)
    assert vocab.users.tokens == (UNK, "u1", "u2", "u3", "u9")  # interaction-only users get a row too
    assert vocab.items.tokens == (UNK, "i1", "i2", "i3", "i4")
    assert vocab.genders.tokens == (UNK, "female", "male")
    assert vocab.genres.tokens == (UNK, "Action", "Sci-Fi")
    assert vocab.title_words.tokens == (UNK, "star")  # the only word in two titles
    table = vocab.user_table(data.users)
    assert table.shape == (5, 3)
    assert table[vocab.users.index("u1")].tolist() == [
        2,
        vocab.genders.index("male"),
        vocab.occupations.index("technician"),
    ]
    assert table[vocab.users.index("u3")].tolist() == [0, 0, vocab.occupations.index("writer")]
    assert table[vocab.users.index("u9")].tolist() == [0, 0, 0]
    genres, titles = vocab.item_tables(data.items)
    pad_g, pad_t = vocab.genres.size, vocab.title_words.size
    assert genres[vocab.items.index("i1")].tolist() == [2, 1]  # primary genre first
    assert genres[vocab.items.index("i3")].tolist() == [pad_g, pad_g]
    assert titles[vocab.items.index("i2"), :3].tolist() == [1, 0, 0]  # "star", "trek" <unk>, "the" <unk>
    assert (titles[vocab.items.index("i4")] == pad_t).all()  # an item with no row in the items table


def test_features_from_profile_maps_unknowns_to_unk() -> None:
    vocab = FeatureVocab.from_data(tiny_data())
    feats = vocab.features_from_profile(age=24, gender="M", occupation="astronaut")
    assert len(feats) == 1 and feats.user.tolist() == [0]
    assert feats.age.tolist() == [2]
    assert feats.gender.tolist() == [vocab.genders.index("male")]
    assert feats.occupation.tolist() == [0]
    empty = vocab.features_from_profile()
    assert [empty.age.item(), empty.gender.item(), empty.occupation.item()] == [0, 0, 0]
    with pytest.raises(ValueError, match="age"):
        vocab.features_from_profile(age=-3)
    assert vocab.parse_profile_sentence("a 24-year-old male technician") == UserProfile(
        24, "male", "technician"
    )


def test_feature_vocab_json_round_trip(tmp_path) -> None:
    vocab = FeatureVocab.from_data(tiny_data())
    path = vocab.save(tmp_path / "vocab.json")
    assert FeatureVocab.load(path) == vocab
    assert json.loads(path.read_text())["age_buckets"][0] == UNK
    path.write_text("{not json")
    with pytest.raises(DataError, match="vocab.json"):
        FeatureVocab.load(path)
    path.write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(DataError, match="vocab.json"):
        FeatureVocab.load(path)
    with pytest.raises(DataError, match="not found"):
        FeatureVocab.load(tmp_path / "missing.json")


def test_lookup_agrees_with_index() -> None:
    vocab = Vocab.build(str(i) for i in range(50))
    values = [str(i) for i in np.random.default_rng(0).integers(-10, 60, size=200)]
    assert vocab.lookup(values).tolist() == [vocab.index(v) for v in values]
