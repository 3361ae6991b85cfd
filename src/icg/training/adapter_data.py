"""What the adapter trains on (paper §3.4.2): (item title, reference cover, user) samples, and their features.

Samples: the (user, item) pairs of the *positive* items (top-k1 by rating, `build_pairs`) of the users of one
pair split (train by default), restricted to the items of one item split (`split_items(seed 0, 0.1, 0.1)`, the
split every mini model uses), so the held-out users *and* items stay unseen for the guard and the report.
Positives, not all items: a cover is personalized for an item that would be shown to that user, and the
personalized reward was trained on exactly such (user, item) rows.

The caption of an item is its explicit prompt P_exp, written by the frozen context encoder; P_exp and C_ref
are computed once per item (`item_features`, through a `ContextCache`), U_pre once per user. Sample order is
a pure function of (seed, position in the stream) (`SampleStream`), so a resumed run skips the consumed
samples by arithmetic, with nothing to restore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from icg.context.cache import ContextCache
from icg.data.covers.render import MIN_SIZE, display_title, item_genres
from icg.data.pairs import SPLITS, PairConfig, build_pairs
from icg.data.records import InteractionData
from icg.errors import DataError

logger = logging.getLogger(__name__)

ITEM_SPLITS = ("train", "val", "test", "all")


@dataclass
class AdapterData:
    """Items (title, reference cover), users (id, profile sentence) and the (user row, item row) samples."""

    item_ids: list[str]
    titles: list[str]  # as the cover prints them (`display_title`)
    covers: Tensor  # (N_items, 3, S, S) uint8 reference covers
    user_ids: list[str]
    profiles: list[str]  # what the personalized reward reads as the user
    samples: Tensor  # (P, 2) int64: user row, item row
    info: dict[str, object] = field(default_factory=dict)
    item_genres: list[tuple[str, ...]] = field(default_factory=list)  # per item; empty = not known

    def __post_init__(self) -> None:
        n_items, n_users = len(self.item_ids), len(self.user_ids)
        if len(self.titles) != n_items or len(self.profiles) != n_users:
            raise ValueError("titles must match item_ids and profiles must match user_ids in length")
        if self.covers.dtype != torch.uint8 or self.covers.ndim != 4 or self.covers.shape[:2] != (n_items, 3):
            raise ValueError(f"covers must be uint8 ({n_items}, 3, S, S), got {tuple(self.covers.shape)}")
        if self.samples.ndim != 2 or self.samples.shape[1] != 2 or len(self.samples) == 0:
            raise ValueError(f"samples must be a non-empty (P, 2) tensor, got {tuple(self.samples.shape)}")
        users, items = self.samples.unbind(1)
        if users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items:
            raise ValueError("samples index users or items that are not in the tables")
        if self.item_genres and len(self.item_genres) != n_items:
            raise ValueError("item_genres must be empty or match item_ids in length")
        if any("\n" in t for t in self.titles):
            raise ValueError("titles must not contain newlines (the personalized reward's separator)")

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, n: int, seed: int = 0) -> AdapterData:
        """`n` samples drawn without replacement (seeded), the tables unchanged: e.g. a fixed guard set."""
        if n < 1:
            raise ValueError(f"subset needs n >= 1, got {n}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(mix_seed(seed, "subset")))
        rows = order[: min(n, len(self))].sort().values
        info = {**self.info, "subset": f"{len(rows)} of {len(self)} samples (seed {seed})"}
        return dataclasses.replace(self, samples=self.samples[rows], info=info)

    def grouped_by_item(self, users_per_item: int, seed: int = 0) -> AdapterData:
        """Each sample (u, i) followed by `users_per_item` − 1 other users of the same item: groups of
        consecutive samples (P·G, 2) in which only the user differs (users drawn without replacement, seeded
        per sample, never u). For training that compares one item's covers across users."""
        g, n_users = users_per_item, len(self.user_ids)
        if g < 1 or g > n_users:
            raise ValueError(f"users_per_item must be between 1 and the {n_users} users, got {g}")
        rows = []
        for k, (user, item) in enumerate(self.samples.tolist()):
            generator = torch.Generator().manual_seed(mix_seed(seed, "group", k))
            others = [u for u in torch.randperm(n_users, generator=generator).tolist() if u != user][: g - 1]
            rows += [(user, item)] + [(u, item) for u in others]
        info = {**self.info, "users_per_item": g}
        samples = torch.tensor(rows, dtype=torch.int64)  # data building: the index table stays on the host
        return dataclasses.replace(self, samples=samples, info=info)

    def genre_vocabulary(self) -> list[str]:
        """The genres of the items, sorted: the columns of a stated taste (`parse_taste`)."""
        return sorted({g for t in self.item_genres for g in t})

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.item_ids, self.titles, self.user_ids, self.profiles]).encode())
        h.update(self.samples.numpy().tobytes())
        h.update(self.covers.numpy().tobytes())
        return h.hexdigest()


