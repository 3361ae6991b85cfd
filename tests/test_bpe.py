"""icg.bpe, the one BPE learner: greedy, ties to the smallest pair, a pure function of the word counts."""

from __future__ import annotations

import pytest

from icg.bpe import bytes_to_unicode, iter_merges, learn_merges

# (y, z) is the most frequent pair, so "yz" gets the lower token id; then (yz, q), (a, b) and (b, q) tie at 2,
# and after (a, b) so do (ab, q) and (yz, q). By strings (ab, q) comes first; by token ids (yz, q) would.
TIED = {"yzq": 2, "yzx": 1, "abq": 2}


def test_ties_go_to_the_smallest_pair_of_strings() -> None:
    assert learn_merges(TIED, 3) == [("y", "z"), ("a", "b"), ("ab", "q")]
    assert list(iter_merges(TIED)) == [("y", "z"), ("a", "b"), ("ab", "q"), ("yz", "q"), ("yz", "x")]
    assert learn_merges(dict(reversed(TIED.items())), 5) == list(iter_merges(TIED))  # word order is no input


def test_end_of_word_marker_and_limits() -> None:
    assert learn_merges({"abab": 1}, 5, end_of_word="</w>") == [("a", "b"), ("a", "b</w>"), ("ab", "ab</w>")]
    assert learn_merges({"aaaa": 3}, 5) == [("a", "a"), ("aa", "aa")]  # overlapping pairs merge left to right
    assert learn_merges({"a": 4, "": 2}, 5) == []  # no pair: no merge, and an empty word is no error
    with pytest.raises(ValueError, match="num_merges"):
        learn_merges(TIED, -1)


def test_byte_alphabet_is_gpt2s() -> None:
    alphabet = bytes_to_unicode()
    assert len(set(alphabet.values())) == 256
    assert alphabet[ord("a")] == "a" and alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ"
