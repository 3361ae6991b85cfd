"""MovieLens loaders: ml-100k (from the recbole wheel), ml-1m, ml-25m / ml-latest / ml-latest-small."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd

from icg.data.records import InteractionData, add_profiles, split_genres
from icg.data.tables import read_table, require_dir, require_values
from icg.errors import DataError

# ml-1m encodes age as a bucket code; the profile sentence uses the bucket's lower bound.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

_YEAR_IN_TITLE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def ml100k_dir() -> Path:
    """The ml-100k folder shipped inside the installed recbole wheel (found, never imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "recbole is not installed, so ml-100k cannot be found",
            expected="`pip install --no-deps recbole==1.2.1` (make setup does this)",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    return require_dir(folder, "ml-100k.inter, ml-100k.user, ml-100k.item")


def _strip_type(frame: pd.DataFrame) -> pd.DataFrame:
    """RecBole atomic files name columns 'field:type'; keep the field."""
    return frame.rename(columns=lambda c: str(c).split(":")[0])


def load_ml100k(path: str | Path | None = None) -> InteractionData:
    """MovieLens-100k in RecBole's atomic-file layout (tab-separated, typed headers)."""
    folder = require_dir(path, "ml-100k.*") if path is not None else ml100k_dir()
    inter_file, user_file, item_file = (folder / f"ml-100k.{ext}" for ext in ("inter", "user", "item"))
    inter = _strip_type(
        read_table(
            inter_file,
            sep="\t",
            columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
            dtype={"user_id:token": str, "item_id:token": str},
            what="ml-100k interactions",
        )
    )
    users = _strip_type(
        read_table(
            user_file,
            sep="\t",
            columns=["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"],
            dtype=str,
            what="ml-100k users",
        )
    )
    items = _strip_type(
        read_table(
            item_file,
            sep="\t",
            columns=["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"],
            dtype=str,
            what="ml-100k items",
        )
    )
    for column in ("rating", "timestamp"):
        require_values(inter, column, inter_file, "number")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str),
            "item_id": inter["item_id"].astype(str),
            "signal": inter["rating"].astype("float64"),
            "timestamp": inter["timestamp"].astype("int64"),
        }
    )
    users = add_profiles(
        pd.DataFrame(
            {
                "user_id": users["user_id"].astype(str),
                "age": pd.to_numeric(users["age"], errors="coerce").astype("Int64"),
                "gender": users["gender"],
                "occupation": users["occupation"],
                "zip": users["zip_code"],
            }
        )
    )
    items = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "title": items["movie_title"].fillna("").astype(str),
            "year": pd.to_numeric(items["release_year"], errors="coerce").astype("Int64"),
            "genres": split_genres(items["class"], " "),
            "cover_path": None,
        }
    )
    return InteractionData("ml-100k", users, items, interactions, signal_name="rating", source=folder)


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """'Toy Story (1995)' → ('Toy Story', 1995); titles without a year keep their text and get <NA>."""
    parts = titles.astype(str).str.extract(_YEAR_IN_TITLE)
    title = parts["title"].fillna(titles.astype(str)).str.strip()
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return title, year


def load_ml1m(path: str | Path) -> InteractionData:
    """MovieLens-1M: '::'-separated .dat files without headers, ISO-8859-1 encoded."""
    folder = require_dir(path, "users.dat, movies.dat, ratings.dat")
    user_cols = ["user_id", "gender", "age", "occupation", "zip"]
    movie_cols = ["item_id", "title", "genres"]
    rating_cols = ["user_id", "item_id", "rating", "timestamp"]
    common = {"sep": "::", "encoding": "ISO-8859-1"}
    users = read_table(
        folder / "users.dat", columns=user_cols, names=user_cols, dtype=str, what="ml-1m users", **common
    )
    movies = read_table(
        folder / "movies.dat", columns=movie_cols, names=movie_cols, dtype=str, what="ml-1m movies", **common
    )
    ratings = read_table(
        folder / "ratings.dat",
        columns=rating_cols,
        names=rating_cols,
        dtype={"user_id": str, "item_id": str},
        what="ml-1m ratings",
        **common,
    )
    for column in ("rating", "timestamp"):
        require_values(ratings, column, folder / "ratings.dat", "number")
    # Codes outside the documented 0-20 range become missing rather than a wrong occupation.
    occupation_code = pd.to_numeric(users["occupation"], errors="coerce")
    occupation = occupation_code.map(pd.Series(ML1M_OCCUPATIONS, dtype=object))
    users = add_profiles(
        pd.DataFrame(
            {
                "user_id": users["user_id"].astype(str),
                "age": pd.to_numeric(users["age"], errors="coerce").astype("Int64"),
                "gender": users["gender"],
                "occupation": occupation,
                "zip": users["zip"],
            }
        )
    )
    # Age code 1 is the bucket "Under 18", not a one-year-old.
    under_18 = (users["age"] == 1).fillna(False).to_numpy()
    users.loc[under_18, "profile"] = users.loc[under_18, "profile"].str.replace(
        r"^a 1-year-old", "an under-18", regex=True
    )
    items, interactions = _movies_and_ratings(movies, ratings, "item_id", "user_id")
    return InteractionData("ml-1m", users, items, interactions, signal_name="rating", source=folder)


def _movies_and_ratings(
    movies: pd.DataFrame, ratings: pd.DataFrame, item_column: str, user_column: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-1m's and the CSV releases' movies ("Title (1995)", "A|B" genres) and ratings → items and
    interactions in the schema; the releases differ only in the id columns' names."""
    title, year = split_title_year(movies["title"])
    items = pd.DataFrame(
        {
            "item_id": movies[item_column].astype(str),
            "title": title,
            "year": year,
            "genres": split_genres(movies["genres"], "|"),
            "cover_path": None,
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": ratings[user_column].astype(str),
            "item_id": ratings[item_column].astype(str),
            "signal": pd.to_numeric(ratings["rating"]).astype("float64"),
            "timestamp": pd.to_numeric(ratings["timestamp"]).astype("int64"),
        }
    )
    return items, interactions


def load_ml_csv(path: str | Path, name: str = "ml-25m") -> InteractionData:
    """ml-25m, ml-20m, ml-latest, ml-latest-small: `ratings.csv` and `movies.csv` with headers, UTF-8.

    These releases have no user features: users get ids and a profile saying so.
    """
    from icg.data.records import empty_users

    folder = require_dir(path, "ratings.csv and movies.csv")
    ratings = read_table(
        folder / "ratings.csv",
        sep=",",
        columns=["userId", "movieId", "rating", "timestamp"],
        dtype={"userId": str, "movieId": str},
        what=f"{name} ratings",
    )
    movies = read_table(
        folder / "movies.csv",
        sep=",",
        columns=["movieId", "title", "genres"],
        dtype=str,
        what=f"{name} movies",
    )
    for column in ("rating", "timestamp"):
        require_values(ratings, column, folder / "ratings.csv", "number")
    items, interactions = _movies_and_ratings(movies, ratings, "movieId", "userId")
    users = empty_users(interactions["user_id"])
    return InteractionData(name, users, items, interactions, signal_name="rating", source=folder)
