"""The cover API under hostile use (issue 19, defects 2, 4 and 5): admission before work, a bounded cache that
heals itself, short 422s, URLs that ignore `Host`, the CLI's rules and messages."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from icg.serve.admission import AdmissionMiddleware, DecodeSlots, TokenBuckets
from icg.serve.inputs import upload_pixel_cap


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_burst_from_one_client_gets_429_with_retry_after(make_client):
    client = make_client(rate_limit=1.0, rate_burst=3)
    codes = [client.get("/v1/items", params={"q": "toy"}).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    refused = client.get("/v1/items")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert client.get("/healthz").status_code == 200  # monitoring is never limited


def test_token_buckets_refill_per_client_and_forget_idle_clients():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=2, max_clients=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.5]  # the third waits half a token-time
    assert buckets.take("b") == 0.0  # another client has its own bucket
    now[0] = 1.0
    assert buckets.take("a") == 0.0  # refilled
    for name in "cdef":
        buckets.take(name)
    assert len(buckets) == 3  # memory stays bounded under many clients


def test_api_key_is_required_as_a_bearer_header(make_client):
    client = make_client(api_key="s3cret-key-123", rate_limit=None)
    missing = client.get("/v1/items")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/items", headers={"authorization": "Bearer wrong-key-1"}).status_code == 401
    ok = client.get("/v1/items", headers={"authorization": "Bearer s3cret-key-123"})
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200
    doc = client.get("/openapi.json").json()
    assert doc["paths"]["/v1/items"]["get"]["security"] == [{"bearer": []}]


def test_serve_refuses_a_public_address_without_an_api_key(monkeypatch, serve_spec, tmp_path):
    import typer
    import uvicorn

    from icg.serve.cli import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.delenv("ICG_API_KEY", raising=False)
    cli = typer.Typer()
    cli.command("serve")(serve)
    preset_dir = str(Path(serve_spec.base_model).parent)
    args = [
        "--preset",
        preset_dir,
        "--dataset",
        "none",
        "--cache-dir",
        str(tmp_path / "c"),
        "--host",
        "0.0.0.0",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "--api-key" in str(result.exception)


def test_decode_slots_are_checked_before_the_body_is_read():
    """With every slot taken, an upload is answered 503 without one byte of its body being received."""
    slots = DecodeSlots(1, wait_s=0.05)
    reads: list[str] = []
    sent: list[dict] = []

    async def app(scope, receive, send):  # pragma: no cover - must never run
        raise AssertionError("the app ran")

    async def receive():
        reads.append("body")
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def send(message):
        sent.append(message)

    async def scenario():
        held = await slots.acquire()  # another upload is being decoded
        middleware = AdmissionMiddleware(app, buckets=None, api_key=None, slots=slots)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/covers",
            "headers": [],
            "client": ("1.2.3.4", 1),
        }
        await middleware(scope, receive, send)
        held()

    asyncio.run(scenario())
    assert reads == [] and sent[0]["status"] == 503 and slots.refused == 1
    assert dict(sent[0]["headers"])[b"retry-after"] == b"1"


def test_a_full_queue_refuses_an_upload_before_decoding_it(make_client, counting, monkeypatch):
    import icg.serve.app as serve_app

    decoded: list[int] = []
    real = serve_app.decode_image
    monkeypatch.setattr(serve_app, "decode_image", lambda *a: decoded.append(1) or real(*a))
    client = make_client(max_queue=1, rate_limit=None)
    counting.gate = threading.Event()
    threads = [
        threading.Thread(
            target=client.post,
            args=("/v1/covers",),
            kwargs={"data": {"item_id": "1", "user_id": "1", "seed": str(s)}},
        )
        for s in (1, 2)
    ]
    threads[0].start()
    assert counting.started.wait(10)
    threads[1].start()
    deadline = time.monotonic() + 10
    while client.app.state.worker.pending < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = client.post(
        "/v1/covers", data={"title": "X", "user_id": "1"}, files={"image": ("c.png", _png(), "image/png")}
    )
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert decoded == []  # refused before its pixels were decoded
    counting.gate.set()
    for thread in threads:
        thread.join(20)


def test_the_pixel_cap_follows_the_model(make_client, counting, serve_pipeline):
    client = make_client(rate_limit=None)
    cap = client.app.state.max_image_pixels
    assert cap == upload_pixel_cap(serve_pipeline) and 1024 * 1024 <= cap < 4096 * 4096
    side = int(cap**0.5) + 2
    big = client.post(
        "/v1/covers",
        data={"title": "Big", "user_id": "1"},
        files={"image": ("big.png", _png((side, side)), "image/png")},
    )
    assert big.status_code == 413 and "pixels" in big.json()["detail"][0]["msg"]
    assert counting.calls == 0


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_cut_cached_png_is_regenerated(make_client, counting, tmp_path, damage):
    client = make_client(rate_limit=None)
    form = {"item_id": "1", "user_id": "1", "seed": "5"}
    first = client.post("/v1/covers", data=form)
    cover_id = first.headers["x-cover-id"]
    png = tmp_path / "serve-cache" / "covers" / cover_id[:2] / f"{cover_id}.png"
    if damage == "delete":
        png.unlink()
    else:
        png.write_bytes(first.content[: len(first.content) // 2])
    assert client.get(f"/v1/covers/{cover_id}").status_code == 404  # never a 500, never a cut file
    again = client.post("/v1/covers", data={**form, "format": "json"})
    assert again.status_code == 200 and again.headers["x-cache"] == "miss" and counting.calls == 2
    fetched = client.get(again.json()["url"])  # the returned URL is alive
    assert fetched.status_code == 200 and fetched.content == first.content


def test_the_cover_cache_is_bounded_least_recently_used_first(make_client, tmp_path):
    client = make_client(rate_limit=None, max_cache_covers=2)
    ids = []
    for seed in (1, 2):
        ids.append(
            client.post("/v1/covers", data={"item_id": "1", "user_id": "1", "seed": str(seed)}).headers[
                "x-cover-id"
            ]
        )
    assert client.get(f"/v1/covers/{ids[0]}").status_code == 200  # seed 1 is now the most recently used
    ids.append(
        client.post("/v1/covers", data={"item_id": "1", "user_id": "1", "seed": "3"}).headers["x-cover-id"]
    )
    cache = client.app.state.cache
    assert len(cache) == 2 and ids[1] not in cache and ids[0] in cache and ids[2] in cache
    assert not list((tmp_path / "serve-cache" / "covers").glob(f"*/{ids[1]}.*"))  # its files are gone
    assert client.get("/healthz").json()["cache"]["evicted"] == 1


def test_a_huge_title_is_not_echoed_back(make_client):
    client = make_client(rate_limit=None)
    title = "A" * 50_000
    reply = client.post(
        "/v1/covers", data={"title": title, "user_id": "1"}, files={"image": ("c.png", _png(), "image/png")}
    )
    assert reply.status_code == 422 and len(reply.content) < 1000
    detail = reply.json()["detail"][0]
    assert detail["loc"] == ["body", "title"] and "input" not in detail
    assert detail["msg"] == "at most 200 characters, got 50000"


def test_api_messages_are_the_cli_messages(make_client):
    from icg.validation import InputError, check_steps

    client = make_client(rate_limit=None)
    reply = client.post("/v1/covers", data={"item_id": "1", "user_id": "1", "steps": "0"})
    with pytest.raises(InputError) as cli:
        check_steps(0)
    assert reply.status_code == 422 and reply.json()["detail"][0]["msg"] == cli.value.msg
    profile = client.post("/v1/covers", data={"item_id": "1", "profile": "zzz qqq"})
    assert (
        profile.status_code == 422
        and "no age, gender, occupation or genre taste" in profile.json()["detail"][0]["msg"]
    )


def test_urls_come_from_the_configured_base_not_the_host_header(make_client, tmp_path):
    client = make_client(rate_limit=None)
    hostile = {"host": "evil.example"}
    body = client.post(
        "/v1/covers", data={"item_id": "1", "user_id": "1", "format": "json"}, headers=hostile
    ).json()
    assert "evil" not in body["url"] and body["url"] == f"/v1/covers/{body['id']}"
    based = make_client(rate_limit=None, base_url="https://covers.example.com/", cache_dir=tmp_path / "c2")
    item = based.get("/v1/items/1", headers=hostile).json()
    assert item["reference_url"] == "https://covers.example.com/v1/items/1/reference"


def test_model_pixels_reads_the_qwen_processor(serve_pipeline):
    from icg.serve.inputs import model_pixels

    processor = serve_pipeline.context_encoder.processor.image_processor
    assert model_pixels(serve_pipeline) == processor.size.longest_edge  # 3136 (56²) on the tiny preset
    assert upload_pixel_cap(serve_pipeline) == 1024 * 1024  # 4 x 3136 is below the floor


def test_the_context_cache_is_bounded_on_disk_too(tmp_path):
    import torch

    from icg.serve.cache import BoundedContextCache

    cache = BoundedContextCache(tmp_path / "ctx", max_memory=2, max_disk=3)
    for k in range(5):
        cache.put(f"{k:02d}" + "a" * 62, f"prompt {k}", torch.zeros(2, 4))
    files = sorted(p.stem[:2] for p in (tmp_path / "ctx").glob("??/*.safetensors"))
    assert files == ["02", "03", "04"] and cache.disk_entries == 3 and len(cache) == 2
    again = BoundedContextCache(tmp_path / "ctx", max_memory=2, max_disk=2)  # a restart with a smaller bound
    assert again.disk_entries == 2 and len(list((tmp_path / "ctx").glob("??/*.safetensors"))) == 2
    assert again.get("04" + "a" * 62).prompt == "prompt 4"
