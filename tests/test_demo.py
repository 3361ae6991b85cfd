"""`icg demo`: contrasting users, held-out items, and the contact sheet (on the tiny preset)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from icg.data.movielens import load_ml100k
from icg.demo import CELL, USER_GENRES, contrasting_users, held_out_items, run_demo
from icg.presets import tiny_preset


@pytest.fixture(scope="module")
def data():
    return load_ml100k()


def test_contrasting_users_lean_towards_their_genre(data):
    users = contrasting_users(data)
    assert [u.genre for u in users] == list(USER_GENRES)
    assert len({u.user_id for u in users}) == 3
    assert all(u.lift > 0.1 for u in users)  # a real lean, not noise around the global share


def test_held_out_items_are_in_the_test_split(data):
    from icg.data.splits import split_items

    items = held_out_items(data.items)
    test_ids = set(data.items.iloc[split_items(len(data.items), 0, 0.1, 0.1).test]["item_id"])
    assert len(items) == 4 and set(items["item_id"]) <= test_ids


def test_demo_writes_contact_sheet(data, tmp_path):
    preset_dir = tmp_path / "tiny"
    tiny_preset(preset_dir)
    sheet = run_demo(data, tmp_path / "demo", preset=str(preset_dir))
    assert sheet.is_file()
    image = Image.open(tmp_path / "demo" / "contact_sheet.png")
    assert image.width == 150 + 5 * CELL and image.height == 30 + 4 * CELL  # ref, rule-based, 3 users
    assert len(list((tmp_path / "demo" / "covers").glob("*.png"))) == 4 * 4
    meta = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [u["genre"] for u in meta["users"]] == list(USER_GENRES)
    assert len(meta["cover_leans"]) == 4  # tiny preset: no CLIP, so no lean captions (empty strings)


def test_lean_captions_read_the_column_users_genre(data, tmp_path):
    from icg.demo import contrasting_users, lean_captions
    from icg.testing import tiny_clip_model

    clip, processor = tiny_clip_model()
    clip.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    users = contrasting_users(data)
    genres = sorted({*USER_GENRES, "Drama"})
    covers = [Image.new("RGB", (32, 32), colour) for colour in ("black", "red", "white", "black")]
    (row,) = lean_captions(str(tmp_path / "clip"), [(None, "", covers)], users, genres)
    assert row[:2] == ["", ""] and len(row) == 5
    assert row[2].startswith("children's ") and row[3].startswith("horror ")
    assert row[4].endswith("(+0.0)")  # the romance user's cover equals the rule-based one
