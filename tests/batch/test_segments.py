"""User segments: k-means over the user encoder's embeddings, deterministic, written and reused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icg.batch.inputs import load_users
from icg.batch.segments import build_segments, fit_segments, read_segments, user_embeddings
from icg.errors import ICGError
from icg.users import TwoTowerModel


@pytest.fixture(scope="module")
def encoder(tiny_spec) -> TwoTowerModel:
    return TwoTowerModel.from_pretrained(tiny_spec.user_encoder)


@pytest.fixture(scope="module")
def users() -> pd.DataFrame:
    return load_users("ml-100k", max_users=60)


def test_segments_mapping_is_written_deterministic_and_reused(encoder, users, tmp_path) -> None:
    first = build_segments(encoder, "tiny", users, k=4, seed=0, folder=tmp_path / "a")
    again = build_segments(encoder, "tiny", users, k=4, seed=0, folder=tmp_path / "b")
    np.testing.assert_array_equal(first.centroids, again.centroids)
    pd.testing.assert_frame_equal(first.assignments, again.assignments)

    mapping = pd.read_parquet(tmp_path / "a" / "users.parquet")
    assert mapping["user_id"].tolist() == users["user_id"].tolist()  # every user, once, in input order
    assert set(mapping["segment"]) <= set(range(4)) and (mapping["distance"] >= 0).all()
    sizes = first.sizes()
    assert sizes.sum() == len(users) and list(sizes) == sorted(sizes, reverse=True)  # canonical numbering
    # a segment's centroid is the mean U_pre of its users (k-means' fixed point)
    embeds = user_embeddings(encoder, users["user_id"].tolist(), users["profile"].tolist())
    seg0 = mapping["segment"].to_numpy() == 0
    np.testing.assert_allclose(first.centroids[0], embeds[seg0].mean(0), atol=1e-4)

    stored = read_segments(tmp_path / "a")
    np.testing.assert_array_equal(stored.centroids, first.centroids)
    stamp = (tmp_path / "a" / "segments.json").stat().st_mtime_ns
    reused = build_segments(encoder, "tiny", users, k=4, seed=0, folder=tmp_path / "a")
    assert (tmp_path / "a" / "segments.json").stat().st_mtime_ns == stamp  # read back, not refitted
    assert reused.fingerprint == first.fingerprint
    other = build_segments(encoder, "tiny", users, k=3, seed=0, folder=tmp_path / "a")
    assert other.k == 3 and other.fingerprint != first.fingerprint


def test_user_embeddings_match_the_pipeline_encoder_and_cold_start(encoder) -> None:
    embeds = user_embeddings(encoder, ["1", "2", "no-such-user"], [None, None, "a 30-year-old female writer"])
    np.testing.assert_allclose(embeds[:2], encoder.encode_users(["1", "2"]).numpy(), atol=1e-6)
    cold = encoder.encode_users([None], ["a 30-year-old female writer"]).numpy()
    np.testing.assert_allclose(embeds[2:], cold, atol=1e-6)


def test_bad_segment_requests_are_clear_errors(encoder, users, tmp_path) -> None:
    embeds = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    with pytest.raises(ICGError, match="cannot make 6 segments from 5 users"):
        fit_segments(embeds, [str(i) for i in range(5)], k=6)
    with pytest.raises(ICGError, match="positive integer"):
        fit_segments(embeds, [str(i) for i in range(5)], k=0)
    twice = pd.concat([users.head(2), users.head(1)])
    with pytest.raises(ICGError, match="more than once"):
        build_segments(encoder, "tiny", twice, k=1, seed=0, folder=tmp_path)


def test_an_unreadable_profile_is_an_error_naming_its_row_before_any_work(encoder, tmp_path) -> None:
    users = pd.DataFrame(
        {"user_id": ["new-1", "new-2", "new-3"], "profile": ["loves horror", None, "qwzx plorb"]}
    )
    with pytest.raises(ICGError, match=r"users table row 2 \(user_id 'new-3'\): profile: no age, gender"):
        build_segments(encoder, "tiny", users, k=2, seed=0, folder=tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing written
