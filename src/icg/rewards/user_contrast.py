"""The user-specific part of a personalized reward: R(u_b, x_b) − mean over the batch's other users R(u, x_b).

Why: on the mini, 91 % of the personalized reward's variance over (user, cover) is the cover's appeal to
everyone and 3 % the user's general generosity; only 6 % is the interaction — which cover suits which user
(`bench/reward_variance.py`). Maximising R therefore mostly makes every user's cover more appealing to all,
and gives the adapter's user path little to learn. Subtracting what the batch's other users would think of the
same cover cancels the appeal term, so the gradient is what makes this cover *this* user's. The other users
are the batch's own (sample b is compared with the users of samples b+1, …, b+B−1, cyclically): no randomness,
so training stays exactly resumable; B − 1 extra scores per cover.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from icg.rewards.base import Reward, Users


class _DelegatingReward(Reward):
    """A reward computed from another one's scores: its name, loss, towers and text cache are the base's."""

    frozen = True

    def __init__(self, base: Reward) -> None:
        super().__init__()
        self.base = base
        self.name, self.needs_texts, self.default_loss = base.name, base.needs_texts, base.default_loss

    def towers(self) -> list:
        return self.base.towers()

    def warm_text_cache(self, texts, users=None) -> None:
        self.base.warm_text_cache(texts, users)

    def text_tensors(self) -> list:
        return self.base.text_tensors()

    @staticmethod
    def profiles(users: Users, what: str) -> Sequence[str]:
        """The batch's users as profile sentences: other users' scores need them as text."""
        if users is None or isinstance(users, Tensor):
            raise ValueError(f"the {what} reward needs users as B profile sentences (strings)")
        return users


class UserContrastReward(_DelegatingReward):
    """Wraps a personalized reward; scores (B,) = own user's score − the mean of the batch's other users'."""

    def tower_slots(self) -> list:
        return self.base.tower_slots() * 2  # the same covers scored under B users: one image pass shared

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        users = self.profiles(users, "user-contrast")
        own = self.base.score(images, texts, users)
        batch = len(users)
        if batch < 2:
            raise ValueError("the user-contrast reward needs at least 2 samples per batch (other users)")
        others = [
            self.base.score(images, texts, [users[(b + shift) % batch] for b in range(batch)])
            for shift in range(1, batch)
        ]
        return own - torch.stack(others).mean(0)


class UserSwapReward(_DelegatingReward):
    """For groups of `group` consecutive samples that share an item (and noise): R(u_b, x_b) − the mean of
    R(u_b, x_b') over the group's other covers x_b' — does the cover made for u suit u better than the same
    item's covers made for other users? The swap test of `icg evaluate adapter`, as a training signal."""

    def __init__(self, base: Reward, group: int) -> None:
        if group < 2:
            raise ValueError(f"the swap reward needs groups of at least 2 users, got {group}")
        super().__init__(base)
        self.group = group

    def _score(self, images: Tensor, texts: list[str] | None, users: Users) -> Tensor:
        users = self.profiles(users, "swap")
        batch, g = len(users), self.group
        if batch % g:
            raise ValueError(f"batch of {batch} is not made of groups of {g}")
        own = self.base.score(images, texts, users)
        start = torch.arange(batch) // g * g
        others = []
        for shift in range(1, g):
            index = start + (torch.arange(batch) - start + shift) % g  # another cover of the same group
            swapped_texts = None if texts is None else [texts[i] for i in index.tolist()]
            others.append(self.base.score(images[index.to(images.device)], swapped_texts, users))
        return own - torch.stack(others).mean(0)
