"""The SQLite store (WAL, atomic upserts, concurrent writers) and the summary math on known data."""

from __future__ import annotations

import math
import sqlite3
import threading

import pytest

from icg.rating.store import Rating, RatingStore
from icg.rating.summary import summarize, t_interval

# Student-t 97.5% quantiles from a printed table (df=2: 4.303, df=9: 2.262), not from the code under test.
T_DF2, T_DF9 = 4.3027, 2.2622


def test_store_uses_wal_and_replaces_repeats(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.add("ann", "aa11", "m1", 1, now=10.0) is False
    assert store.add("ann", "aa11", "m1", 3, now=20.0) is True
    assert store.add("bob", "aa11", "m1", 2, now=30.0) is False
    assert store.all() == [
        Rating("ann", "aa11", "m1", 3, 10.0, 20.0, 1),
        Rating("bob", "aa11", "m1", 2, 30.0, 30.0, 0),
    ]
    assert store.rated_by("ann") == {"aa11": 3} and store.count() == 2
    with pytest.raises(ValueError, match="score must be 1, 2 or 3"):
        store.add("ann", "bb22", "m1", 4)
    with pytest.raises(sqlite3.IntegrityError):
        store.add("", "bb22", "m1", 2)  # the schema's CHECK refuses an empty rater too
    assert RatingStore(tmp_path / "r.sqlite").count() == 2  # reopened: persisted


def test_store_concurrent_writers_lose_nothing(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")

    def write(rater: str) -> None:
        for k in range(20):
            store.add(rater, f"{k:04x}", f"m{k % 2}", 1 + k % 3)

    threads = [threading.Thread(target=write, args=(f"r{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 80


def test_t_interval_known_values():
    low, high = t_interval([1, 2, 3])  # mean 2, s = 1, n = 3
    assert low == pytest.approx(2 - T_DF2 / math.sqrt(3), abs=1e-3)
    assert high == pytest.approx(2 + T_DF2 / math.sqrt(3), abs=1e-3)
    scores = [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]  # mean 2.3, sum of squares 6.1, s^2 = 6.1 / 9
    half = T_DF9 * math.sqrt(6.1 / 9) / math.sqrt(10)
    assert t_interval(scores) == pytest.approx((2.3 - half, 2.3 + half), abs=1e-3)
    assert t_interval([2, 2, 2]) == (2.0, 2.0)
    assert t_interval([3]) is None and t_interval([]) is None


def _ratings(spec):
    return [Rating(r, f"{m}-{i}", m, s, 0.0, 0.0, 0) for r, m, i, s in spec]


def test_summarize_known_data():
    ratings = _ratings(
        [("ann", "icg", 0, 3), ("ann", "icg", 1, 2), ("bob", "icg", 0, 1), ("ann", "base", 0, 2)]
    )
    rows = {row.method: row for row in summarize(ratings, ["icg", "base", "unrated"])}
    assert list(rows) == ["base", "icg", "unrated"]
    icg = rows["icg"]  # rater means: ann 2.5, bob 1.0 → mean 1.75, std 1.0607 over k = 2 raters
    assert (icg.n, icg.mean, icg.n_raters, icg.n_images) == (3, 1.75, 2, 2)
    assert icg.std == pytest.approx(1.5 / math.sqrt(2)) and icg.rating_mean == 2.0
    assert icg.ci_low == pytest.approx(1.75 - 12.7062 * (1.5 / math.sqrt(2)) / math.sqrt(2), abs=1e-3)
    base = rows["base"]
    assert (base.n, base.mean, base.std, base.ci_low, base.n_raters) == (1, 2.0, None, None, 1)
    assert rows["unrated"].n == 0 and rows["unrated"].mean is None


def test_one_rater_with_many_ratings_weighs_as_one_rater():
    """Issue 19, defect 1: the interval is over raters; 100 ratings by one rater do not make it narrow."""
    spec = [("stuffer", "icg", k, 3) for k in range(100)]
    spec += [("ann", "icg", 0, 1), ("bob", "icg", 0, 1)]
    icg = summarize(_ratings(spec))[0]
    assert icg.n == 102 and icg.n_raters == 3
    assert icg.mean == pytest.approx(5 / 3)  # (3 + 1 + 1) / 3 raters, not 302 / 102
    assert icg.ci_high - icg.ci_low > 4  # three raters, one disagreeing: a wide interval
