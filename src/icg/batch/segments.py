"""User segments: k-means over user-encoder embeddings U_pre; a segment is conditioned on its centroid.

A catalogue job cannot make one cover per (item, user) for millions of users, so users are grouped into K
segments and each item gets one cover per segment. The segment's conditioning is the centroid of its users'
U_pre vectors, fed to the projector exactly where one user's U_pre would go.

Segments are written to `<out>/segments/`: `users.parquet` (user_id, segment, distance to the centroid),
`centroids.parquet` (segment, size, centroid as a float32 list) and `segments.json` (K, seed, fingerprint).
A rerun with the same user encoder, users, K and seed reads them back instead of refitting, so a resumed job
conditions on bit-identical centroids. Segment numbers are canonical: largest segment first (ties: the
segment holding the earliest user in input order), so they do not depend on k-means' internal labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from icg.atomic import atomic_path, write_text_atomic
from icg.errors import ICGError

logger = logging.getLogger(__name__)

SEGMENTS_FORMAT = "icg.batch.segments/1"


@dataclass(frozen=True)
class Segments:
    """K centroids (K, D) float32 and each user's segment; `fingerprint` names the inputs that made them."""

    centroids: np.ndarray  # (K, D) float32
    assignments: pd.DataFrame  # user_id (str), segment (int), distance (float)
    seed: int
    fingerprint: str

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """Users per segment → (K,)."""
        return np.bincount(self.assignments["segment"].to_numpy(), minlength=self.k)


def segments_fingerprint(
    encoder_id: str, user_ids: Sequence[str], profiles: Sequence[object], k: int, seed: int
) -> str:
    """A short hash of everything the segments depend on (encoder weights id, users, K, seed)."""
    digest = hashlib.sha256(f"{SEGMENTS_FORMAT}|{encoder_id}|k={k}|seed={seed}".encode())
    for user_id, profile in zip(user_ids, profiles, strict=True):
        digest.update(f"\n{user_id}\t{'' if profile is None else profile}".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def user_embeddings(
    encoder, user_ids: Sequence[str], profiles: Sequence[object] | None = None, batch_size: int = 4096
) -> np.ndarray:
    """U_pre for each user → (U, D) float32; ids the encoder does not know are encoded from their profile.

    `encoder` is a `TwoTowerModel` (the pipeline's `user_encoder`); this is what `CoverPipeline.encode_users`
    computes, batched and without building CoverUser objects for a whole user table.
    """
    profiles = list(profiles) if profiles is not None else [None] * len(user_ids)
    if len(profiles) != len(user_ids):
        raise ValueError(f"got {len(user_ids)} user ids but {len(profiles)} profiles")
    parts = []
    for start in range(0, len(user_ids), batch_size):
        ids = [str(u) for u in user_ids[start : start + batch_size]]
        profs = [p if isinstance(p, str | dict) and p else None for p in profiles[start : start + batch_size]]
        parts.append(encoder.encode_users(ids, profs, strict=False).float().cpu().numpy())
    embeds = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if not np.isfinite(embeds).all():
        raise ValueError("user embeddings contain NaN or infinite values; check the user encoder weights")
    return embeds.astype(np.float32)  # (U, D)


def fit_segments(
    embeddings: np.ndarray, user_ids: Sequence[str], k: int, seed: int = 0, fingerprint: str = ""
) -> Segments:
    """k-means (sklearn, k-means++ init, seeded) over `embeddings` (U, D) → canonically numbered Segments."""
    if embeddings.ndim != 2 or len(embeddings) != len(user_ids):
        raise ValueError(f"embeddings must be (U, D) with U = {len(user_ids)} users, got {embeddings.shape}")
    if not isinstance(k, int) or k < 1:
        raise ICGError(f"the number of segments must be a positive integer, got {k!r}")
    if k > len(user_ids):
        raise ICGError(f"cannot make {k} segments from {len(user_ids)} users; lower --segments")
    data = embeddings.astype(np.float64)
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(data)
    labels = km.labels_
    # canonical numbering: biggest segment first, ties by the first user (in input order) it holds
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == c)[0] if sizes[c] else len(labels) for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    centroids = km.cluster_centers_[order].astype(np.float32)  # (K, D)
    segment = relabel[labels]
    distance = np.linalg.norm(data - centroids[segment].astype(np.float64), axis=1)
    assignments = pd.DataFrame(
        {"user_id": [str(u) for u in user_ids], "segment": segment.astype(np.int64), "distance": distance}
    )
    if (sizes == 0).any():
        logger.warning("k-means left %d empty segment(s); their centroids are still used", (sizes == 0).sum())
    return Segments(centroids=centroids, assignments=assignments, seed=seed, fingerprint=fingerprint)


