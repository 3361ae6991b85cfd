"""Mini CLIP: tokenizer, data, training, resume, evaluation and the CLI, at micro size on ml-100k items."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

import icg.training.mini_clip as mini_clip_module
from icg.clip_tokenizer import learn_bpe_merges, train_clip_tokenizer, word_counts
from icg.data.captions import genre_prompt, item_text
from icg.data.covers.render import items_genres, render_cover
from icg.data.movielens import load_ml100k
from icg.data.pixels import normalize, to_pil
from icg.data.records import InteractionData
from icg.data.splits import split_items
from icg.training import MiniClipConfig, evaluate_clip, train_mini_clip
from icg.training import clip_data as cd

# Every call uses threads=1: fast on a machine shared with other jobs, and bit-identical resume needs the
# same thread count in every call of a run.
MICRO = MiniClipConfig(
    patch_size=16,
    vision_width=32,
    vision_layers=1,
    text_width=32,
    text_layers=1,
    heads=2,
    max_text_tokens=16,
    vocab_size=600,
    projection_dim=16,
    variants=2,
    epochs=10,
    batch_size=8,
    lr=3e-3,
    max_items=40,
)


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    return load_ml100k()


@pytest.fixture(scope="module")
def trained(ml100k: InteractionData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted micro run: the reference for the loading, loss and resume tests."""
    out = tmp_path_factory.mktemp("mini_clip")
    return out, train_mini_clip(ml100k, out, MICRO, progress=False, threads=1)


# ------------------------------------------------------------------------------------------------ tokenizer
def _naive_merges(texts: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Reference BPE: recount every pair after every merge (slow, obviously right), same tie-break."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in word_counts(texts).items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


def test_incremental_bpe_matches_naive_reference(ml100k: InteractionData) -> None:
    texts = cd.tokenizer_corpus(ml100k.items.iloc[:60], ["Drama", "Comedy"])
    assert learn_bpe_merges(texts, 150) == _naive_merges(texts, 150)


def test_tokenizer_round_trip_and_determinism(ml100k: InteractionData, tmp_path: Path) -> None:
    texts = cd.tokenizer_corpus(ml100k.items.iloc[:200], ["Action", "Children's", "Sci-Fi"])
    train_clip_tokenizer(texts, tmp_path / "a", vocab_size=900, max_length=32)
    train_clip_tokenizer(texts, tmp_path / "b", vocab_size=900, max_length=32)
    for name in ("vocab.json", "merges.txt"):  # BpeTrainer would differ here between processes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "a"))
    processor_tok = CLIPProcessor(
        image_processor=mini_clip_module.build_processor(MICRO, tokenizer).image_processor,
        tokenizer=tokenizer,
    ).tokenizer
    text = "Toy Story, an animation, children's and comedy movie"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # CLIP decodes word by word (every word ends in </w>), so punctuation comes back space-separated
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "toy story , an animation , children 's and comedy movie"
    )
    assert processor_tok(text)["input_ids"] == ids
    assert tokenizer.tokenize("movie") == ["movie</w>"]  # a frequent corpus word is one token
    assert tokenizer.unk_token_id not in ids[1:-1]  # byte-level: nothing is unknown
    long = tokenizer("word " * 100, truncation=True)["input_ids"]
    assert len(long) == 32 and long[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="vocab_size"):
        train_clip_tokenizer(texts, tmp_path / "c", vocab_size=100, max_length=32)


