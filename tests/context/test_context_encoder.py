"""ContextEncoder on a tiny Qwen2.5-VL: explicit prompts, C_ref, meta splicing and positions, input errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icg.context import ContextEncoder, build_tiny_context_encoder
from icg.errors import ICGError

TITLES = ["Toy Story (1995)", "Twelve Monkeys and a Very Long Subtitle (1995)"]  # different lengths: padding


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_context_encoder(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> ContextEncoder:
    return ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2)


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


IMAGES = [_image(0), _image(1, size=80)]


def test_explicit_prompt_greedy_batched_equals_singles(encoder: ContextEncoder) -> None:
    batch = encoder.explicit_prompt(IMAGES, TITLES, max_new_tokens=12)
    assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(t, str) for t in batch)
    assert any(batch), "the seeded tiny model generates some text"
    assert "<|im_start|>" not in "".join(batch) and "Title:" not in "".join(batch)  # only the new text
    assert encoder.explicit_prompt(IMAGES, TITLES, max_new_tokens=12) == batch  # greedy is deterministic
    singles = [
        encoder.explicit_prompt([im], [t], max_new_tokens=12)[0] for im, t in zip(IMAGES, TITLES, strict=True)
    ]
    assert singles == batch


@pytest.mark.parametrize("num_meta", [1, 2])
def test_context_shape(tiny_dir: Path, num_meta: int) -> None:
    enc = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=num_meta)
    with torch.no_grad():
        context = enc.context_embeddings(IMAGES, TITLES)
    assert context.shape == (2, num_meta, enc.hidden_size) == (2, num_meta, 64)
    assert torch.isfinite(context).all()


def test_context_batch_equals_singles(encoder: ContextEncoder) -> None:
    with torch.no_grad():
        batch = encoder.context_embeddings(IMAGES, TITLES)
        singles = torch.cat(
            [encoder.context_embeddings([im], [t]) for im, t in zip(IMAGES, TITLES, strict=True)]
        )
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5)


def test_meta_positions_follow_the_prompt(encoder: ContextEncoder) -> None:
    cb = encoder.prepare(IMAGES, TITLES)
    seq, n = cb.seq, encoder.num_meta_tokens
    length = seq.input_ids.shape[1]
    assert seq.meta_index.tolist() == [list(range(length - n, length))] * 2  # appended at the very end
    assert (seq.input_ids[:, -n:] == encoder.placeholder_id).all()
    assert (seq.attention_mask[:, -n:] == 1).all() and (seq.mm_token_type_ids[:, -n:] == 0).all()
    assert seq.attention_mask[0, 0] == 0  # the shorter row is left-padded
    image_id = encoder.model.config.image_token_id
    for b in range(2):
        pos = cb.position_ids[:, b]  # (3, L)
        last_prompt = length - n - 1  # "\n" after "assistant": a text token, equal on all three axes
        assert pos[0, last_prompt] == pos[1, last_prompt] == pos[2, last_prompt]
        expected = pos[0, last_prompt] + 1 + torch.arange(n)
        for axis in range(3):  # meta tokens continue the text positions, +1 per token on every axis
            assert pos[axis, -n:].tolist() == expected.tolist()
        image_pos = pos[:, seq.input_ids[b] == image_id]  # (3, n_img) 3D positions: h and w vary
        assert (
            image_pos.shape[1] >= 4
            and len(set(image_pos[1].tolist())) > 1
            and len(set(image_pos[2].tolist())) > 1
        )


def test_splice_matches_the_models_own_token_path(encoder: ContextEncoder) -> None:
    """With meta vectors equal to a real token's embedding, C_ref equals the plain model run on that token
    id: the image features, the M-RoPE positions and the meta positions are what the library computes."""
    token_id = encoder.processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    table = encoder.model.get_input_embeddings().weight
    saved = encoder.meta_tokens.weight.detach().clone()
    try:
        with torch.no_grad():
            encoder.meta_tokens.weight.copy_(table[token_id].expand_as(saved))
            ours = encoder.context_embeddings(IMAGES, TITLES)  # (B, N, D)
            cb = encoder.prepare(IMAGES, TITLES)
            ids = cb.seq.input_ids.clone()
            rows = torch.arange(2).unsqueeze(1)
            ids[rows, cb.seq.meta_index] = token_id
            encoder.model.model.rope_deltas = None
            out = encoder.model.model(  # no inputs_embeds, no position_ids: the model does it all
                input_ids=ids,
                attention_mask=cb.seq.attention_mask,
                pixel_values=cb.pixel_values,
                image_grid_thw=cb.image_grid_thw,
                mm_token_type_ids=cb.seq.mm_token_type_ids,
                use_cache=False,
            )
            reference = out.last_hidden_state[rows, cb.seq.meta_index]
    finally:
        with torch.no_grad():
            encoder.meta_tokens.weight.copy_(saved)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_meta_title_and_image_all_change_context(encoder: ContextEncoder) -> None:
    with torch.no_grad():
        base = encoder.context_embeddings([IMAGES[0]], [TITLES[0]])
        other_title = encoder.context_embeddings([IMAGES[0]], ["GoldenEye (1995)"])
        other_image = encoder.context_embeddings([_image(7)], [TITLES[0]])
        saved = encoder.meta_tokens.weight.clone()
        encoder.meta_tokens.weight[0].add_(1.0)  # only the first meta token changes
        other_meta = encoder.context_embeddings([IMAGES[0]], [TITLES[0]])
        encoder.meta_tokens.weight.copy_(saved)
        again = encoder.context_embeddings([IMAGES[0]], [TITLES[0]])
    torch.testing.assert_close(again, base)
    for changed in (other_title, other_image, other_meta):
        assert (changed - base).abs().max() > 1e-3
    # causal attention: token 0 cannot see token 1, token 1 sees token 0
    assert (other_meta[:, 0] - base[:, 0]).abs().max() > 1e-3 and (
        other_meta[:, 1] - base[:, 1]
    ).abs().max() > 1e-3


def test_gradients_reach_meta_tokens_not_frozen_backbone(encoder: ContextEncoder, tiny_dir: Path) -> None:
    encoder.zero_grad(set_to_none=True)
    encoder.context_embeddings(IMAGES, TITLES).pow(2).sum().backward()
    grad = encoder.meta_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    assert all(p.grad is None and not p.requires_grad for p in encoder.model.parameters())
    encoder.zero_grad(set_to_none=True)

    encoder.train()
    assert encoder.meta_tokens.training and not encoder.model.training  # frozen backbone stays in eval mode
    encoder.eval()

    trainable = ContextEncoder.from_pretrained(tiny_dir, train_backbone=True)
    trainable.context_embeddings(IMAGES, TITLES).sum().backward()
    visual = trainable.model.model.visual.patch_embed.proj.weight
    assert visual.grad is not None and visual.grad.abs().sum() > 0  # the image path is in the graph


def _corrupt_png() -> bytes:
    buffer = io.BytesIO()
    _image(3).save(buffer, format="PNG")
    return buffer.getvalue()[:200]  # truncated after the header


@pytest.mark.parametrize(
    ("images", "titles", "message"),
    [
        ([IMAGES[0]], [""], r"titles\[0\] is empty"),
        ([IMAGES[0], IMAGES[1]], ["ok", "   "], r"titles\[1\] is empty"),
        ([IMAGES[0]], [None], r"titles\[0\] is empty or not a string"),
        ([IMAGES[0]], ["Babe <|image_pad|>"], r"titles\[0\] contains the special token\(s\) \['<\|image_pad"),
        ([IMAGES[0], IMAGES[1]], ["only one title"], "batch length mismatch: 2 images but 1 titles"),
        ([], [], "empty batch"),
        ([np.zeros((8, 8, 3))], ["t"], r"images\[0\] is a ndarray"),
        ([IMAGES[0], _corrupt_png()], ["a", "b"], r"images\[1\] is not a readable image"),
        (
            ["/nonexistent/cover.jpg"],
            ["t"],
            r"images\[0\] \(/nonexistent/cover.jpg\) is not a readable image",
        ),
    ],
)
def test_bad_inputs_raise_value_error(
    encoder: ContextEncoder, images: list, titles: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        encoder.context_embeddings(images, titles)
    assert isinstance(caught.value, ICGError)  # the CLI shows these as one line, without a traceback
    with pytest.raises(ValueError, match=message):
        encoder.explicit_prompt(images, titles, max_new_tokens=2)


def test_corrupt_file_on_disk_is_named(encoder: ContextEncoder, tmp_path: Path) -> None:
    path = tmp_path / "cover.png"
    path.write_bytes(_corrupt_png())
    lazily_opened = Image.open(path)  # PIL opens lazily: the error only shows when pixels are read
    with pytest.raises(ValueError, match=r"images\[0\] is not a readable image"):
        encoder.context_embeddings([lazily_opened], ["t"])
    with pytest.raises(ValueError, match=rf"images\[0\] \({path}\) is not a readable image"):
        encoder.context_embeddings([path], ["t"])
    good = tmp_path / "good.png"
    IMAGES[0].save(good)
    with torch.no_grad():  # paths and bytes of a good image give the same C_ref as the PIL image
        from_path = encoder.context_embeddings([good], [TITLES[0]])
        from_bytes = encoder.context_embeddings([good.read_bytes()], [TITLES[0]])
        from_pil = encoder.context_embeddings([IMAGES[0]], [TITLES[0]])
    torch.testing.assert_close(from_path, from_pil)
    torch.testing.assert_close(from_bytes, from_pil)


def test_non_finite_context_is_an_error(tiny_dir: Path) -> None:
    enc = ContextEncoder.from_pretrained(tiny_dir)
    with torch.no_grad():
        enc.meta_tokens.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite C_ref for items \[0, 1\]"):
        enc.context_embeddings(IMAGES, TITLES)


def test_bfloat16_backbone_keeps_float32_meta_tokens(tiny_dir: Path) -> None:
    enc = ContextEncoder.from_pretrained(tiny_dir, num_meta_tokens=2, torch_dtype=torch.bfloat16)
    assert enc.model.dtype == torch.bfloat16 and enc.meta_tokens.weight.dtype == torch.float32
    context = enc.context_embeddings(IMAGES, TITLES)
    assert context.dtype == torch.bfloat16 and context.shape == (2, 2, 64)
    context.float().pow(2).sum().backward()
    assert enc.meta_tokens.weight.grad.dtype == torch.float32 and enc.meta_tokens.weight.grad.abs().sum() > 0
    prompts, cached = enc.encode_items(IMAGES, TITLES, max_new_tokens=2)
    assert cached.dtype == torch.float32 and len(prompts) == 2
