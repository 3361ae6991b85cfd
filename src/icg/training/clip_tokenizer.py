"""Moved to `icg.clip_tokenizer` (it serves the tiny presets as well as the mini's trainers); the names stay
importable from here."""

from icg.clip_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    WORD_END,
    bytes_to_unicode,
    clip_vocab,
    learn_bpe_merges,
    train_clip_tokenizer,
    word_counts,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "WORD_END",
    "bytes_to_unicode",
    "clip_vocab",
    "learn_bpe_merges",
    "train_clip_tokenizer",
    "word_counts",
]
