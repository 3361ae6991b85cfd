"""A CLIP byte-level BPE tokenizer learned offline from a list of texts (no hub, no download).

The vocabulary has CLIP's layout (256 byte symbols, the same with the word-final `</w>`, one token per merge,
then `<|startoftext|>` and `<|endoftext|>`), so `CLIPTokenizer.from_pretrained(folder)` and `CLIPProcessor`
load it like OpenAI's. Texts are split into words exactly as `CLIPTokenizer` splits them (its own normalizer
and pre-tokenizer are reused), so every learned merge is one the tokenizer will apply.

Why not `tokenizers.trainers.BpeTrainer`: it breaks count ties in hash-map order, so two processes learn
different merges from the same texts, and two runs with one seed would not give the same model. Here ties
are broken by the pair itself and the merges are a pure function of the texts.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte alphabet: printable bytes map to themselves, the others to code points from 256 on."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Byte-level words as CLIPTokenizer's own normalizer + pre-tokenizer produce them."""
    backend = CLIPTokenizer(vocab={BOS_TOKEN: 0, EOS_TOKEN: 1}, merges=[]).backend_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text)
        counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    return counts


def learn_bpe_merges(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy byte-pair merges (most frequent pair first, ties → smallest pair); incremental pair counts.

    Each merge touches only the words that contain the pair, and a lazy max-heap finds the next best pair, so
    a few thousand merges over MovieLens' titles take about a second.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    counts = word_counts(texts)
    words: list[list[str]] = []
    freq: list[int] = []
    for word, n in sorted(counts.items()):
        symbols = list(word)
        symbols[-1] += WORD_END
        words.append(symbols)
        freq.append(n)
    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for w, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_count[pair] += freq[w]
            where[pair].add(w)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # a stale entry: the count changed after it was pushed
        merges.append(pair)
        touched: set[tuple[str, str]] = set()
        for w in sorted(where.pop(pair, ())):
            symbols = words[w]
            for old in zip(symbols, symbols[1:], strict=False):
                pair_count[old] -= freq[w]
                touched.add(old)
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[w] = merged
            for new in zip(merged, merged[1:], strict=False):
                pair_count[new] += freq[w]
                where[new].add(w)
                touched.add(new)
        pair_count.pop(pair, None)
        for p in touched:
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


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
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
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
