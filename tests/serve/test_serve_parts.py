"""The serve building blocks on their own: cover keys and the disk cache, the worker, the catalog, inputs."""

from __future__ import annotations

import io
import threading
import time

import pytest
import torch
from fastapi import HTTPException
from PIL import Image

from icg.serve.cache import BoundedContextCache, CoverCache, cover_key, is_cover_id
from icg.serve.catalog import Catalog
from icg.serve.inputs import decode_image, resolve_user, upload_item_key
from icg.serve.worker import GenerationWorker, QueueFullError, WorkerClosedError


def test_cover_key_is_a_hex_id_that_changes_with_every_part():
    base = ("dataset:ml-100k:1", "u1-a2-g2-o20", "tiny", 0, 15, 7.0, "abc")
    key = cover_key(*base)
    assert is_cover_id(key) and cover_key(*base) == key
    for index, other in enumerate(("dataset:ml-100k:2", "u2-a2-g2-o20", "mini", 1, 16, 7.5, None)):
        changed = list(base)
        changed[index] = other
        assert cover_key(*changed) != key
    assert cover_key("ab", "c", "p", 0, 1, 1.0, None) != cover_key("a", "bc", "p", 0, 1, 1.0, None)
    # the strength knob: 1 keeps the ids cached before it existed, any other value is another cover
    assert cover_key(*base, 1.0) == key and cover_key(*base, 0.0) != key != cover_key(*base, 1.5)
    for bad in ("", "../x", "A" * 64, "0" * 63, "0" * 65, "g" * 64, "0" * 64 + "\n"):
        assert not is_cover_id(bad)


def test_cover_cache_writes_atomically_and_reindexes(tmp_path):
    cache = CoverCache(tmp_path)
    cover_id = "1f" * 32
    assert cache.png_path(cover_id) is None and cache.metadata(cover_id) is None
    cache.put(cover_id, b"\x89PNG fake", {"id": cover_id, "seed": 1})
    assert cache.png_path(cover_id).read_bytes() == b"\x89PNG fake"
    assert cache.metadata(cover_id)["seed"] == 1 and len(cache) == 1
    assert not list(tmp_path.rglob("*.tmp"))
    half = "2e" * 32  # a PNG without its JSON (a crash between the two writes) is not an entry
    (tmp_path / half[:2]).mkdir()
    (tmp_path / half[:2] / f"{half}.png").write_bytes(b"x")
    reopened = CoverCache(tmp_path)
    assert cover_id in reopened and half not in reopened and len(reopened) == 1
    with pytest.raises(ValueError):
        cache.put("../escape", b"", {})


def test_bounded_context_cache_keeps_recent_items_in_memory_and_all_on_disk(tmp_path):
    cache = BoundedContextCache(tmp_path, max_memory=2)
    for key in ("a" * 64, "b" * 64, "c" * 64):
        cache.put(key, f"prompt {key[0]}", torch.zeros(1, 4))
    assert len(cache) == 2 and "a" * 64 not in cache.memory_keys
    assert cache.get("a" * 64).prompt == "prompt a"  # read back from disk, now the most recent
    assert cache.memory_keys == ["c" * 64, "a" * 64]