def prepare_adapter_data(
    data: InteractionData,
    cover_size: int,
    cache_dir: str | Path,
    *,
    pair_config: PairConfig | None = None,
    user_split: str = "train",
    item_split: str = "train",
    max_users: int | None = None,
    top_genres: int = 3,
) -> AdapterData:
    """Positive (user, item) samples of `user_split` users on `item_split` items, covers rendered once.

    Profiles are the reward model's (`user_profiles`, style "taste": the genres the user rates above and
    below expectation outside their pairs, then the demographic sentence; the mini reward parses them).
    `max_users` keeps the first users in id order (tests, quick looks).
    """
    from icg.data.covers.cache import render_cover_cache
    from icg.data.splits import split_items
    from icg.training.reward_profiles import user_profiles

    if user_split not in SPLITS or item_split not in ITEM_SPLITS:
        raise ValueError(f"user_split must be one of {SPLITS} and item_split one of {ITEM_SPLITS}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be None or positive, got {max_users}")
    pairs, _ = build_pairs(data.interactions, pair_config or PairConfig())
    items = data.items.reset_index(drop=True)
    item_ids = items["item_id"].astype(str)
    allowed = set(item_ids)
    if item_split != "all":
        split = split_items(len(items), 0, 0.1, 0.1)
        allowed = set(item_ids.iloc[getattr(split, item_split)])
    part = pairs[pairs["split"] == user_split][["user_id", "pos_item_id"]].astype(str).drop_duplicates()
    part = part[part["pos_item_id"].isin(allowed)]
    users = sorted(part["user_id"].unique(), key=lambda u: (len(u), u))  # numeric ids in numeric order
    if max_users is not None:
        users = users[:max_users]
        part = part[part["user_id"].isin(set(users))]
    if part.empty:
        raise DataError(
            f"no positive items of {user_split} users among the {item_split} items",
            expected="a dataset with preference pairs",
        )
    used = items[item_ids.isin(set(part["pos_item_id"]))].reset_index(drop=True)
    size = max(MIN_SIZE, cover_size)
    covers = render_cover_cache(used, Path(cache_dir), size, 1, progress=False)[:, 0]  # (N, 3, S, S)
    item_row = {i: n for n, i in enumerate(used["item_id"].astype(str))}
    user_row = {u: n for n, u in enumerate(users)}
    samples = torch.tensor(  # data building: the (user, item) index table stays on the host
        [[user_row[u], item_row[i]] for u, i in zip(part["user_id"], part["pos_item_id"], strict=True)],
        dtype=torch.long,
    ).reshape(-1, 2)
    profiles = user_profiles(data, pairs, top_genres)
    titles = [" ".join((display_title(str(t)) or "untitled").split()) for t in used["title"]]
    return AdapterData(
        item_ids=list(item_row),
        titles=titles,
        covers=covers,
        user_ids=users,
        profiles=[" ".join(profiles[u].split()) for u in users],
        samples=samples,
        info={"dataset": data.name, "user_split": user_split, "item_split": item_split,
              "samples": "positive items (top-k1 of build_pairs)", "cover_size": size,
              "max_users": max_users},
        item_genres=[tuple(item_genres(g)) for g in used["genres"]],
    )  # fmt: skip


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (seed, tag, index): stable across runs, processes and machines."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class SampleStream:
    """An endless stream of sample indices: epoch e is a seeded permutation; position k is a pure function."""

    n: int
    seed: int

    def permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch))
        return torch.randperm(self.n, generator=generator)

    def take(self, start: int, count: int) -> Tensor:
        """Sample indices at stream positions start … start + count − 1 → (count,) int64."""
        out, position = [], start
        while position < start + count:
            epoch, offset = divmod(position, self.n)
            chunk = self.permutation(epoch)[offset : offset + start + count - position]
            out.append(chunk)
            position += len(chunk)
        return torch.cat(out)