def write_segments(segments: Segments, folder: str | Path) -> Path:
    """users.parquet, centroids.parquet and segments.json (each atomic; the JSON last marks completion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "users.parquet") as tmp:
        segments.assignments.to_parquet(tmp, index=False)
    centroids = pd.DataFrame(
        {
            "segment": np.arange(segments.k, dtype=np.int64),
            "size": segments.sizes().astype(np.int64),
            "centroid": [row.tolist() for row in segments.centroids],
        }
    )
    with atomic_path(folder / "centroids.parquet") as tmp:
        centroids.to_parquet(tmp, index=False)
    meta = {
        "format": SEGMENTS_FORMAT,
        "k": segments.k,
        "seed": segments.seed,
        "dim": int(segments.centroids.shape[1]),
        "users": len(segments.assignments),
        "fingerprint": segments.fingerprint,
    }
    write_text_atomic(folder / "segments.json", json.dumps(meta, indent=2))
    return folder


def read_segments(folder: str | Path) -> Segments | None:
    """What `write_segments` wrote, or None when the folder holds no complete segments."""
    folder = Path(folder)
    meta_file = folder / "segments.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != SEGMENTS_FORMAT:
        raise ICGError(f"{meta_file}: not a segments file of this ICG version ({meta.get('format')!r})")
    table = pd.read_parquet(folder / "centroids.parquet").sort_values("segment")
    centroids = np.stack([np.asarray(c, dtype=np.float32) for c in table["centroid"]])  # (K, D)
    assignments = pd.read_parquet(folder / "users.parquet")
    return Segments(centroids, assignments, seed=int(meta["seed"]), fingerprint=str(meta["fingerprint"]))


def segment_inputs(users: pd.DataFrame) -> tuple[list[str], list[object]]:
    """(user ids, profiles or None) of a users table; a missing column or a repeated id is an ICGError."""
    if "user_id" not in users.columns:
        raise ICGError("the users table needs a user_id column")
    if users.empty:
        raise ICGError("the users table is empty")
    ids = users["user_id"].astype(str)
    if ids.duplicated().any():
        raise ICGError(f"user id '{ids[ids.duplicated()].iloc[0]}' appears more than once in the users table")
    profiles = users["profile"].tolist() if "profile" in users.columns else [None] * len(ids)
    return ids.tolist(), [
        None if p is None or (isinstance(p, float) and np.isnan(p)) else p for p in profiles
    ]


def check_user_profiles(encoder, user_ids: Sequence[str], profiles: Sequence[object]) -> None:
    """Every profile sentence of a users table is one the encoder can read (the rule of `icg generate` and
    the service): an ICGError naming the row and user, before any user is embedded."""
    from icg.validation import InputError, check_profile

    vocab = getattr(encoder, "vocab", None)
    for row, (user_id, profile) in enumerate(zip(user_ids, profiles, strict=True)):
        if isinstance(profile, str) and profile:
            try:
                check_profile(profile, vocab)
            except InputError as exc:
                raise ICGError(f"users table row {row} (user_id '{user_id}'): profile: {exc.msg}") from None


def build_segments(
    encoder,
    encoder_id: str,
    users: pd.DataFrame,
    k: int,
    seed: int,
    folder: str | Path,
) -> Segments:
    """Segments for `users` (user_id, optional profile), reused from `folder` when the fingerprint matches."""
    user_ids, profiles = segment_inputs(users)
    fingerprint = segments_fingerprint(encoder_id, user_ids, profiles, k, seed)
    found = read_segments(folder)
    if found is not None and found.fingerprint == fingerprint:
        logger.info("segments: reusing %d segments from %s", found.k, folder)
        return found
    check_user_profiles(encoder, user_ids, profiles)
    embeds = user_embeddings(encoder, user_ids, profiles)  # (U, D)
    segments = fit_segments(embeds, user_ids, k, seed, fingerprint)
    write_segments(segments, folder)
    logger.info("segments: %d users → %d segments, sizes %s", len(user_ids), k, segments.sizes().tolist())
    return segments