# ------------------------------------------------------------------------------------------------------ data
def test_captions_split_and_processor_match_training_pixels(tmp_path: Path) -> None:
    assert item_text("Birdcage, The", ("Comedy",)) == "The Birdcage, a comedy movie"
    assert item_text("Heat", ("Action", "Crime", "Thriller"), 1) == (
        "an action, crime and thriller movie called Heat"
    )
    assert genre_prompt("Adventure") == "an adventure movie"
    split = split_items(100, seed=3, val_fraction=0.1, test_fraction=0.1)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert (len(split.val), len(split.test)) == (10, 10) and set.union(*parts) == set(range(100))
    assert sum(map(len, parts)) == 100
    with pytest.raises(ValueError, match="too few"):
        split_items(5, seed=0, val_fraction=0.1, test_fraction=0.1)
    # Training normalizes cached uint8 covers itself; evaluation and users go through the processor.
    cover = torch.from_numpy(np.array(render_cover("1", "Toy Story", ("Animation",), 1995, 64)))
    cover = cover.permute(2, 0, 1)  # (3, 64, 64) uint8
    tokenizer = train_clip_tokenizer(["a drama movie"], tmp_path, vocab_size=520, max_length=16)
    processor = mini_clip_module.build_processor(MICRO, tokenizer)
    via_processor = processor.image_processor(images=[to_pil(cover)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(via_processor, normalize(cover[None]), atol=1e-5, rtol=0)


def test_config_json_round_trip_and_validation() -> None:
    assert MiniClipConfig.from_json(MICRO.to_json()) == MICRO
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MiniClipConfig(image_size=64, patch_size=12)
    with pytest.raises(ValueError, match="batch_size"):
        MiniClipConfig(batch_size=1)
    with pytest.raises(ValueError, match="unknown MiniClipConfig fields"):
        MiniClipConfig.from_json('{"width": 3}')


# -------------------------------------------------------------------------------------------------- training
def test_trained_folder_loads_like_a_real_checkpoint(
    trained: tuple[Path, dict], ml100k: InteractionData, tmp_path: Path
) -> None:
    out, metrics = trained
    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    assert isinstance(processor.tokenizer, CLIPTokenizer)
    # vocab.json + merges.txt alone (OpenAI's layout, no tokenizer.json) load to the same tokenizer
    only_bpe = tmp_path / "bpe"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (only_bpe / name).write_bytes((out / name).read_bytes())
    text = "Toy Story, an animation, children's and comedy movie"
    assert CLIPTokenizer.from_pretrained(only_bpe)(text) == processor.tokenizer(text)
    assert processor.image_processor.crop_size == {"height": 64, "width": 64}
    assert MiniClipConfig.from_json((out / "mini_clip.json").read_text()) == MICRO
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    assert metrics["completed"] and metrics["epochs_completed"] == len(metrics["history"]) == MICRO.epochs
    # Reloaded weights + processor + freshly rendered covers reproduce the reported test metrics exactly.
    items = ml100k.items.iloc[:40].reset_index(drop=True)
    split = split_items(40, MICRO.seed, MICRO.val_fraction, MICRO.test_fraction)
    genres = sorted({g for t in items_genres(items) for g in t})
    assert evaluate_clip(model, processor, items.iloc[split.test], genres=genres) == metrics["test"]


def test_loss_decreases(trained: tuple[Path, dict]) -> None:
    losses = [h["loss"] for h in trained[1]["history"]]
    # ln(B) is what a model that cannot tell the batch's pairs apart converges to (a collapsed one, say)
    assert losses[-1] < losses[0] and losses[-1] < math.log(MICRO.batch_size) - 0.2, losses


def test_interrupted_and_budgeted_runs_resume_to_identical_weights(
    trained: tuple[Path, dict], ml100k: InteractionData, tmp_path: Path, monkeypatch, caplog
) -> None:
    out = tmp_path / "resumed"
    # 1) a time budget that is spent at once: one epoch per call, then a resumable stop
    first = train_mini_clip(ml100k, out, MICRO, progress=False, threads=1, max_minutes=1e-6)
    assert (first["epochs_completed"], first["completed"]) == (1, False)
    # 2) a crash in the third epoch: the checkpoint after epoch 2 survives
    real_epoch = mini_clip_module.train_epoch

    def crash_in_epoch_3(*args, **kwargs):
        if args[6] == 2:  # zero-based epoch index
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(mini_clip_module, "train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_mini_clip(ml100k, out, MICRO, progress=False, threads=1)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(mini_clip_module, "train_epoch", real_epoch)
    # 3) resume to the end
    with caplog.at_level(logging.INFO, logger="icg.training.mini_clip"):
        final = train_mini_clip(ml100k, out, MICRO, progress=False, threads=1)
    assert "resuming" in caplog.text and "from epoch 2 of 10" in caplog.text
    assert final["history"] == trained[1]["history"] and final["test"] == trained[1]["test"]
    reference, resumed = load_file(trained[0] / "model.safetensors"), load_file(out / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), "resumed weights differ"
    # a finished folder is left byte for byte as it is (later steps fingerprint these files)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    again = train_mini_clip(ml100k, out, MICRO, progress=False, threads=1)
    assert again["completed"] and {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    # other settings in the same folder are refused rather than mixed
    with pytest.raises(ValueError, match="other items or config"):
        train_mini_clip(ml100k, out, dataclasses.replace(MICRO, lr=1e-3), progress=False, threads=1)


# ------------------------------------------------------------------------------------------------ evaluation
def test_recall_counts_ranks() -> None:
    sims = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.0], [0.0, 0.3, 0.2]])  # true match on the diagonal
    assert cd.recall_at_k(sims, 1) == pytest.approx(1 / 3)  # only row 0 ranks its match first
    assert cd.recall_at_k(sims, 2) == pytest.approx(1.0)
    assert cd.recall_at_k(torch.ones(4, 4), 1) == 0.0  # ties count against: a collapsed model gets nothing


def test_evaluate_keys_chance_and_errors(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    model, processor = CLIPModel.from_pretrained(out), CLIPProcessor.from_pretrained(out)
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e", "f"],
            "title": ["One", "Two", "Three", "Four", "Five", "Six"],
            "year": pd.array([1990, None, 1995, 1996, 1997, 1998], dtype="Int64"),
            "genres": [("Drama",), ("Drama",), ("Drama", "War"), ("Comedy",), ("Horror",), ("Horror",)],
        }
    )
    result = evaluate_clip(model, processor, items, genres=["Comedy", "Drama", "Horror", "War"])
    assert set(result) >= {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "genre_accuracy", "per_genre_accuracy"}
    assert (result["chance_r1"], result["chance_r5"]) == (round(1 / 6, 4), round(5 / 6, 4))
    assert result["genre_chance_majority"] == 0.5 and result["genre_chance_uniform"] == 0.25
    # tuples: Drama ×2, (Drama, War), Comedy, Horror ×2 → oracle R@1 = mean(1/2, 1/2, 1, 1, 1/2, 1/2)
    assert result["genre_oracle_r1"] == round(4 / 6, 4) and result["genre_oracle_r5"] == 1.0
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "genre_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    with pytest.raises(ValueError, match="not among the zero-shot genres"):
        evaluate_clip(model, processor, items, genres=["Drama", "Comedy"])
    with pytest.raises(ValueError, match="at least 2 items"):
        evaluate_clip(model, processor, items.iloc[:1])


def test_cli_refuses_unknown_preset(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from icg.cli import app
    from icg.errors import ICGError

    result = CliRunner().invoke(app, ["train", "clip", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ICGError)  # main() prints these as one line with exit code 2
    assert "unknown mini-CLIP preset 'huge'" in str(result.exception)
    assert not (tmp_path / "x").exists()
