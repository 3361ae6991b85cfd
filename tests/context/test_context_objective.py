"""Meta-token objective: seeded transforms, CLIP reconstruction loss, next-token loss on teacher text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from icg.context import ContextEncoder, build_tiny_context_encoder, meta_token_loss, transform_images
from icg.context.meta_tokens import IGNORE_INDEX

TITLES = ["Toy Story (1995)", "Dead Man Walking (1995)", "Paper Boats (2015)"]
CLIP_DIM = 16


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_context_encoder(tmp_path_factory.mktemp("tiny_qwen"))


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


IMAGES = [_image(0), _image(1), _image(2, size=72)]


@pytest.mark.parametrize("kind", ["mask", "blur", "crop", "random"])
def test_transforms_are_seeded_and_change_the_image(kind: str) -> None:
    state = torch.get_rng_state()
    a = transform_images(IMAGES, kind, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # a seed does not consume the global RNG
    b = transform_images(IMAGES, kind, seed=5)
    c = transform_images(IMAGES, kind, seed=6)
    arrays = [np.asarray(im) for im in a]
    assert [im.size for im in a] == [im.size for im in IMAGES]
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(arrays, b, strict=True))
    assert all(not np.array_equal(x, np.asarray(y)) for x, y in zip(arrays, IMAGES, strict=True))
    if kind != "blur":  # blur's sigma is random too, but the mask/crop geometry differs far more visibly
        assert any(not np.array_equal(x, np.asarray(y)) for x, y in zip(arrays, c, strict=True))


def test_mask_blacks_out_a_rectangle_and_blur_smooths() -> None:
    gray = Image.new("RGB", (64, 64), (200, 200, 200))
    masked = np.asarray(transform_images([gray], "mask", seed=0)[0])
    zeros = (masked == 0).all(-1)
    assert 0.1 * 64 * 64 <= zeros.sum() <= 0.3 * 64 * 64 + 64
    noisy = IMAGES[0]
    blurred = np.asarray(transform_images([noisy], "blur", seed=0)[0]).astype(float)
    assert blurred.std() < 0.8 * np.asarray(noisy).astype(float).std()
    with pytest.raises(ValueError, match="unknown transform 'rotate'"):
        transform_images([noisy], "rotate")


def test_meta_loss_decreases_with_meta_tokens_and_head(tiny_dir: Path) -> None:
    torch.manual_seed(0)
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2)
    head = nn.Linear(encoder.hidden_size, CLIP_DIM)
    clip = torch.randn(len(TITLES), CLIP_DIM)  # stands in for CLIP(I_ref) of the clean covers
    params = [encoder.meta_tokens.weight, *head.parameters()]
    assert all(p.requires_grad for p in params)
    optimizer = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for step in range(12):
        out = meta_token_loss(encoder, IMAGES, TITLES, clip, head, transform="random", seed=step)
        assert out["lm_loss"] is None and out["loss"] is out["meta_loss"]
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in encoder.model.parameters())  # backbone stays frozen


def test_meta_tokens_alone_reduce_the_loss(tiny_dir: Path) -> None:
    """With the head frozen, only the meta tokens can move: the loss must still go down (through the MLLM)."""
    torch.manual_seed(1)
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=1)
    head = nn.Linear(encoder.hidden_size, CLIP_DIM).requires_grad_(False)
    clip = torch.randn(1, CLIP_DIM)
    optimizer = torch.optim.Adam([encoder.meta_tokens.weight], lr=5e-2)
    first = last = None
    for _ in range(10):
        out = meta_token_loss(encoder, IMAGES[:1], TITLES[:1], clip, head, transform="mask", seed=0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = out["loss"].item() if first is None else first
        last = out["loss"].item()
    assert last < 0.8 * first, (first, last)


def test_normalized_loss_matches_formula(tiny_dir: Path) -> None:
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2)
    head = nn.Linear(encoder.hidden_size, CLIP_DIM)
    clip = torch.randn(2, CLIP_DIM)
    with torch.no_grad():
        raw = meta_token_loss(encoder, IMAGES[:2], TITLES[:2], clip, head, "crop", seed=3, normalize=False)
        norm = meta_token_loss(encoder, IMAGES[:2], TITLES[:2], clip, head, "crop", seed=3)
        pred = head(
            encoder.context_embeddings(transform_images(IMAGES[:2], "crop", seed=3), TITLES[:2])
        ).mean(1)
    torch.testing.assert_close(raw["meta_loss"], (pred - clip).pow(2).sum(-1).mean())
    cos = torch.nn.functional.cosine_similarity(pred, clip, dim=-1)
    torch.testing.assert_close(norm["meta_loss"], (2 - 2 * cos).mean())
    per_token = torch.randn(2, 2, CLIP_DIM)  # (B, N, C) targets are compared token by token
    assert meta_token_loss(encoder, IMAGES[:2], TITLES[:2], per_token, head, seed=0)["meta_loss"].ndim == 0
    with pytest.raises(ValueError, match="clip_image_embeds must be"):
        meta_token_loss(encoder, IMAGES[:2], TITLES[:2], torch.randn(3, CLIP_DIM), head)
    with pytest.raises(ValueError, match="does not match the CLIP target"):
        meta_token_loss(encoder, IMAGES[:2], TITLES[:2], torch.randn(2, CLIP_DIM + 1), head)


def test_teacher_text_adds_next_token_loss_after_meta(tiny_dir: Path) -> None:
    encoder = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2)
    targets = ["a cartoon cover with bright colors", "a dark thriller poster"]
    tok = encoder.processor.tokenizer
    cb = encoder.prepare(IMAGES[:2], TITLES[:2], targets)
    for b, text in enumerate(
        targets
    ):  # labels are exactly the answer (+ <|im_end|>), right after the meta tokens
        answer = tok(text + tok.eos_token, add_special_tokens=False)["input_ids"]
        labelled = (cb.seq.labels[b] != IGNORE_INDEX).nonzero().flatten()
        assert cb.seq.labels[b, labelled].tolist() == answer == cb.seq.input_ids[b, -len(answer) :].tolist()
        assert labelled[0] == cb.seq.meta_index[b, -1] + 1 and labelled[-1] == cb.seq.input_ids.shape[1] - 1

    head = nn.Linear(encoder.hidden_size, CLIP_DIM)
    out = meta_token_loss(
        encoder, IMAGES[:2], TITLES[:2], torch.randn(2, CLIP_DIM), head, text_targets=targets, seed=0
    )
    assert out["lm_loss"] is not None and torch.isfinite(out["lm_loss"]) and out["lm_loss"] > 0
    torch.testing.assert_close(out["loss"], out["meta_loss"] + out["lm_loss"])
    # meta_weight 0 (Table 3's "no meta-token stage"): the meta loss is logged but not optimised
    no_meta = meta_token_loss(encoder, IMAGES[:2], TITLES[:2], torch.randn(2, CLIP_DIM), head,
                              text_targets=targets, seed=0, meta_weight=0.0)  # fmt: skip
    torch.testing.assert_close(no_meta["loss"], no_meta["lm_loss"])
    assert no_meta["meta_loss"] > 0
    out["lm_loss"].backward()  # the answer text attends to the meta tokens
    assert encoder.meta_tokens.weight.grad is not None and encoder.meta_tokens.weight.grad.abs().sum() > 0

    with torch.no_grad():  # C_ref does not depend on the answer that follows it (causal)
        with_answer = encoder(IMAGES[:2], TITLES[:2], targets).context
        without = encoder(IMAGES[:2], TITLES[:2]).context
    torch.testing.assert_close(with_answer, without, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"text_targets\[1\] is empty"):
        encoder.prepare(IMAGES[:2], TITLES[:2], ["fine", " "])
