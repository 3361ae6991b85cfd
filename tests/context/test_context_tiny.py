"""The tiny Qwen2.5-VL checkpoint loads back like a real one, and ContextEncoder save/load round-trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
)

import icg
from icg.context import SYSTEM_INSTRUCTION, ContextEncoder, build_tiny_context_encoder
from icg.context.encoder import CONFIG_NAME, hub_offline
from icg.context.tiny import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_context_encoder(tmp_path_factory.mktemp("tiny_qwen"))


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def test_system_instruction_is_the_papers() -> None:
    assert SYSTEM_INSTRUCTION == (  # paper §3.1, word for word
        "Please generate a drawing prompt that aligns with the semantics of the specified reference cover "
        "and content title."
    )


def test_auto_processor_round_trip(tiny_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, local_files_only=True)
    tok = processor.tokenizer
    for token in SPECIAL_TOKENS:  # real special tokens, one id each, and the config points at the right ones
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id
        assert tok.tokenize(token) == [token]
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.text_config.vocab_size == len(tok)

    messages = [
        {"role": "system", "content": SYSTEM_INSTRUCTION},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Toy Story (1995)"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_INSTRUCTION}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(
        "<|vision_start|><|image_pad|><|vision_end|>Toy Story (1995)<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = processor(text=[text], images=[_image(0)], return_tensors="pt")
    n_image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert (
        batch["image_grid_thw"].tolist() == [[1, 4, 4]] and n_image_tokens == 4
    )  # 64² → 4×4 patches → 4 tokens
    assert tok.decode(tok("Toy Story (1995)")["input_ids"]) == "Toy Story (1995)"

    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_build_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = build_tiny_context_encoder(tmp_path / "a", seed=3)
    b = build_tiny_context_encoder(tmp_path / "b", seed=3)
    c = build_tiny_context_encoder(tmp_path / "c", seed=4)
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_tokenizer_breaks_ties_by_the_pair_not_the_token_id(tmp_path: Path) -> None:
    """(y, z) is merged first, so "yz" has the lower id; then (ab, q) and (yz, q) tie. BpeTrainer took the
    lower ids, (yz, q); icg.bpe takes the smaller strings, (ab, q), as the CLIP tokenizers do."""
    corpus = ["yzq", "yzq", "yzx", "abq", "abq"]
    path = build_tiny_context_encoder(tmp_path, corpus=corpus, vocab_size=len(SPECIAL_TOKENS) + 256 + 3)
    model = json.loads((path / "tokenizer.json").read_text())["model"]
    assert model["merges"] == [["y", "z"], ["a", "b"], ["ab", "q"]]
    assert list(model["vocab"])[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)  # specials keep the lowest ids
    assert list(model["vocab"])[-3:] == ["yz", "ab", "abq"]


def test_tokenizer_is_the_same_in_every_process(tmp_path: Path) -> None:
    """Python's string hashing and the Rust thread pool differ between processes; the merges must not."""
    code = (
        "import sys; from pathlib import Path; from icg.context import build_tiny_context_encoder; "
        "build_tiny_context_encoder(Path(sys.argv[1]), hidden_size=16, num_heads=2, vocab_size=400)"
    )
    src = str(Path(icg.__file__).resolve().parents[1])
    for run, (hash_seed, threads) in enumerate([("1", "1"), ("2", "2")]):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "RAYON_NUM_THREADS": threads}
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / str(run))], env=env, capture_output=True, timeout=300
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
    first, second = ((tmp_path / run / "tokenizer.json").read_bytes() for run in ("0", "1"))
    assert first == second


def test_sizes_are_parameters(tmp_path: Path) -> None:
    path = build_tiny_context_encoder(
        tmp_path / "m", hidden_size=32, num_heads=2, corpus=["one two three"] * 3
    )
    config = json.loads((path / "config.json").read_text())
    text_config = config.get("text_config", config)
    assert text_config["hidden_size"] == 32 and text_config["num_attention_heads"] == 2
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_tiny_context_encoder(tmp_path / "bad", hidden_size=30, num_heads=4)


def test_encoder_save_and_load_round_trip(tiny_dir: Path, tmp_path: Path) -> None:
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2, seed=1)
    with torch.no_grad():
        encoder.meta_tokens.weight.add_(0.5)  # "trained" meta tokens, different from any fresh init
    images, titles = [_image(1)], ["Babe (1995)"]
    with torch.no_grad():
        before = encoder.context_embeddings(images, titles)

    full = encoder.save_pretrained(tmp_path / "full")
    light = encoder.save_pretrained(tmp_path / "light", save_backbone=False)
    assert not (light / "model.safetensors").exists()
    assert json.loads((light / CONFIG_NAME).read_text())["mllm"] == str(tiny_dir.resolve())
    for folder in (full, light):
        loaded = ContextEncoder.from_pretrained(folder)  # count comes from the saved config
        assert loaded.num_meta_tokens == 2
        assert torch.equal(loaded.meta_tokens.weight, encoder.meta_tokens.weight)
        with torch.no_grad():
            torch.testing.assert_close(loaded.context_embeddings(images, titles), before)
    with pytest.raises(ValueError, match="holds 2 trained meta tokens"):
        ContextEncoder.from_pretrained(full, num_meta_tokens=3)


def test_fresh_meta_tokens_follow_embedding_statistics(tiny_dir: Path) -> None:
    a = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=64, seed=0)
    b = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=64, seed=0)
    c = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=64, seed=1)
    assert torch.equal(a.meta_tokens.weight, b.meta_tokens.weight)
    assert not torch.equal(a.meta_tokens.weight, c.meta_tokens.weight)
    table = a.model.get_input_embeddings().weight
    assert abs(a.meta_tokens.weight.std().item() - table.std().item()) < 0.5 * table.std().item()
    assert a.meta_tokens.weight.requires_grad
    assert not any(p.requires_grad for p in a.model.parameters())


def test_offline_env_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    with pytest.raises(OSError):  # no network attempt: a hub id that is not cached fails at once
        ContextEncoder.from_pretrained("icg-tests/not-a-cached-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()
