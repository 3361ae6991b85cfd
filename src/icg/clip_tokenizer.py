"""A CLIP byte-level BPE tokenizer learned offline from a list of texts (no hub, no download).

The vocabulary has CLIP's layout (256 byte symbols, the same with the word-final `</w>`, one token per merge,
then `<|startoftext|>` and `<|endoftext|>`), so `CLIPTokenizer.from_pretrained(folder)` and `CLIPProcessor`
load it like OpenAI's. Texts are split into words exactly as `CLIPTokenizer` splits them (its own normalizer
and pre-tokenizer are reused), so every learned merge is one the tokenizer will apply. The merges come from
`icg.bpe`, the package's one deterministic learner (why not `BpeTrainer` is said there).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from transformers import CLIPTokenizer

from icg.bpe import bytes_to_unicode, learn_merges

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Byte-level words as CLIPTokenizer's own normalizer + pre-tokenizer produce them."""
    backend = CLIPTokenizer(vocab={BOS_TOKEN: 0, EOS_TOKEN: 1}, merges=[]).backend_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text)
        counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    return counts


def learn_bpe_merges(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy byte-pair merges over CLIP's words with `</w>` (most frequent pair first, ties → smallest)."""
    return learn_merges(word_counts(texts), num_merges, end_of_word=WORD_END)


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + `</w>`, merged symbols in merge order, BOS, EOS."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + WORD_END for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def write_vocab_and_merges(
    directory: str | Path, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]
) -> Path:
    """vocab.json and merges.txt as OpenAI's CLIP folders hold them (the tokenizer_config is the caller's)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def train_clip_tokenizer(
    texts: Iterable[str], directory: str | Path, vocab_size: int, max_length: int
) -> CLIPTokenizer:
    """Learn merges until the vocabulary has `vocab_size` tokens (or the texts run out of pairs); save; load.

    Writes vocab.json, merges.txt and tokenizer_config.json into `directory` and returns
    `CLIPTokenizer.from_pretrained(directory)`, the path every later user takes.
    """
    base = 2 * 256 + 2
    if vocab_size < base:
        raise ValueError(f"vocab_size must be at least {base} (bytes, bytes</w>, BOS, EOS), got {vocab_size}")
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 (BOS, one token, EOS), got {max_length}")
    merges = learn_bpe_merges(texts, vocab_size - base)
    vocab = clip_vocab(merges)
    folder = write_vocab_and_merges(directory, vocab, merges)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))
