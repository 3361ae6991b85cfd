"""Loaders for MovieLens, PixelRec and platform logs: parsing, the shared schema, errors users can act on."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from icg.data.logs import deduplicate, load_logs
from icg.data.movielens import load_ml1m, load_ml100k, load_ml_csv
from icg.data.pixelrec import load_pixelrec, split_tags
from icg.data.records import INTERACTION_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from icg.data.registry import DATASETS, load_dataset
from icg.errors import DataError

NO_PROFILE = "a user with no profile data"


def check_schema(data) -> None:
    """Columns in schema order are not required, but the dtypes every consumer relies on are."""
    assert set(USER_COLUMNS) <= set(data.users.columns)
    assert set(ITEM_COLUMNS) <= set(data.items.columns)
    assert set(INTERACTION_COLUMNS) <= set(data.interactions.columns)
    assert data.interactions["signal"].dtype == "float64"
    assert data.interactions["timestamp"].dtype == "int64"
    assert data.items["year"].dtype == "Int64"
    assert data.users["age"].dtype == "Int64"
    assert data.interactions["user_id"].map(type).eq(str).all()
    assert data.interactions["item_id"].map(type).eq(str).all()
    assert data.items["genres"].map(type).eq(tuple).all()
    assert set(data.interactions["item_id"]) <= set(data.items["item_id"])
    assert set(data.interactions["user_id"]) <= set(data.users["user_id"])
    assert not data.users["profile"].isna().any()


# --- MovieLens ---------------------------------------------------------------------------------------------


def test_ml100k_real_counts_and_profile():
    data = load_ml100k()
    check_schema(data)
    assert (len(data.users), len(data.items), len(data.interactions)) == (943, 1682, 100000)
    assert data.user_by_id("1")["profile"] == "a 24-year-old male technician"
    assert set(data.interactions["signal"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy = data.item_by_id("1")
    assert (toy["title"], toy["year"], toy["genres"][0]) == ("Toy Story", 1995, "Animation")


def test_ml1m_latin1_titles_years_and_occupations(ml1m_dir: Path):
    data = load_ml1m(ml1m_dir)
    check_schema(data)
    les = data.item_by_id("2")
    assert (les["title"], les["year"], les["genres"]) == ("Misérables, Les", 1995, ("Drama", "Musical"))
    untitled = data.item_by_id("3")
    assert untitled["title"] == "Untitled" and pd.isna(untitled["year"])
    users = data.users.set_index("user_id")
    assert users.loc["1", "occupation"] == "K-12 student"
    assert users.loc["2", "occupation"] == "programmer"
    assert pd.isna(users.loc["3", "occupation"])  # code 99 is outside the documented 0-20
    assert users.loc["1", "profile"] == "an under-18 female K-12 student"
    assert users.loc["2", "profile"] == "a 56-year-old male programmer"
    assert users.loc["3", "profile"] == "a 25-year-old male person"
    assert data.interactions.iloc[0].tolist() == ["1", "1", 5.0, 978300760]


def test_ml1m_comma_separated_ratings_is_reported_as_wrong_separator(ml1m_dir: Path):
    (ml1m_dir / "ratings.dat").write_text("1,1,5,978300760\n1,2,3,978302109\n")
    with pytest.raises(DataError, match="separator") as info:
        load_ml1m(ml1m_dir)
    assert "ratings.dat" in str(info.value) and "'::'" in str(info.value)


def test_ml25m_quoted_titles_with_commas(ml25m_dir: Path):
    data = load_ml_csv(ml25m_dir, name="ml-25m")
    check_schema(data)
    president = data.item_by_id("11")
    assert (president["title"], president["year"]) == ("American President, The", 1995)
    assert president["genres"] == ("Comedy", "Drama", "Romance")
    assert data.item_by_id("12")["title"] == "Dracula: Dead and Loving It"
    babylon = data.item_by_id("13")
    assert babylon["title"] == "Babylon 5" and pd.isna(babylon["year"]) and babylon["genres"] == ()
    assert data.interactions["signal"].tolist() == [3.5, 4.0, 0.5]
    assert sorted(data.users["user_id"]) == ["1", "7"]
    assert (data.users["profile"] == NO_PROFILE).all()


# --- PixelRec ----------------------------------------------------------------------------------------------


def test_pixelrec_titles_tags_covers_and_default_signal(pixelrec_dir: Path):
    data = load_pixelrec(pixelrec_dir)
    check_schema(data)
    assert (data.name, data.signal_name) == ("pixelrec", "view_number")
    items = data.items.set_index("item_id")
    assert items.loc["i1", "title"] == 'Cats, dogs and "friends"'
    assert items.loc["i2", "title"] == "原标题, with comma"  # empty title_en falls back to title
    assert items.loc["i1", "genres"] == ("music", "dance")
    assert items.loc["i2", "genres"] == ("video games", "esports")
    assert items.loc["i3", "genres"] == ("vlog",)
    assert items.loc["i4", "genres"] == ("cooking", "travel")
    assert items["year"].isna().all()
    assert items.loc["i1", "cover_path"] == str(pixelrec_dir / "images" / "i1.jpg")
    assert items.loc["i3", "cover_path"] == str(pixelrec_dir / "images" / "i3.jpg")
    assert items.loc["i2", "cover_path"] is None and items.loc["i4", "cover_path"] is None
    # view_number joined per interaction; i3's missing count is zero engagement
    assert data.interactions["item_id"].tolist() == ["i1", "i2", "i1", "i3"]
    assert data.interactions["signal"].tolist() == [1000.0, 50.0, 1000.0, 0.0]
    assert data.interactions["timestamp"].tolist() == [1640966405, 1640966500, 1640967000, 1640968000]
    assert sorted(data.users["user_id"]) == ["u1", "u2", "u3"]
    assert (data.users["profile"] == NO_PROFILE).all()


def test_pixelrec_signal_choice(pixelrec_dir: Path):
    likes = load_pixelrec(pixelrec_dir, signal="thumbup_number")
    assert likes.signal_name == "thumbup_number"
    assert likes.interactions["signal"].tolist() == [300.0, 7.0, 300.0, 2.0]
    clicks = load_pixelrec(pixelrec_dir, signal="click")
    assert clicks.interactions["signal"].tolist() == [1.0] * 4


def test_pixelrec_bad_signal_lists_valid_columns(pixelrec_dir: Path):
    with pytest.raises(DataError, match="unknown signal 'likes'") as info:
        load_pixelrec(pixelrec_dir, signal="likes")
    message = str(info.value)
    assert "item_info.csv" in message
    for column in ("view_number", "thumbup_number", "barrage_number", "click"):
        assert column in message
    with pytest.raises(DataError, match="'title_en'"):
        load_pixelrec(pixelrec_dir, signal="title_en")  # a column, but not a count


def test_pixelrec_interaction_file_choice(pixelrec_dir: Path):
    (pixelrec_dir / "Pixel1M.csv").write_text("item_id,user_id,timestamp\ni4,u9,1\n")
    assert load_pixelrec(pixelrec_dir).extra["interactions_file"] == "Pixel200K.csv"
    chosen = load_pixelrec(pixelrec_dir, interactions_file="Pixel1M.csv")
    assert chosen.interactions[["user_id", "item_id"]].values.tolist() == [["u9", "i4"]]
    (pixelrec_dir / "Pixel200K.csv").unlink()
    assert load_pixelrec(pixelrec_dir).extra["interactions_file"] == "Pixel1M.csv"
    (pixelrec_dir / "Pixel1M.csv").unlink()
    with pytest.raises(DataError, match="Pixel200K.csv"):
        load_pixelrec(pixelrec_dir)


def test_pixelrec_unknown_item_names_file_and_ids(pixelrec_dir: Path):
    (pixelrec_dir / "Pixel200K.csv").write_text("item_id,user_id,timestamp\ni1,u1,1\ni77,u1,2\n")
    with pytest.raises(DataError, match="i77") as info:
        load_pixelrec(pixelrec_dir)
    assert "Pixel200K.csv" in str(info.value)


def test_split_tags_single_and_multiple():
    tags = pd.Series(["music", " a | b |a", "x，y", None, "  ", "one two"])
    assert split_tags(tags).tolist() == [("music",), ("a", "b"), ("x", "y"), (), (), ("one", "two")]


# --- platform logs -----------------------------------------------------------------------------------------

ITEMS = pd.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "title": ["First", "Second, with comma", "Third"],
        "genres": ["Drama", "", None],
    }
)
DUPLICATED = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u1"],
        "item_id": ["i1", "i1", "i1", "i2", "i1", "i1", "i3"],
        "signal": [3.0, 5.0, 5.0, 2.0, 4.0, 4.0, 1.0],
        "timestamp": [100, 50, 70, 10, 5, 5, 999],
    }
)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_logs_dedup_keeps_highest_signal_then_latest(tmp_path: Path, write_log_table, suffix: str, caplog):
    inter = write_log_table(DUPLICATED, tmp_path / f"interactions{suffix}")
    items = write_log_table(ITEMS, tmp_path / f"items{suffix}")
    with caplog.at_level(logging.INFO, logger="icg.data.logs"):
        data = load_logs(inter, items)
    check_schema(data)
    assert data.interactions.values.tolist() == [
        ["u1", "i1", 5.0, 70],  # signal 5 beats 3; among the 5s, timestamp 70 beats 50
        ["u1", "i2", 2.0, 10],
        ["u2", "i1", 4.0, 5],
        ["u1", "i3", 1.0, 999],
    ]
    assert "dropped 3 duplicated" in caplog.text
    assert data.signal_name == "signal" and data.name == "logs"
    items_table = data.items.set_index("item_id")
    assert items_table.loc["i2", "title"] == "Second, with comma"
    assert items_table["genres"].tolist() == [("Drama",), (), ()]
    assert (data.users["profile"] == NO_PROFILE).all()


def test_deduplicate_counts_dropped_rows():
    kept, dropped = deduplicate(DUPLICATED)
    assert dropped == 3 and len(kept) == 4


def test_logs_defaults_and_numeric_ids_across_formats(tmp_path: Path, write_log_table):
    # float ids: integer ids that went through a NaN-producing join still match "10" in the items file
    inter = write_log_table(
        pd.DataFrame({"user_id": [7, 8], "item_id": [10.0, 20.0]}), tmp_path / "inter.parquet"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,year\n10,Ten,1999\n20,Twenty,\n")
    data = load_logs(inter, items)
    check_schema(data)
    assert data.interactions.values.tolist() == [["7", "10", 1.0, 0], ["8", "20", 1.0, 0]]
    assert data.signal_name == "click"
    assert data.items["year"].tolist()[0] == 1999 and pd.isna(data.items["year"].tolist()[1])


def test_logs_items_genres_covers_and_iso_timestamps(tmp_path: Path, write_log_table):
    (tmp_path / "covers").mkdir()
    (tmp_path / "covers" / "a.jpg").write_bytes(b"jpeg")
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(b"png")
    items = write_log_table(
        pd.DataFrame(
            {
                "item_id": ["a", "b", "c", "d"],
                "title": ["A", "B", "C", "D"],
                "genres": ["Drama | Romance", "Comedy", "", "Horror|Horror"],
                "cover_path": ["covers/a.jpg", "covers/missing.jpg", str(absolute), None],
            }
        ),
        tmp_path / "items.parquet",
    )
    inter = write_log_table(
        pd.DataFrame(
            {"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ["1970-01-01T00:01:00Z", None]}
        ),
        tmp_path / "inter.csv",
    )
    data = load_logs(inter, items)
    table = data.items.set_index("item_id")
    assert table.loc["a", "genres"] == ("Drama", "Romance")
    assert table.loc["d", "genres"] == ("Horror",)
    assert table.loc["a", "cover_path"] == str(tmp_path / "covers" / "a.jpg")
    assert table.loc["b", "cover_path"] is None  # listed but absent on disk
    assert table.loc["c", "cover_path"] == str(absolute)
    assert table.loc["d", "cover_path"] is None
    assert data.interactions["timestamp"].tolist() == [60, 0]


def test_logs_users_profiles(tmp_path: Path, write_log_table):
    items = write_log_table(ITEMS, tmp_path / "items.csv")
    inter = write_log_table(
        pd.DataFrame({"user_id": ["1", "2", "3"], "item_id": ["i1", "i1", "i2"]}), tmp_path / "inter.csv"
    )
    users = write_log_table(
        pd.DataFrame(
            {
                "user_id": ["1", "2"],
                "age": [24, None],
                "gender": ["M", "F"],
                "occupation": ["technician", None],
                "profile": [None, "a night-owl gamer"],
            }
        ),
        tmp_path / "users.parquet",
    )
    data = load_logs(inter, items, users)
    check_schema(data)
    profiles = data.users.set_index("user_id")["profile"]
    assert profiles.to_dict() == {
        "1": "a 24-year-old male technician",
        "2": "a night-owl gamer",
        "3": NO_PROFILE,
    }


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_logs_unknown_items_name_file_and_ids(tmp_path: Path, write_log_table, suffix: str):
    inter = write_log_table(
        pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["i1", "i9", "i8"]}), tmp_path / f"inter{suffix}"
    )
    items = write_log_table(ITEMS, tmp_path / f"items{suffix}")
    with pytest.raises(DataError, match=r"\['i9', 'i8'\]") as info:
        load_logs(inter, items)
    assert f"inter{suffix}" in str(info.value) and "items" in str(info.value)


def test_logs_duplicated_item_ids_are_an_error(tmp_path: Path, write_log_table):
    items = write_log_table(
        pd.DataFrame({"item_id": ["i1", "i1"], "title": ["a", "b"]}), tmp_path / "items.csv"
    )
    inter = write_log_table(pd.DataFrame({"user_id": ["u"], "item_id": ["i1"]}), tmp_path / "inter.csv")
    with pytest.raises(DataError, match="duplicated ids"):
        load_logs(inter, items)


# --- bad input ---------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path):
    with pytest.raises(DataError, match="folder not found") as info:
        load_ml1m(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_missing_column_names_column_and_file(ml25m_dir: Path):
    (ml25m_dir / "ratings.csv").write_text("userId,movieId,score,timestamp\n1,11,3.5,1\n")
    with pytest.raises(DataError, match="column 'rating'") as info:
        load_ml_csv(ml25m_dir)
    assert "ratings.csv" in str(info.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_logs_missing_column_names_column_and_file(tmp_path: Path, write_log_table, suffix: str):
    items = write_log_table(pd.DataFrame({"item_id": ["i1"], "name": ["x"]}), tmp_path / f"items{suffix}")
    inter = write_log_table(pd.DataFrame({"user_id": ["u"], "item_id": ["i1"]}), tmp_path / f"inter{suffix}")
    with pytest.raises(DataError, match="column 'title'") as info:
        load_logs(inter, items)
    assert f"items{suffix}" in str(info.value)


def test_empty_files(ml25m_dir: Path, tmp_path: Path, write_log_table):
    (ml25m_dir / "movies.csv").write_text("")
    with pytest.raises(DataError, match="empty") as info:
        load_ml_csv(ml25m_dir)
    assert "movies.csv" in str(info.value)
    (ml25m_dir / "movies.csv").write_text("movieId,title,genres\n")
    with pytest.raises(DataError, match="no data rows"):
        load_ml_csv(ml25m_dir)
    empty = write_log_table(pd.DataFrame({"user_id": [], "item_id": []}), tmp_path / "inter.parquet")
    items = write_log_table(ITEMS, tmp_path / "items.parquet")
    with pytest.raises(DataError, match="no data rows") as info:
        load_logs(empty, items)
    assert "inter.parquet" in str(info.value)


def test_non_numeric_values(ml25m_dir: Path, tmp_path: Path, write_log_table):
    (ml25m_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,11,3.5,1\n1,12,five,2\n")
    with pytest.raises(DataError, match="non-numeric value 'five' in row 2") as info:
        load_ml_csv(ml25m_dir)
    assert "ratings.csv" in str(info.value) and "column 'rating'" in str(info.value)
    items = write_log_table(ITEMS, tmp_path / "items.csv")
    inter = write_log_table(
        pd.DataFrame({"user_id": ["u", "v"], "item_id": ["i1", "i2"], "signal": ["2", "high"]}),
        tmp_path / "inter.csv",
    )
    with pytest.raises(DataError, match="'high'.*column 'signal'"):
        load_logs(inter, items)


def test_unreadable_parquet_and_unsupported_suffix(tmp_path: Path, write_log_table):
    items = write_log_table(ITEMS, tmp_path / "items.csv")
    broken = tmp_path / "inter.parquet"
    broken.write_bytes(b"user_id,item_id\nu,i1\n")
    with pytest.raises(DataError, match="Parquet") as info:
        load_logs(broken, items)
    assert "inter.parquet" in str(info.value)
    with pytest.raises(DataError, match="unsupported file type '.json'"):
        load_logs(tmp_path / "inter.json", items)


# --- registry ----------------------------------------------------------------------------------------------


def test_registry_names_and_errors(ml1m_dir: Path):
    known = {"ml-100k", "ml-1m", "ml-25m", "ml-20m", "ml-latest", "ml-latest-small", "pixelrec", "logs"}
    assert known <= set(DATASETS)
    with pytest.raises(DataError, match="unknown dataset 'ml-2m'.*'ml-1m'.*'pixelrec'"):
        load_dataset("ml-2m")
    with pytest.raises(DataError, match="ml-1m needs --path DIR"):
        load_dataset("ml-1m")
    with pytest.raises(DataError, match=r"ml-1m does not take option\(s\) \['signal'\]"):
        load_dataset("ml-1m", ml1m_dir, signal="view_number")
    assert load_dataset("ml-1m", str(ml1m_dir)).name == "ml-1m"


def test_registry_forwards_options_and_names(pixelrec_dir: Path, ml25m_dir: Path):
    data = load_dataset("pixelrec", pixelrec_dir, signal="thumbup_number")
    assert data.interactions["signal"].tolist() == [300.0, 7.0, 300.0, 2.0]
    assert load_dataset("ml-latest-small", ml25m_dir).name == "ml-latest-small"


def test_registry_logs_folder(tmp_path: Path, write_log_table):
    with pytest.raises(DataError, match="no interactions table"):
        load_dataset("logs", tmp_path)
    write_log_table(DUPLICATED, tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"items\.parquet"):
        load_dataset("logs", tmp_path)
    write_log_table(ITEMS, tmp_path / "items.csv")
    write_log_table(pd.DataFrame({"user_id": ["u1"], "age": [30]}), tmp_path / "users.csv")
    data = load_dataset("logs", tmp_path)
    assert len(data.interactions) == 4 and data.extra["users_file"].endswith("users.csv")
    assert data.user_by_id("u1")["profile"] == "a 30-year-old person"


def test_logs_parquet_list_genres(tmp_path: Path, write_log_table):
    items = write_log_table(
        pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"], "genres": [["Sci-Fi", " Drama"], []]}),
        tmp_path / "items.parquet",
    )
    inter = write_log_table(pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}), tmp_path / "inter.parquet")
    assert load_logs(inter, items).items["genres"].tolist() == [("Sci-Fi", "Drama"), ()]
