"""How personal is the personalized reward? Variance of R(user, cover) split into cover, user and interaction.

A two-way decomposition over a (users × covers) grid of the preset's personalized reward model: the covers are
reference covers of random ml-100k items (caption "a movie poster"), the users random users with their reward
profile sentences. Only the interaction (which cover suits which user) can teach the adapter's user path
anything; the cover term is appeal to everyone, the user term how generous a user's scores are.

    .venv/bin/python bench/reward_variance.py [--users 40] [--items 40] [--seed 0] [--reward DIR]

Profiles are `user_profiles(style="taste")` (the taste recipe's: stated liked and disliked genres); pass
`--profile watched` for a model of the paper's recipe.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import display_title
from icg.data.pairs import PairConfig, build_pairs
from icg.data.registry import load_dataset
from icg.presets import get_preset, icg_home
from icg.rewards.personalized import PersonalizedRewardModel, reward_text
from icg.training.reward_profiles import user_profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward", default=None, help="a reward-model folder (default: the preset's)")
    parser.add_argument(
        "--profile", default="taste", choices=("taste", "watched"), help="profile style the model reads"
    )
    args = parser.parse_args()
    spec, data = get_preset(args.preset), load_dataset("ml-100k")
    reward = PersonalizedRewardModel.from_pretrained(args.reward or spec.reward_model)
    profiles = user_profiles(data, build_pairs(data.interactions, PairConfig())[0], style=args.profile)
    items = data.items.sample(args.items, random_state=args.seed).reset_index(drop=True)
    size = reward.clip.config.vision_config.image_size
    covers = render_cover_cache(items, icg_home() / "covers", size, 1, False)[:, 0].float() / 255
    users = np.random.default_rng(args.seed).choice(sorted(profiles), args.users, replace=False)
    texts = [reward_text(display_title(str(t)) or str(t), "a movie poster") for t in items["title"]]
    grid = np.stack(
        [reward.score(covers, texts, [profiles[u]] * len(texts), grad=False).numpy() for u in users]
    )  # (U, I)
    cover, user = grid.mean(0), grid.mean(1)
    interaction = grid - cover[None] - user[:, None] + grid.mean()
    total = grid.var()
    shares = {
        "cover": cover.var() / total,
        "user": user.var() / total,
        "interaction": interaction.var() / total,
    }
    print(f"{args.preset}: {args.users} users × {args.items} covers, total variance {total:.4f}")
    for name, share in shares.items():
        print(f"  {name:<12} {100 * share:5.1f} %")
    print(json.dumps({k: round(float(v), 4) for k, v in shares.items()}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
