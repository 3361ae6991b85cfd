"""The rating API through FastAPI's TestClient: queue, submission, validation, anonymity, persistence."""

from __future__ import annotations

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from icg.rating.app import create_app, rater_order


@pytest.fixture
def client(study, tmp_path):
    with TestClient(create_app(study, tmp_path / "ratings.sqlite")) as test_client:
        yield test_client


def token(study, rater: str) -> str:
    """The invite token of a rater id made by make_study (r01, r02, ...)."""
    return next(t for t, r in study.invites.items() if r == rater)


def _rows(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT rater, image_id, method, score, revisions FROM ratings").fetchall()


def _assert_no_secrets(study, text: str) -> None:
    """Nothing the browser receives may name a method, an item, a user or a file path."""
    for method in study.methods:
        assert method not in text
    for image in study.images:
        assert image.item not in text and image.file not in text
    assert str(study.root) not in text


def test_page_is_served_with_security_headers(client, study):
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert "Cover rating: unit" in response.text and "12 covers" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    _assert_no_secrets(study, response.text)
    for hidden in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(hidden).status_code == 404


def test_queue_is_shuffled_per_rater_and_anonymous(client, study):
    first = client.get("/api/queue", params={"token": token(study, "r01")}).json()
    assert first["total"] == 12 and first["done"] == 0 and first["rater"] == "r01"
    ids = [item["id"] for item in first["remaining"]]
    assert sorted(ids) == sorted(study.by_id) and ids == rater_order(study, "r01")
    assert all(item["url"] == f"images/{item['id']}" for item in first["remaining"])
    assert set(first["remaining"][0]) == {"id", "url", "caption"}
    assert (
        client.get("/api/queue", params={"token": token(study, "r01")}).json() == first
    )  # stable for a rater
    other = [
        item["id"]
        for item in client.get("/api/queue", params={"token": token(study, "r02")}).json()["remaining"]
    ]
    assert other != ids and sorted(other) == sorted(ids)
    _assert_no_secrets(study, json.dumps(first))


def test_cover_by_id_and_no_traversal(client, study):
    image = study.images[0]
    response = client.get(f"/images/{image.id}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (study.root / image.file).read_bytes()
    assert "content-disposition" not in response.headers
    _assert_no_secrets(study, json.dumps(dict(response.headers)))
    for bad in (
        "0123456789abcdef",
        "..%2F..%2Fetc%2Fpasswd",
        "..%2Fmanifest.json",
        "%2E%2E",
        "manifest.json",
    ):
        response = client.get(f"/images/{bad}")
        assert response.status_code == 404, bad
        assert "root:" not in response.text and "methodalpha" not in response.text
    assert client.get("/images/../manifest.json").status_code == 404
    assert client.get("/manifest.json").status_code == 404


def test_rating_is_stored_and_a_repeat_replaces_it(client, study, tmp_path):
    image = study.images[0]
    response = client.post(
        "/api/ratings", json={"token": " " + token(study, "r01") + " ", "image_id": image.id, "score": 2}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"replaced": False, "done": 1, "total": 12}
    _assert_no_secrets(study, response.text)
    again = client.post("/api/ratings", json={"token": token(study, "r01"), "image_id": image.id, "score": 3})
    assert again.json() == {"replaced": True, "done": 1, "total": 12}
    assert _rows(tmp_path / "ratings.sqlite") == [("r01", image.id, image.method, 3, 1)]
    queue = client.get("/api/queue", params={"token": token(study, "r01")}).json()
    assert queue["done"] == 1 and image.id not in [item["id"] for item in queue["remaining"]]


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("score", {"score": 0}),
        ("score", {"score": 4}),
        ("score", {"score": -1}),
        ("score", {"score": 2.5}),
        ("score", {"score": "2"}),
        ("score", {"score": True}),
        ("score", {"score": None}),
        ("token", {"token": ""}),
        ("token", {"token": "   "}),
        ("token", {"token": "x" * 65}),
        ("token", {"token": "<script>"}),
        ("token", {"token": "a\nb"}),
        ("token", {"token": "ann"}),  # a name is not an invite
        ("image_id", {"image_id": "../../etc/passwd"}),
        ("image_id", {"image_id": "0123456789abcdef"}),  # well-formed but not in the manifest
        ("image_id", {"image_id": ""}),
        ("method", {"method": "methodalpha"}),  # extra fields are refused
    ],
)
def test_bad_submissions_are_refused_and_name_the_field(client, study, tmp_path, field, change):
    payload = {"token": token(study, "r01"), "image_id": study.images[0].id, "score": 2, **change}
    response = client.post("/api/ratings", json=payload)
    assert response.status_code == 422, response.text
    fields = [error["loc"][-1] for error in response.json()["detail"]]
    assert field in fields
    assert _rows(tmp_path / "ratings.sqlite") == []


