"""The user_genre diagnostic of adapter training: its texts and its config check."""

import pytest


def test_user_genre_texts_pick_the_users_liked_genre_of_the_item():
    from icg.training.adapter_step import user_genre_texts

    genres = ["Comedy", "Horror", "Romance", "Sci-Fi"]
    items = [("Horror", "Romance"), ("Horror", "Romance"), ("Comedy",), ("Romance", "Sci-Fi")]
    profiles = ["likes romance; dislikes horror", "loves horror", "loves horror", "a 24-year-old technician"]
    assert user_genre_texts(items, profiles, genres) == [
        "a romance movie", "a horror movie", "a comedy movie", "a romance movie",  # no taste: first genre
    ]  # fmt: skip
    with pytest.raises(ValueError, match="item_genres"):
        user_genre_texts([()], ["loves horror"], genres)


def test_clip_text_is_checked():
    from icg.training.adapter_config import AdapterTrainConfig

    assert AdapterTrainConfig(clip_text="user_genre").clip_text == "user_genre"
    with pytest.raises(ValueError, match="clip_text must be one of"):
        AdapterTrainConfig(clip_text="genre")
