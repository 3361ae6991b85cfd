"""Ratings in SQLite (stdlib `sqlite3`, WAL journal): one row per (rater, image), each write one transaction.

Policy for repeats: a second rating of the same image by the same rater *replaces* the score (a rater who
reloads the page or changes their mind keeps one vote per image); `revisions` counts how often that happened
and `created_at` keeps the first time. The method is copied from the manifest into each row so that the
summary needs only the database, but the browser never receives it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    rater      TEXT    NOT NULL CHECK (length(rater) BETWEEN 1 AND 64),
    image_id   TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    score      INTEGER NOT NULL CHECK (score BETWEEN 1 AND 3),
    created_at REAL    NOT NULL,
    updated_at REAL    NOT NULL,
    revisions  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater, image_id)
);
CREATE INDEX IF NOT EXISTS ratings_method ON ratings (method);
"""

_UPSERT = """
INSERT INTO ratings (rater, image_id, method, score, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (rater, image_id) DO UPDATE SET
    score = excluded.score, method = excluded.method, updated_at = excluded.updated_at,
    revisions = ratings.revisions + 1
"""


@dataclass(frozen=True)
class Rating:
    rater: str
    image_id: str
    method: str
    score: int
    created_at: float
    updated_at: float
    revisions: int


class RatingStore:
    """A small SQLite store. Opens one short-lived connection per call, so it is safe from any thread."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at WAL checkpoints; safe against corruption
            yield conn
        finally:
            conn.close()

    def add(self, rater: str, image_id: str, method: str, score: int, *, now: float | None = None) -> bool:
        """Store a rating atomically; returns True when it replaced an earlier one by the same rater."""
        if not 1 <= int(score) <= 3:
            raise ValueError(f"score must be 1, 2 or 3, got {score!r}")
        stamp = time.time() if now is None else now
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                existed = conn.execute(
                    "SELECT 1 FROM ratings WHERE rater = ? AND image_id = ?", (rater, image_id)
                ).fetchone()
                conn.execute(_UPSERT, (rater, image_id, method, int(score), stamp, stamp))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return existed is not None

    def rated_by(self, rater: str) -> dict[str, int]:
        """Image id → score for one rater."""
        with self._connect() as conn:
            rows = conn.execute("SELECT image_id, score FROM ratings WHERE rater = ?", (rater,)).fetchall()
        return dict(rows)

    def all(self) -> list[Rating]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT rater, image_id, method, score, created_at, updated_at, revisions FROM ratings "
                "ORDER BY created_at, rater, image_id"
            ).fetchall()
        return [Rating(*row) for row in rows]

    def count(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