@pytest.mark.parametrize("missing", ["token", "image_id", "score"])
def test_missing_fields(client, study, missing):
    payload = {"token": token(study, "r01"), "image_id": study.images[0].id, "score": 2}
    del payload[missing]
    response = client.post("/api/ratings", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", missing]


def test_malformed_and_oversize_bodies(client, study, tmp_path):
    assert (
        client.post(
            "/api/ratings", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert client.post("/api/ratings", json=[1, 2, 3]).status_code == 422
    big = {"token": token(study, "r01"), "image_id": study.images[0].id, "score": 2, "pad": "x" * 5000}
    response = client.post("/api/ratings", json=big)
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold for a streamed body too
        yield b'{"rater": "ann", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    streamed = client.post("/api/ratings", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/api/queue", params={"token": ""}).status_code == 422
    assert client.get("/api/queue").status_code == 422
    assert _rows(tmp_path / "ratings.sqlite") == []


def test_ratings_survive_an_app_restart(study, tmp_path):
    db = tmp_path / "ratings.sqlite"
    order = rater_order(study, "r01")
    with TestClient(create_app(study.root, db)) as first:
        for image_id, score in zip(order[:3], (1, 2, 3), strict=True):
            assert first.post(
                "/api/ratings", json={"token": token(study, "r01"), "image_id": image_id, "score": score}
            ).is_success
    with TestClient(create_app(study.root, db)) as second:
        queue = second.get("/api/queue", params={"token": token(study, "r01")}).json()
        assert queue["done"] == 3 and [item["id"] for item in queue["remaining"]] == order[3:]
        assert second.get("/api/queue", params={"token": token(study, "r02")}).json()["done"] == 0
    assert sorted(row[3] for row in _rows(db)) == [1, 2, 3]


def test_default_db_lives_in_the_study(study):
    with TestClient(create_app(study.root)) as client:
        client.post(
            "/api/ratings", json={"token": token(study, "r01"), "image_id": study.images[0].id, "score": 1}
        )
    assert len(_rows(study.root / "ratings.sqlite")) == 1


def test_only_invite_tokens_can_rate_and_one_vote_per_cover(client, study, tmp_path):
    """Issue 19, defect 1: 100 invented raters store nothing; a token re-voting replaces its vote."""
    image = study.images[0]
    for k in range(100):
        fake = f"{k:032x}"  # well-formed, but no invite
        response = client.post("/api/ratings", json={"token": fake, "image_id": image.id, "score": 3})
        assert response.status_code == 403 and response.json()["detail"][0]["type"] == "unknown_token"
    assert client.get("/api/queue", params={"token": f"{7:032x}"}).status_code == 403
    for score in (3, 3, 1):
        client.post("/api/ratings", json={"token": token(study, "r01"), "image_id": image.id, "score": score})
    assert _rows(tmp_path / "ratings.sqlite") == [("r01", image.id, image.method, 1, 2)]


def test_covers_carry_no_last_modified_or_etag(client, study):
    response = client.get(f"/images/{study.images[0].id}")
    assert response.status_code == 200
    assert "last-modified" not in response.headers and "etag" not in response.headers


def test_a_study_without_invites_is_refused(study):
    from icg.errors import DataError

    (study.root / "raters.json").unlink()
    with pytest.raises(DataError, match="no rater invites"):
        create_app(study.root)
