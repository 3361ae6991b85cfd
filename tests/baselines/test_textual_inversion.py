"""Textual Inversion baseline, tiny preset: what trains, diffusers' format and loader, resume, no leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch

from icg.baselines.textual_inversion import (
    EMBEDS_NAME,
    TOKENS_DIR,
    TextualInversionConfig,
    load_user_tokens,
    ti_suffix,
    train_user_tokens,
    user_inversion_images,
    user_token,
    user_tokens,
)
from icg.data.covers import render_cover
from icg.data.covers.cache import render_cover_cache
from icg.data.movielens import load_ml100k
from icg.data.records import InteractionData
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.presets import tiny_preset

CONFIG = TextualInversionConfig(epochs=3, batch_size=2, checkpoint_every=2)  # 2 users × 2 covers: 6 steps
FAST = {"num_inference_steps": 2, "guidance_scale": 1.0, "max_prompt_tokens": 1, "output_type": "pt"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Generation and training on 1 thread: 2 busy-waiting threads on the shared 2-core box are far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory):
    return tiny_preset(tmp_path_factory.mktemp("presets") / "tiny")


def _pipe(spec):
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _users() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        u: torch.randint(0, 256, (2, 3, 64, 64), generator=generator, dtype=torch.uint8) for u in ("1", "2")
    }


def _snapshot(pipe) -> dict[str, torch.Tensor]:
    modules = {"text": pipe.text_encoder, "unet": pipe.unet, "vae": pipe.vae}
    return {f"{m}.{k}": v.clone() for m, module in modules.items() for k, v in module.state_dict().items()}


def _saved(out: Path, user_id: str) -> torch.Tensor:
    return safetensors.torch.load_file(out / TOKENS_DIR / user_id / EMBEDS_NAME)[user_token(user_id)]


def test_only_the_new_words_train_and_the_pipeline_stays_as_it_was(spec, tmp_path: Path) -> None:
    pipe = _pipe(spec)
    before, vocab = _snapshot(pipe), dict(pipe.tokenizer.get_vocab())
    metrics = train_user_tokens(pipe, _users(), tmp_path, CONFIG, progress=False, threads=1)
    after = _snapshot(pipe)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.tokenizer.get_vocab() == vocab  # tokens went to a copy of the tokenizer
    assert metrics["completed"] and metrics["steps"] == 6 and metrics["users"] == 2
    init = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("poster", add_special_tokens=False)
                                                           .input_ids].mean(0)  # fmt: skip
    one, two = _saved(tmp_path, "1"), _saved(tmp_path, "2")
    assert one.shape == two.shape == (1, init.shape[0])  # diffusers' {token: (num_vectors, D)}
    assert not torch.allclose(one[0], init) and not torch.allclose(two[0], init)
    assert not torch.equal(one, two)  # each user's word learns from its own covers
    assert metrics["moved_from_init"]["min"] > 0
    assert json.loads((tmp_path / "textual_inversion.json").read_text())["epochs"] == 3


def test_saved_words_load_with_diffusers_loader_in_a_fresh_pipeline(spec, tmp_path: Path) -> None:
    train_user_tokens(_pipe(spec), _users(), tmp_path, CONFIG, progress=False, threads=1)
    fresh = _pipe(spec)
    tokens = load_user_tokens(fresh, tmp_path, ["2", "1"])
    assert tokens == {"2": "<user-2>", "1": "<user-1>"}
    weight = fresh.text_encoder.get_input_embeddings().weight
    for user_id, token in tokens.items():
        token_id = fresh.tokenizer.convert_tokens_to_ids(token)
        assert torch.equal(weight[token_id], _saved(tmp_path, user_id)[0])
    ids = fresh.tokenizer(f"a cover, {ti_suffix('2')}").input_ids
    assert fresh.tokenizer.convert_tokens_to_ids("<user-2>") in ids  # one token, not split into pieces


def test_covers_with_the_word_differ_and_the_word_does_not_leak(spec, tmp_path: Path) -> None:
    train_user_tokens(_pipe(spec), _users(), tmp_path, CONFIG, progress=False, threads=1)
    pipe = _pipe(spec)
    items = [CoverItem("Alien", render_cover("2", "Alien", ("Horror", "Sci-Fi"), size=64), item_id="2")]
    user = [CoverUser(user_id="1")]
    plain = pipe(items, user, adapter_scale=0.0, **FAST)
    text_before, vocab_before = _snapshot(pipe), dict(pipe.tokenizer.get_vocab())
    with user_tokens(pipe, tmp_path, ["1"]):
        styled = pipe(items, user, adapter_scale=0.0, prompt_suffixes=[ti_suffix("1")], **FAST)
        token_id = pipe.tokenizer.convert_tokens_to_ids("<user-1>")
        assert token_id in pipe.tokenizer(styled.metadata[0]["prompt"]).input_ids  # not truncated away
    assert styled.metadata[0]["prompt"].endswith("in the style of <user-1>")
    assert (styled.images - plain.images).abs().max() > 1e-3
    after = _snapshot(pipe)  # restored: same vocabulary, same embedding matrix, same covers
    assert dict(pipe.tokenizer.get_vocab()) == vocab_before and "<user-1>" not in pipe.tokenizer.get_vocab()
    assert all(torch.equal(text_before[k], after[k]) for k in text_before)
    assert torch.equal(pipe(items, user, adapter_scale=0.0, **FAST).images, plain.images)


def test_resume_after_a_partial_run_gives_the_same_words(spec, tmp_path: Path) -> None:
    straight = train_user_tokens(_pipe(spec), _users(), tmp_path / "a", CONFIG, progress=False, threads=1)
    part = train_user_tokens(
        _pipe(spec), _users(), tmp_path / "b", CONFIG, progress=False, threads=1, max_steps=3
    )
    assert not part["completed"] and part["steps_completed"] == 3
    assert not (tmp_path / "b" / TOKENS_DIR).exists()  # words are written only when complete
    resumed = train_user_tokens(_pipe(spec), _users(), tmp_path / "b", CONFIG, progress=False, threads=1)
    assert resumed["completed"] and resumed["history"] == straight["history"]
    for user_id in ("1", "2"):
        assert torch.equal(_saved(tmp_path / "a", user_id), _saved(tmp_path / "b", user_id))
    again = train_user_tokens(_pipe(spec), _users(), tmp_path / "b", CONFIG, progress=False, threads=1)
    assert again == resumed  # complete: nothing retrained


def test_bad_inputs_are_refused(spec, tmp_path: Path) -> None:
    pipe = _pipe(spec)
    covers = _users()["1"]
    with pytest.raises(ValueError, match="shape"):
        train_user_tokens(pipe, {"1": covers[:, :, :32, :32]}, tmp_path, CONFIG, progress=False, threads=1)
    with pytest.raises(ValueError, match="must match"):
        train_user_tokens(pipe, {"../x": covers}, tmp_path, CONFIG, progress=False, threads=1)
    with pytest.raises(ValueError, match="epochs"):
        TextualInversionConfig(epochs=0)
    with pytest.raises(ValueError, match="templates"):
        TextualInversionConfig(templates=("no slot",))
    assert TextualInversionConfig.from_json(CONFIG.to_json()) == CONFIG
    train_user_tokens(pipe, {"1": covers}, tmp_path, CONFIG, progress=False, threads=1)
    load_user_tokens(pipe, tmp_path, ["1"])
    with pytest.raises(ValueError, match="already in the tokenizer"):
        train_user_tokens(pipe, {"1": covers}, tmp_path / "again", CONFIG, progress=False, threads=1)


def test_inversion_images_are_the_top_rated_allowed_covers(tmp_path: Path) -> None:
    ml = load_ml100k()
    items = ml.items.iloc[:6].reset_index(drop=True)
    ratings = [  # item, rating, timestamp: 5 twice (the later first), then 4; item 6 is not allowed
        ("1", 4.0, 10), ("2", 5.0, 20), ("3", 5.0, 30), ("4", 2.0, 40), ("5", 4.0, 50), ("6", 5.0, 60),
    ]  # fmt: skip
    inter = pd.DataFrame(ratings, columns=["item_id", "signal", "timestamp"]).assign(user_id="7")
    data = InteractionData("toy", ml.users, items, inter[["user_id", "item_id", "signal", "timestamp"]])
    covers = user_inversion_images(data, "7", 3, {"1", "2", "3", "4", "5"}, cache_dir=tmp_path, size=64)
    reference = render_cover_cache(items, tmp_path, 64, 1, progress=False)[:, 0]
    assert covers.dtype == torch.uint8 and covers.shape == (3, 3, 64, 64)
    assert torch.equal(covers, reference[[2, 1, 4]])  # items 3, 2 (tie by recency), then 5 (latest 4)
    with pytest.raises(ValueError, match="rated none"):
        user_inversion_images(data, "7", 3, {"99"}, cache_dir=tmp_path, size=64)
