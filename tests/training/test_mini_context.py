"""Mini context encoder: config, output layout, resume, a falling loss, and the metrics, at micro size."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from icg.context import ContextEncoder
from icg.context.teacher import explicit_prompt_teacher
from icg.data.covers.render import display_title
from icg.testing import tiny_clip_model
from icg.training.mini_context import (
    HEAD_NAME,
    MiniContextConfig,
    load_meta_head,
    primary_genre_word,
    train_mini_context,
)

# threads=1 everywhere: fast on a shared machine, and bit-identical resume needs the same thread count
MICRO = MiniContextConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    vision_hidden_size=16,
    vision_depth=1,
    vocab_size=300,
    variants=1,
    epochs=2,
    batch_size=4,
    max_items=12,
    eval_generate=4,
    val_generate=2,
)
GENRES = [("Comedy",), ("Drama", "Romance"), ("Action", "Thriller"), ("Horror",), ("Animation", "Children's")]
WEIGHT_FILES = ("model.safetensors", "meta_tokens.safetensors", HEAD_NAME)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    titles = ["Toy Story", "Usual Suspects, The", "Paper Boats", "Neon Desert Run", "Dragon Valley Express"]
    titles += ["Little Fox", "Iron Comet", "Glass Lighthouse", "Red Lanterns", "Summer Train", "Babe", "Heat"]
    rows = [(str(i + 1), t, GENRES[i % len(GENRES)], 1990 + i) for i, t in enumerate(titles)]
    return pd.DataFrame(rows, columns=["item_id", "title", "genres", "year"])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel + processor saved like the mini CLIP (projection 16, 32 px)."""
    out = tmp_path_factory.mktemp("clip")
    clip, processor = tiny_clip_model()
    clip.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(
    items: pd.DataFrame, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """One uninterrupted micro run: the reference for the loading and resume tests."""
    out = tmp_path_factory.mktemp("context")
    metrics = train_mini_context(items, out, MICRO, clip_dir=clip_dir, threads=1, progress=False)
    return out, metrics


def test_config_json_round_trip_and_validation() -> None:
    assert MiniContextConfig.from_json(MICRO.to_json()) == MICRO
    bad = [
        {"batch_size": 0},
        {"transform": "rotate"},
        {"hidden_size": 30, "num_heads": 4},
        {"vision_hidden_size": 24},
        {"input_variants": 5},
        {"max_items": 3},
        {"lr": 0.0},
        {"vocab_size": 100},
        {"cover_size": 32},
        {"max_pixels": 100},
        {"lm_weight": -1.0},
    ]
    for change in bad:
        with pytest.raises(ValueError):
            dataclasses.replace(MICRO, **change)
    with pytest.raises(ValueError, match="unknown MiniContextConfig fields"):
        MiniContextConfig.from_json(json.dumps({"hiden_size": 64}))


def test_bad_calls_are_refused(items: pd.DataFrame, clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_mini_context(items, tmp_path, dataclasses.replace(MICRO, batch_size=64), clip_dir=clip_dir)
    with pytest.raises(ValueError, match="threads"):
        train_mini_context(items, tmp_path, MICRO, clip_dir=clip_dir, threads=0)
    with pytest.raises(ValueError, match="max_minutes"):
        train_mini_context(items, tmp_path, MICRO, clip_dir=clip_dir, max_minutes=0)
    with pytest.raises(ValueError, match="not a CLIPModel folder"):
        train_mini_context(items, tmp_path, MICRO, clip_dir=tmp_path / "missing")


def test_output_loads_like_the_pipeline_loads_it(trained: tuple[Path, dict], items: pd.DataFrame) -> None:
    out, metrics = trained
    encoder = ContextEncoder.from_pretrained(out)  # what the cover pipeline calls
    assert encoder.num_meta_tokens == MICRO.num_meta_tokens and encoder.hidden_size == MICRO.hidden_size
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["encoder"]
    assert torch.equal(encoder.meta_tokens.weight, saved["meta_tokens.weight"])  # trained, not re-initialised
    images = [Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("RGB", (64, 64), (40, 40, 200))]
    with torch.no_grad():
        context = encoder.context_embeddings(images, ["Toy Story", "Heat"])
        head = load_meta_head(out)
        assert head(context).shape == (2, MICRO.num_meta_tokens, 16)  # the tiny CLIP's projection dim
    assert context.shape == (2, MICRO.num_meta_tokens, MICRO.hidden_size)
    prompts = encoder.explicit_prompt(images, ["Toy Story", "Heat"], max_new_tokens=8)
    assert len(prompts) == 2 and all(isinstance(p, str) for p in prompts)
    assert metrics["completed"] and metrics["epochs_completed"] == MICRO.epochs
    assert MiniContextConfig.from_json((out / "mini_context.json").read_text()) == MICRO
    test = metrics["test"]
    for key in (
        "meta_cosine",
        "meta_cosine_untrained",
        "meta_cosine_title_only",
        "meta_cosine_constant_mean",
    ):
        assert -1.0 <= test[key] <= 1.0
    generation = test["generation"]
    assert generation["n_items"] == metrics["n_test"] == 2
    teachers = {
        display_title(t): explicit_prompt_teacher(t, g)
        for t, g in zip(items.title, items.genres, strict=True)
    }
    assert all(e["teacher"] == teachers[e["title"]] for e in generation["examples"])  # titles as covers print
    assert "The Usual Suspects" in teachers
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_interrupted_run_resumes_to_identical_weights(
    trained: tuple[Path, dict], items: pd.DataFrame, clip_dir: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "resumed"
    first = train_mini_context(
        items, out, MICRO, clip_dir=clip_dir, threads=1, progress=False, max_minutes=1e-6
    )
    assert (first["epochs_completed"], first["completed"]) == (1, False)
    with caplog.at_level(logging.INFO, logger="icg.training.mini_context"):
        final = train_mini_context(items, out, MICRO, clip_dir=clip_dir, threads=1, progress=False)
    assert "resuming" in caplog.text and "from epoch 1 of 2" in caplog.text
    reference = trained[1]
    assert final["history"] == reference["history"] and final["test"] == reference["test"]
    for name in WEIGHT_FILES:
        a, b = load_file(trained[0] / name), load_file(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    # a finished run is not redone; other settings in the same folder are refused rather than mixed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="icg.training.mini_context"):
        again = train_mini_context(items, out, MICRO, clip_dir=clip_dir, threads=1, progress=False)
    assert again == final and "nothing to do" in caplog.text
    with pytest.raises(ValueError, match="other items, config or CLIP"):
        train_mini_context(items, out, dataclasses.replace(MICRO, lr=1e-3), clip_dir=clip_dir, progress=False)


def test_losses_fall_on_a_tiny_overfit_set(items: pd.DataFrame, clip_dir: Path, tmp_path: Path) -> None:
    """8 items → 4 train items, one batch: 30 steps must cut the next-token and meta losses well down."""
    config = dataclasses.replace(MICRO, max_items=8, epochs=30, lr=1e-2, warmup_fraction=0.1, val_generate=1)
    metrics = train_mini_context(items, tmp_path, config, clip_dir=clip_dir, threads=1, progress=False)
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["prompt_lm_loss"] < 0.5 * first["prompt_lm_loss"], (first, last)
    assert last["lm_loss"] < 0.5 * first["lm_loss"], (first, last)
    assert last["meta_loss"] < 0.5 * first["meta_loss"], (first, last)


def test_primary_genre_word_reads_the_template() -> None:
    teacher = explicit_prompt_teacher("Toy Story", ("Animation", "Children's", "Comedy"))
    assert primary_genre_word(teacher) == "animation"
    assert primary_genre_word("Sex, a Lie, a drama and romance movie poster in red") == "drama"
    assert primary_genre_word("an action and war movie poster in red") == "action"
    assert primary_genre_word("Toy Story, comedy in red") is None
    assert primary_genre_word("garbage") is None