def test_worker_runs_in_order_coalesces_and_bounds_the_queue():
    worker = GenerationWorker(max_queue=1)
    gate = threading.Event()
    started = threading.Event()
    thread_names: list[str] = []

    def blocked():
        started.set()
        thread_names.append(threading.current_thread().name)
        gate.wait(10)
        return "first"

    first, joined = worker.submit("a", blocked)
    assert not joined and started.wait(10)
    second, _ = worker.submit("b", lambda: "second")
    assert worker.submit("b", lambda: "never") == (second, True)  # same key: same future
    with pytest.raises(QueueFullError) as full:
        worker.submit("c", lambda: "c")
    assert full.value.retry_after >= 1
    gate.set()
    assert first.result(10) == "first" and second.result(10) == "second"
    assert thread_names == ["icg-generate"]

    failing, _ = worker.submit("d", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    assert worker.submit("e", lambda: "still alive")[0].result(10) == "still alive"
    assert worker.stats()["completed"] == 3 and worker.stats()["failed"] == 1
    worker.close()
    with pytest.raises(WorkerClosedError):
        worker.submit("f", lambda: None)


def test_worker_close_fails_waiting_jobs():
    worker = GenerationWorker(max_queue=2)
    gate, started = threading.Event(), threading.Event()
    running, _ = worker.submit("a", lambda: started.set() or gate.wait(10))
    waiting, _ = worker.submit("b", lambda: "never")
    assert started.wait(10)
    closer = threading.Thread(target=worker.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not waiting.done():  # close() drains the queue at once, while "a" still runs
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.set()
    closer.join(10)
    assert running.result(10) is True
    with pytest.raises(WorkerClosedError):
        waiting.result(10)


def test_catalog_search_users_and_references(ml100k):
    catalog = Catalog(ml100k, lru=2)
    total, rows = catalog.search_items("usual suspects", 5)
    assert total == 1 and rows[0].display == "The Usual Suspects" and rows[0].title == "Usual Suspects, The"
    total, rows = catalog.search_items("star", 3)
    assert total > 3 and len(rows) == 3 and rows[0].display.lower().startswith("star")
    total, users = catalog.search_users("1", 3)
    assert [u for u, _ in users] == ["1", "10", "11"]  # dataset order
    png = catalog.reference_png("1")
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (256, 256)
    for item_id in ("2", "3", "4"):
        catalog.reference_image(item_id)
    assert catalog.cached_images == 2  # bounded
    item = catalog.cover_item("12")
    assert item.title == "The Usual Suspects" and item.item_id == "12"
    with pytest.raises(KeyError):
        catalog.reference_image("../../etc/passwd")


def test_decode_image_refuses_big_odd_and_non_images():
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (1, 2, 3)).save(buffer, format="PNG")
    data = buffer.getvalue()
    image = decode_image(data, max_bytes=10_000)
    assert image.mode == "RGB" and image.size == (50, 40)
    for raw, max_bytes, max_pixels, status in (
        (data, 10, 10**6, 413),
        (data, 10_000, 100, 413),  # too many pixels, refused before decoding
        (b"%PDF-1.4 not an image", 10_000, 10**6, 415),
        (data[:40], 10_000, 10**6, 415),  # truncated
    ):
        with pytest.raises(HTTPException) as err:
            decode_image(raw, max_bytes=max_bytes, max_pixels=max_pixels)
        assert err.value.status_code == status and err.value.detail[0]["loc"] == ["body", "image"]
    assert upload_item_key("A", image) == upload_item_key("A", image.copy())
    assert upload_item_key("A", image) != upload_item_key("B", image)


def test_resolve_user_keys_are_the_encoder_inputs(serve_pipeline):
    encoder = serve_pipeline.user_encoder
    known = resolve_user(encoder, "1", None)
    assert known.known and known.key.startswith("u1-")
    cold = resolve_user(encoder, "nobody", "a 24-year-old male technician")
    assert not cold.known and cold.key == "u0" + known.key[known.key.index("-") :]  # user 1's own profile
    assert resolve_user(encoder, None, "a 24 year old man, technician").key == cold.key
    assert resolve_user(None, None, None).key == "none"
    for user_id, profile, field in (
        (None, None, "user_id"),
        ("nobody", None, "user_id"),
        (None, "hello there", "profile"),
    ):
        with pytest.raises(HTTPException) as err:
            resolve_user(encoder, user_id, profile)
        assert err.value.status_code == 422 and err.value.detail[0]["loc"] == ["body", field]
    with pytest.raises(HTTPException):
        resolve_user(None, "1", None)  # no user encoder: a user is refused, not ignored


def test_a_stated_taste_is_a_cold_start_profile_with_its_own_key(serve_pipeline):
    """'a horror fan' names no age, gender or occupation but a taste the encoder reads (issue 18)."""
    encoder = serve_pipeline.user_encoder
    horror = resolve_user(encoder, None, "a horror fan")
    romance = resolve_user(encoder, None, "loves romance")
    assert not horror.known and horror.key.startswith("u0-a0-g0-o0-t") and romance.key != horror.key
    assert resolve_user(encoder, None, "loves horror").key == horror.key  # the same taste, the same cover
    embeds = encoder.encode_users([None, None], ["a horror fan", "loves romance"])
    assert not torch.allclose(embeds[0], embeds[1])
    with pytest.raises(HTTPException) as err:
        resolve_user(encoder, None, "zzz qqq")
    assert err.value.status_code == 422 and "loves horror and sci-fi" in err.value.detail[0]["msg"]
