"""The package's one byte-pair-encoding learner: greedy merges that are a pure function of the word counts.

Every tokenizer ICG builds offline learns its merges here: the mini CLIP's and the reward model's
(`icg.clip_tokenizer`), the tiny preset's CLIP vocabulary (`icg.presets_tiny`) and the tiny Qwen2.5-VL's
(`icg.context.tiny`). Each caller splits its texts into words its own way (the tokenizer's pre-tokenizer) and
says whether the last symbol of a word carries an end-of-word marker (CLIP's `</w>`; GPT-2/Qwen2 have none).

Why not `tokenizers.trainers.BpeTrainer`: it breaks count ties by token id, and with an end-of-word suffix
those ids are handed out in hash-map order, so two processes learn different merges from the same texts.
Here a tie goes to the smallest pair of strings, whatever the order of the words or the process.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping


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


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """`symbols` with every non-overlapping occurrence of `pair`, left to right, joined into one symbol."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def iter_merges(word_counts: Mapping[str, int], end_of_word: str = "") -> Iterator[tuple[str, str]]:
    """Greedy merges, most frequent pair first, ties → smallest pair; stops when no pair is left.

    `word_counts` maps a pre-tokenized word (one character per initial symbol, e.g. GPT-2's byte alphabet)
    to its count; `end_of_word` is appended to each word's last symbol. Pair counts are updated only in the
    words that hold the merged pair and a lazy max-heap finds the next best one, so a few thousand merges
    over MovieLens' titles take about a second. A generator: callers stop at a merge count or a vocab size.
    """
    words: list[list[str]] = []
    freq: list[int] = []
    for word, n in sorted(word_counts.items()):
        if word and n > 0:
            words.append([*word[:-1], word[-1] + end_of_word])
            freq.append(n)
    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for w, symbols in enumerate(words):
        for pair in itertools.pairwise(symbols):
            pair_count[pair] += freq[w]
            where[pair].add(w)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    while heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # a stale entry: the count changed after it was pushed
        yield pair
        touched: set[tuple[str, str]] = set()
        for w in sorted(where.pop(pair, ())):
            for old in itertools.pairwise(words[w]):
                pair_count[old] -= freq[w]
                touched.add(old)
            words[w] = _merge_pair(words[w], pair)
            for new in itertools.pairwise(words[w]):
                pair_count[new] += freq[w]
                where[new].add(w)
                touched.add(new)
        pair_count.pop(pair, None)
        for p in touched:
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_count[p], p))


def learn_merges(
    word_counts: Mapping[str, int], num_merges: int, end_of_word: str = ""
) -> list[tuple[str, str]]:
    """The first `num_merges` merges of `iter_merges` (fewer when the words run out of pairs)."""
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    return list(itertools.islice(iter_merges(word_counts, end_of_word), num_merges))
