"""Does a stated taste lean U_pre? Cold start from stated taste on the mini user encoder (issue 18 item 6).

For "loves <genre>" profiles: the known users the taste table mixes (their weight and own training taste), and
the U_pre cosine between the stated-taste embedding and the mean U_pre of the users who most like that genre
(top 10 % of the table's score) vs the others, raw and centred on all known users' mean; then a matrix of
stated tastes × liker groups. A measurement, not a test: nothing here is asserted.

    PYTHONPATH=src .venv/bin/python bench/stated_taste_lean.py
"""

from __future__ import annotations

import torch
from torch.nn.functional import cosine_similarity as cos

from icg.users import TwoTowerModel

ENCODER = "src/icg/assets/mini/user_encoder"
GENRES = ("Horror", "Romance", "Sci-Fi", "Children's", "Western", "Documentary")


def likers(table: torch.Tensor, known: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U_pre of the top-10 % likers of genre column g, and of the others (known users, <unk> row dropped)."""
    col = table[1:, g]
    top = col >= torch.quantile(col, 0.9)
    return known[top], known[~top]


def main() -> None:
    model = TwoTowerModel.from_pretrained(ENCODER)
    vocab, table = model.vocab, model.user_taste
    known = model.encode_users(list(vocab.users.tokens[1:]))  # (N, D)
    mu = known.mean(0)
    for genre in GENRES[:4]:
        g, text = vocab.genres.index(genre), f"loves {genre.lower()}"
        weights, index = model.taste_neighbours(vocab.stated_taste([text]))
        print(f"== '{text}': top neighbours (user, weight, own training taste for {genre}, top genre)")
        for k in range(5):
            u = int(index[0, k])
            top = vocab.genres.tokens[int(table[u].argmax())]
            print(f"  user {vocab.users.tokens[u]:>4} w={float(weights[0, k]):.3f} "
                  f"taste={float(table[u, g]):+.3f} top={top}")  # fmt: skip
        mixed = float((weights[0] * table[index[0], g]).sum())
        print(f"  weighted neighbour taste {mixed:+.3f}; all users' mean {float(table[1:, g].mean()):+.3f}")
        e = model.encode_users([None], [text])[0]
        yes, no = likers(table, known, g)
        print(f"  cos(stated, likers' mean) {float(cos(e, yes.mean(0), dim=0)):.3f} vs others' "
              f"{float(cos(e, no.mean(0), dim=0)):.3f} (n={len(yes)}/{len(no)}); centred "
              f"{float(cos(e - mu, yes.mean(0) - mu, dim=0)):+.3f} vs "
              f"{float(cos(e - mu, no.mean(0) - mu, dim=0)):+.3f}")  # fmt: skip
    stated = model.encode_users([None] * len(GENRES), [f"loves {g.lower()}" for g in GENRES])
    groups = torch.stack([likers(table, known, vocab.genres.index(g))[0].mean(0) for g in GENRES])
    matrix = cos((stated - mu)[:, None], (groups - mu)[None], dim=-1)  # (stated, liker group)
    print("== centred cos: rows stated 'loves <g>', columns mean U_pre of <g'>'s top-10 % likers")
    print(" " * 12 + " ".join(f"{g[:8]:>9}" for g in GENRES))
    for g, row in zip(GENRES, matrix, strict=True):
        print(f"{g[:10]:>11} " + " ".join(f"{float(x):+9.3f}" for x in row))
    diagonal = torch.arange(len(GENRES))
    print(f"liker groups whose nearest stated taste is their own: {int((matrix.argmax(0) == diagonal).sum())}"
          f" of {len(GENRES)}; stated tastes nearest their own group: "
          f"{int((matrix.argmax(1) == diagonal).sum())} of {len(GENRES)}")  # fmt: skip


if __name__ == "__main__":
    main()
