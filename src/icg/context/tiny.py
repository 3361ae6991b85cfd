"""A tiny random Qwen2.5-VL checkpoint built offline, saved exactly like a real one.

Why: the real context encoder is Qwen2.5-VL-7B, which these machines cannot download. Tests (and the "mini"
preset, which trains this at a bigger size) need the *same classes* — `Qwen2_5_VLForConditionalGeneration`,
`Qwen2Tokenizer`, `Qwen2VLImageProcessor`, `Qwen2_5_VLProcessor` — written by `save_pretrained` so that the
loader a user calls (`ContextEncoder.from_pretrained(dir)`) is the one under test.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from icg.bpe import iter_merges
from icg.context.encoder import SYSTEM_INSTRUCTION

logger = logging.getLogger(__name__)

# Qwen2.5-VL's own special tokens, in its order; the model config points at their ids.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split (digits one by one, letters grouped, punctuation runs), then byte-level BPE.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML as Qwen2.5-VL renders it: a default system turn, images as <|vision_start|><|image_pad|>
# <|vision_end|> (the processor expands <|image_pad|> to one token per merged patch).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_CORPUS = (
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Mighty Aphrodite (1995)",
    "Postino, Il (1994)",
    "The Silent Harbour (1987)",
    "Midnight Over Tokyo (2003)",
    "A Garden of Red Lanterns (1991)",
    "Return of the Iron Comet (1979)",
    "Little Fox and the Moon (2010)",
    "The Last Summer Train (1968)",
    "Neon Desert Run (1999)",
    "Secrets of the Glass Lighthouse (1956)",
    "Dragon Valley Express (2008)",
    "Paper Boats (2015)",
    "cinematic movie poster, dramatic lighting, bold title typography",
    "a cartoon cover with bright colors and a smiling hero",
    "a dark thriller poster with a lone figure in the rain",
    "a romantic comedy cover, warm pastel tones, two people laughing",
    "vintage science fiction art, spaceship over a red planet",
    "Title: ",
    SYSTEM_INSTRUCTION,
)


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen2.5-VL's 16:24:24 ratio."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]


def _train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokenizer, learned on the corpus by `icg.bpe` (deterministic).

    The vocabulary is laid out as `BpeTrainer` lays it out: special tokens first (lowest ids), the 256 byte
    symbols by code point, then one token per new merged string until `vocab_size` tokens (or no pair left).
    """
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    merges: list[tuple[str, str]] = []
    for a, b in iter_merges(words):
        if len(vocab) >= vocab_size:
            break
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    tok.model = BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_context_encoder(
    out_dir: Path,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    vocab_size: int = 512,
    max_pixels: int = 56 * 56,
) -> Path:
    """Write a random Qwen2.5-VL checkpoint (model + processor) to `out_dir`; deterministic for a seed.

    `vocab_size` is the BPE target; a small corpus yields fewer tokens and the model gets exactly the
    tokenizer's size. With the defaults a 64² image becomes 4×4 patches of 14 px, i.e. 4 merged image tokens.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(DEFAULT_CORPUS if corpus is None else corpus, vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    patch, merge = 14, 2
    min_pixels = (patch * merge) ** 2
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels {max_pixels} is below one merged patch ({min_pixels})")
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=merge
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=merge
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    head_dim = hidden_size // num_heads
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": max(1, num_heads // 2),
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(head_dim)},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": max(1, vision_hidden_size // 16),
            "out_hidden_size": hidden_size,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "fullatt_block_indexes": [vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny Qwen2.5-VL (%d params, vocab %d) written to %s", n_params, len(tokenizer), out_dir)
    return out_dir
