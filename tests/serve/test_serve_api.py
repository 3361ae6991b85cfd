"""The cover API through FastAPI's TestClient on the tiny preset: covers, cache, ids, validation, queue."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(color=(200, 30, 30), size=(40, 30), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def _loc(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    return detail[0]["loc"][-1]


def test_cover_as_png_then_json_then_by_id_and_from_cache(make_client, counting):
    client = make_client()
    form = {"item_id": "1", "user_id": "1", "seed": "3"}
    first = client.post("/v1/covers", data=form)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content.startswith(PNG_MAGIC) and first.headers["x-cache"] == "miss"
    cover_id = first.headers["x-cover-id"]
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.size == (64, 64)
    assert counting.calls == 1

    again = client.post("/v1/covers", data={**form, "format": "json"})  # same key: served from disk
    assert again.status_code == 200 and counting.calls == 1
    body = again.json()
    assert body["id"] == cover_id and body["cached"] is True and again.headers["x-cache"] == "hit"
    assert body["url"].endswith(f"/v1/covers/{cover_id}")
    assert body["reference_url"].endswith("/v1/items/1/reference")
    assert body["explicit_prompt"] and body["seed"] == 3 and body["num_inference_steps"] == 1
    assert body["item"]["title"] == "Toy Story" and body["user"]["kind"] == "known"
    assert body["preset"] == "tiny" and len(body["adapter_hash"]) == 16

    fetched = client.get(body["url"])
    assert fetched.status_code == 200 and fetched.content == first.content
    meta = client.get(f"/v1/covers/{cover_id}/metadata").json()
    assert meta["explicit_prompt"] == body["explicit_prompt"] and meta["id"] == cover_id
    reference = client.get(body["reference_url"])
    assert reference.status_code == 200 and reference.content.startswith(PNG_MAGIC)

    other_seed = client.post("/v1/covers", data={**form, "seed": "4", "format": "json"}).json()
    other_steps = client.post("/v1/covers", data={**form, "steps": "2", "format": "json"}).json()
    other_user = client.post("/v1/covers", data={**form, "user_id": "2", "format": "json"}).json()
    assert len({cover_id, other_seed["id"], other_steps["id"], other_user["id"]}) == 4
    assert counting.calls == 4


def test_cache_survives_a_restart(make_client, counting, tmp_path):
    form = {"item_id": "50", "user_id": "7", "format": "json"}
    first = make_client(cache_dir=tmp_path / "shared").post("/v1/covers", data=form).json()
    second_client = make_client(cache_dir=tmp_path / "shared")
    second = second_client.post("/v1/covers", data=form).json()
    assert second["id"] == first["id"] and second["cached"] is True and counting.calls == 1
    assert second_client.get(f"/v1/covers/{first['id']}").status_code == 200


def test_uploaded_item_and_cold_start_profiles(make_client, counting):
    client = make_client()
    files = {"image": ("ref.png", _png(), "image/png")}
    up = client.post("/v1/covers", data={"title": "My Movie", "user_id": "1", "format": "json"}, files=files)
    assert up.status_code == 200, up.text
    body = up.json()
    assert body["item"]["source"] == "upload" and body["reference_url"] is None and body["explicit_prompt"]
    files = {"image": ("same-pixels.png", _png(), "application/octet-stream")}
    again = client.post(
        "/v1/covers", data={"title": "My Movie", "user_id": "1", "format": "json"}, files=files
    )
    assert again.json()["id"] == body["id"] and again.json()["cached"] is True

    calls = counting.calls
    cold = {
        "item_id": "1",
        "user_id": "no-such-user",
        "profile": "a 30-year-old female writer",
        "format": "json",
    }
    a = client.post("/v1/covers", data=cold).json()
    assert a["user"]["kind"] == "cold-start" and a["user"]["segment"].startswith("u0-")
    same_segment = {"item_id": "1", "profile": "A female writer, aged 30", "format": "json"}
    b = client.post("/v1/covers", data=same_segment).json()
    assert b["id"] == a["id"] and b["cached"] is True and counting.calls == calls + 1


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"user_id": "1"}, "item_id"),  # no item at all
        ({"item_id": "999999", "user_id": "1"}, "item_id"),
        ({"item_id": "../1", "user_id": "1"}, "item_id"),
        ({"item_id": "1", "title": "X", "user_id": "1"}, "item_id"),
        ({"title": "X", "user_id": "1"}, "image"),
        ({"item_id": "1"}, "user_id"),
        ({"item_id": "1", "user_id": "no-such-user"}, "user_id"),
        ({"item_id": "1", "user_id": "a/b"}, "user_id"),
        ({"item_id": "1", "profile": "zzz qqq"}, "profile"),
        ({"item_id": "1", "user_id": "1", "seed": "-1"}, "seed"),
        ({"item_id": "1", "user_id": "1", "seed": "abc"}, "seed"),
        ({"item_id": "1", "user_id": "1", "steps": "0"}, "steps"),
        ({"item_id": "1", "user_id": "1", "steps": "51"}, "steps"),
        ({"item_id": "1", "user_id": "1", "format": "gif"}, "format"),
        ({"item_id": "1", "user_id": "1", "user_scale": "-0.5"}, "user_scale"),
        ({"item_id": "1", "user_id": "1", "user_scale": "11"}, "user_scale"),
        ({"item_id": "1", "user_id": "1", "user_scale": "strong"}, "user_scale"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(make_client, counting, form, field):
    response = make_client().post("/v1/covers", data=form)
    assert response.status_code == 422, response.text
    assert _loc(response) == field
    assert counting.calls == 0


def test_image_without_title_is_422_title(make_client):
    response = make_client().post(
        "/v1/covers", data={"user_id": "1"}, files={"image": ("r.png", _png(), "image/png")}
    )
    assert response.status_code == 422 and _loc(response) == "title"


def test_oversize_uploads_are_413_and_non_images_415(make_client, counting):
    client = make_client(max_upload_bytes=2048)
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()  # noise does not compress: a PNG well over the 2 KiB limit
    noisy.save(buffer, format="PNG")
    big = buffer.getvalue()
    assert len(big) > 2048
    form = {"title": "X", "user_id": "1"}
    over = client.post("/v1/covers", data=form, files={"image": ("big.png", big, "image/png")})
    assert over.status_code == 413 and _loc(over) == "image"
    huge = client.post("/v1/covers", data=form, files={"image": ("huge.png", b"\0" * 200_000, "image/png")})
    assert huge.status_code == 413  # refused by the body limit before any parsing

    text = client.post(
        "/v1/covers", data=form, files={"image": ("notes.png", b"just text\n" * 20, "image/png")}
    )
    assert text.status_code == 415 and _loc(text) == "image"
    tiff = client.post(
        "/v1/covers", data=form, files={"image": ("r.tif", _png(size=(8, 8), fmt="TIFF"), "image/tiff")}
    )
    assert tiff.status_code == 415 and "TIFF" in tiff.json()["detail"][0]["msg"]
    empty = client.post("/v1/covers", data=form, files={"image": ("e.png", b"", "image/png")})
    assert empty.status_code == 415
    assert counting.calls == 0


def test_full_queue_is_503_with_retry_after_and_the_loop_stays_free(make_client, counting):
    client = make_client(max_queue=1)
    counting.gate = threading.Event()
    results: dict[str, int] = {}

    def post(name: str, seed: int) -> None:
        results[name] = client.post(
            "/v1/covers", data={"item_id": "1", "user_id": "1", "seed": str(seed)}
        ).status_code

    running = threading.Thread(target=post, args=("running", 1))
    running.start()
    assert counting.started.wait(10)  # the worker is inside the pipeline, blocked on the gate
    waiting = threading.Thread(target=post, args=("waiting", 2))
    waiting.start()
    deadline = time.monotonic() + 10
    while client.app.state.worker.pending < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    duplicate = threading.Thread(target=post, args=("duplicate", 1))  # same key as the running job
    duplicate.start()
    while client.app.state.worker.stats()["joined"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    health = client.get("/healthz").json()  # answered while the model is busy: the loop is not blocked
    assert health["queue"]["busy"] is True and health["queue"]["pending"] == 1

    refused = client.post("/v1/covers", data={"item_id": "1", "user_id": "1", "seed": "3"})
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1

    counting.gate.set()
    for thread in (running, waiting, duplicate):
        thread.join(20)
    assert results == {"running": 200, "waiting": 200, "duplicate": 200}
    assert counting.calls == 2  # the duplicate joined the running job


@pytest.mark.parametrize(
    "path",
    [
        "/v1/covers/..%2F..%2Fetc%2Fpasswd",
        "/v1/covers/%2e%2e",
        "/v1/covers/" + "A" * 64,
        "/v1/covers/" + "0" * 63,
        "/v1/covers/" + "0" * 64,
        "/v1/covers/" + "0" * 64 + "/metadata",
        "/v1/covers/" + "0" * 64 + ".png",
        "/v1/covers/..%2Fcovers%2F00",
        "/v1/items/..%2F..%2Fetc%2Fpasswd/reference",
        "/v1/items/999999/reference",
        "/v1/items/999999",
    ],
)
def test_bad_ids_are_404(make_client, path):
    assert make_client().get(path).status_code == 404


def test_a_file_planted_in_the_cache_folder_is_not_served(make_client, tmp_path):
    client = make_client(cache_dir=tmp_path / "c")
    planted = "ab" * 32
    folder = tmp_path / "c" / "covers" / planted[:2]
    folder.mkdir(parents=True)
    (folder / f"{planted}.png").write_bytes(_png())
    assert client.get(f"/v1/covers/{planted}").status_code == 404  # not in the index


def test_items_users_health_openapi_and_gallery(make_client):
    client = make_client()
    items = client.get("/v1/items", params={"q": "toy story"}).json()
    assert items["dataset"] == "ml-100k" and items["items"][0]["title"] == "Toy Story"
    assert client.get("/v1/items", params={"q": "x" * 101}).status_code == 422
    users = client.get("/v1/users", params={"q": "writer", "limit": 5}).json()
    assert len(users["users"]) == 5 and all("writer" in u["profile"] and u["known"] for u in users["users"])

    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["preset"] == "tiny" and health["personalized"] is True
    assert health["queue"]["max_queue"] == 32 and health["default_steps"] == 1

    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/covers", "/v1/covers/{cover_id}", "/v1/items", "/v1/users", "/healthz"):
        assert route in paths
    fields = paths["/v1/covers"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in fields
    assert client.get("/docs").status_code == 200

    page = client.get("/")
    assert page.status_code == 200 and "ICG cover gallery" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_no_dataset_means_uploads_only(make_client):
    client = make_client(dataset=None)
    assert client.get("/v1/items").status_code == 404
    response = client.post("/v1/covers", data={"item_id": "1", "user_id": "1"})
    assert response.status_code == 422 and _loc(response) == "item_id"


def test_a_preset_is_loaded_once(monkeypatch, serve_spec, serve_pipeline, ml100k, tmp_path):
    from fastapi.testclient import TestClient

    import icg.serve.app as serve_app

    loads = []

    def fake_load(spec, *args, **kwargs):
        loads.append(spec)
        return serve_pipeline

    monkeypatch.setattr(serve_app, "load_cover_pipeline", fake_load)
    monkeypatch.setattr(serve_pipeline.context_encoder, "cache", serve_pipeline.context_encoder.cache)
    app = serve_app.create_app(serve_spec, dataset=ml100k, cache_dir=tmp_path / "once")
    with TestClient(app) as client:
        for seed in ("1", "2"):
            assert (
                client.post("/v1/covers", data={"item_id": "2", "user_id": "3", "seed": seed}).status_code
                == 200
            )
    assert loads == [serve_spec]
    assert (tmp_path / "once" / "context").is_dir()  # item contexts are cached beside the covers


def test_a_flux_preset_serves_through_the_same_api(ml100k, tmp_path):
    from fastapi.testclient import TestClient

    from icg.presets import tiny_flux_preset
    from icg.serve import create_app

    spec = tiny_flux_preset(tmp_path / "tiny-flux").replace(num_inference_steps=1)
    with TestClient(create_app(spec, dataset=ml100k, cache_dir=tmp_path / "cache")) as client:
        response = client.post("/v1/covers", data={"item_id": "1", "user_id": "1", "format": "json"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["preset"] == "tiny-flux" and body["explicit_prompt"]
        with Image.open(io.BytesIO(client.get(body["url"]).content)) as image:
            assert image.size == (32, 32)


def test_user_scale_is_a_cover_of_its_own_and_zero_is_the_context_only_cover(make_client, counting):
    client = make_client()
    form = {"item_id": "1", "user_id": "1", "format": "json"}
    trained = client.post("/v1/covers", data=form).json()
    default = client.post("/v1/covers", data={**form, "user_scale": "1"}).json()
    assert default["id"] == trained["id"] and default["cached"] is True and trained["user_scale"] == 1.0
    stronger = client.post("/v1/covers", data={**form, "user_scale": "2"}).json()
    off = client.post("/v1/covers", data={**form, "user_scale": "0", "format": "png"})
    assert (
        len({trained["id"], stronger["id"], off.headers["x-cover-id"]}) == 3 and stronger["user_scale"] == 2.0
    )
    # user 2 at scale 0 gets user 1's scale-0 pixels: the user no longer enters the cover
    other = client.post("/v1/covers", data={**form, "user_id": "2", "user_scale": "0", "format": "png"})
    assert other.content == off.content and counting.calls == 4
