"""Item-context cache: keys, memory and disk hits, atomic files, encode_items computing each item once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.context import ContextCache, ContextEncoder, build_tiny_context_encoder, context_key

MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_context_encoder(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture()
def counted(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ContextEncoder, dict[str, list[int]]]:
    """An encoder whose two expensive calls record the batch size of every call."""
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2)
    calls: dict[str, list[int]] = {"explicit_prompt": [], "context_embeddings": []}
    for name in calls:
        original = getattr(encoder, name)

        def wrapper(images, titles, *args, _original=original, _name=name, **kwargs):
            calls[_name].append(len(titles))
            return _original(images, titles, *args, **kwargs)

        monkeypatch.setattr(encoder, name, wrapper)
    return encoder, calls


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def test_key_depends_on_every_part() -> None:
    image = _image(0)
    base = context_key("Toy Story", image, "qwen", 2)
    assert context_key("Toy Story", image.copy(), "qwen", 2) == base  # same pixels, other object
    pixels = np.asarray(image).copy()
    pixels[0, 0, 0] ^= 1
    variants = [
        context_key("Toy Story!", image, "qwen", 2),
        context_key("Toy Story", Image.fromarray(pixels), "qwen", 2),
        context_key("Toy Story", image, "qwen-other", 2),
        context_key("Toy Story", image, "qwen", 1),
        context_key("Toy Story", image.convert("L").convert("RGB"), "qwen", 2),
        context_key("Toy Story", image.tobytes(), "qwen", 2),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert context_key("ab", image, "c", 2) != context_key("a", image, "bc", 2)  # parts cannot run together


def test_encode_items_computes_each_item_once(counted, tmp_path: Path) -> None:
    encoder, calls = counted
    images, titles = [_image(0), _image(1), _image(0)], ["Babe (1995)", "Get Shorty (1995)", "Babe (1995)"]
    cache = ContextCache(tmp_path / "ctx")
    prompts, context = encoder.encode_items(images, titles, cache=cache, max_new_tokens=MAX_NEW)
    assert calls == {"explicit_prompt": [2], "context_embeddings": [2]}  # the repeated item computed once
    assert context.shape == (3, 2, encoder.hidden_size) and len(prompts) == 3
    assert prompts[0] == prompts[2] and torch.equal(context[0], context[2])

    uncached_prompts, uncached = encoder.encode_items(images[:2], titles[:2], max_new_tokens=MAX_NEW)
    assert uncached_prompts == prompts[:2]
    torch.testing.assert_close(uncached, context[:2])
    calls["explicit_prompt"].clear(), calls["context_embeddings"].clear()

    again_prompts, again = encoder.encode_items(images, titles, cache=cache, max_new_tokens=MAX_NEW)
    assert calls == {"explicit_prompt": [], "context_embeddings": []}  # memory hit
    assert again_prompts == prompts and torch.equal(again, context)

    fresh = ContextCache(tmp_path / "ctx")  # new process: only the disk survives
    disk_prompts, disk = encoder.encode_items(images, titles, cache=fresh, max_new_tokens=MAX_NEW)
    assert calls == {"explicit_prompt": [], "context_embeddings": []}
    assert disk_prompts == prompts and torch.equal(disk, context)
    assert fresh.hits == 2 and fresh.misses == 0

    encoder.encode_items(
        [_image(5), images[1]], ["Babe (1995)", titles[1]], cache=fresh, max_new_tokens=MAX_NEW
    )
    assert calls == {"explicit_prompt": [1], "context_embeddings": [1]}  # only the new image is computed


def test_key_covers_meta_weights_and_generation_length(counted, tmp_path: Path) -> None:
    encoder, calls = counted
    encoder.cache = ContextCache()  # the encoder's own cache is used when none is passed
    images, titles = [_image(2)], ["Four Rooms (1995)"]
    _, first = encoder.encode_items(images, titles, max_new_tokens=MAX_NEW)
    encoder.encode_items(images, titles, max_new_tokens=MAX_NEW + 1)
    assert calls["explicit_prompt"] == [1, 1]
    with torch.no_grad():
        encoder.meta_tokens.weight.add_(1.0)  # retrained meta tokens: old contexts must not be served
    _, second = encoder.encode_items(images, titles, max_new_tokens=MAX_NEW)
    assert calls["context_embeddings"] == [1, 1, 1] and not torch.allclose(first, second)
    assert len(encoder.cache) == 3


def test_disk_entries_are_atomic_and_corrupt_ones_recomputed(counted, tmp_path: Path, caplog) -> None:
    encoder, calls = counted
    cache = ContextCache(tmp_path / "ctx")
    images, titles = [_image(3)], ["Richard III (1995)"]
    _, context = encoder.encode_items(images, titles, cache=cache, max_new_tokens=MAX_NEW)
    files = [p for p in (tmp_path / "ctx").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temp file left behind
    key = files[0].stem
    assert key in cache and key in ContextCache(tmp_path / "ctx")

    files[0].write_bytes(b"not a safetensors file")
    fresh = ContextCache(tmp_path / "ctx")
    with caplog.at_level("WARNING"):
        _, recomputed = encoder.encode_items(images, titles, cache=fresh, max_new_tokens=MAX_NEW)
    assert "unreadable context cache entry" in caplog.text
    assert calls["context_embeddings"] == [1, 1]
    torch.testing.assert_close(recomputed, context)
    assert ContextCache(tmp_path / "ctx").get(key) is not None  # rewritten and readable again


def test_put_rejects_a_batch() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        ContextCache().put("k", "prompt", torch.zeros(2, 1, 4))


def test_a_folder_written_again_in_place_is_not_answered_from_old_entries(tmp_path: Path) -> None:
    """A rebuilt model in the same folder (a new tiny preset, a retrained MLLM) gets new keys; the same files
    loaded twice keep theirs, so a disk cache still hits across runs."""
    folder = build_tiny_context_encoder(tmp_path / "qwen")
    key = ContextEncoder.from_pretrained(folder).cache_model_id(MAX_NEW)
    assert ContextEncoder.from_pretrained(folder).cache_model_id(MAX_NEW) == key
    tokenizer = folder / "tokenizer.json"  # written again: same meta tokens, another file
    tokenizer.write_text(json.dumps(json.loads(tokenizer.read_text()), indent=1))
    assert ContextEncoder.from_pretrained(folder).cache_model_id(MAX_NEW) != key