@dataclass(frozen=True)
class GroupedSampleStream:
    """A `SampleStream` over groups of `group` consecutive samples (`AdapterData.grouped_by_item`): the
    groups are shuffled, never split; positions count samples and must be multiples of `group`."""

    n: int  # samples, a multiple of `group`
    group: int
    seed: int

    def take(self, start: int, count: int) -> Tensor:
        if start % self.group or count % self.group:
            raise ValueError(f"positions and counts must be multiples of {self.group}, got {start}, {count}")
        groups = SampleStream(self.n // self.group, self.seed).take(start // self.group, count // self.group)
        return (groups[:, None] * self.group + torch.arange(self.group)).flatten()  # host sample indices


@dataclass(frozen=True)
class ItemFeatures:
    """Per item: the explicit prompt P_exp (newlines folded) and C_ref (N_items, N, D); per user U_pre."""

    prompts: list[str]
    context: Tensor  # (N_items, N, D) float32
    users: Tensor | None  # (N_users, D_u) float32, None without a user encoder


@torch.no_grad()
def item_features(
    pipe,
    data: AdapterData,
    cache_dir: str | Path | None,
    max_prompt_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
) -> ItemFeatures:
    """P_exp and C_ref with the frozen context encoder, once per item (disk cache); U_pre once per user."""
    from icg.data.pixels import to_pil
    from icg.pipeline import CoverUser

    cache = ContextCache(cache_dir)
    prompts: list[str] = []
    contexts: list[Tensor] = []
    starts = range(0, len(data.item_ids), batch_size)
    for start in tqdm(starts, desc="item context", unit="batch", disable=not progress):
        images = [to_pil(c) for c in data.covers[start : start + batch_size]]
        titles = data.titles[start : start + batch_size]
        texts, context = pipe.context_encoder.encode_items(images, titles, cache, max_prompt_tokens)
        prompts += [" ".join(t.split()) for t in texts]
        contexts.append(context.float().cpu())
    users = None
    if pipe.user_encoder is not None:
        users = pipe.encode_users([CoverUser(user_id=u) for u in data.user_ids]).float().cpu()
    return ItemFeatures(prompts=prompts, context=torch.cat(contexts), users=users)


def frozen_latents(pipe, covers: Tensor, size: int, batch_size: int = 32) -> Tensor:
    """(VAE posterior mean − shift_factor) × scaling_factor of uint8 covers resized to `size` → (N, C, h, w),
    no grad; the shift is FLUX's (SD's VAE has none)."""
    out = []
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        for start in range(0, len(covers), batch_size):
            pixels = covers[start : start + batch_size].float() / 127.5 - 1.0  # [-1, 1]
            if pixels.shape[-1] != size or pixels.shape[-2] != size:
                pixels = torch.nn.functional.interpolate(
                    pixels, size=(size, size), mode="bicubic", antialias=True
                ).clamp(-1, 1)
            pixels = pixels.to(vae.device, vae.dtype)
            mean = vae.encode(pixels).latent_dist.mean
            out.append(((mean - shift) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def sample_frame(data: AdapterData) -> pd.DataFrame:
    """The samples as a table (user_id, item_id, title, profile): for reports and quick looks."""
    users, items = data.samples.unbind(1)
    return pd.DataFrame(
        {
            "user_id": [data.user_ids[u] for u in users.tolist()],
            "item_id": [data.item_ids[i] for i in items.tolist()],
            "title": [data.titles[i] for i in items.tolist()],
            "profile": [data.profiles[u] for u in users.tolist()],
        }
    )
