"""Training the personalized reward model: BT learning, resume, early stopping, data rules, Table 6 runs."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from icg.context.teacher import template_caption
from icg.data.records import InteractionData, add_profiles
from icg.errors import DataError
from icg.evaluation.table6 import ROWS, TASTE_ROWS, run_table6
from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel
from icg.testing import tiny_clip_model
from icg.training.reward_model import (
    EarlyStopping,
    RewardData,
    RewardTrainConfig,
    encode_cache,
    evaluate_pairs,
    reward_data,
    train_reward_model,
    user_profiles,
)

LIKES = ("likes red movies", "likes blue movies")


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: on a loaded 2-core machine, 2 threads make small ops ~50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **switches: object) -> PersonalizedRewardModel:
    clip, processor = tiny_clip_model()
    options = {"hidden_size": 16, "num_heads": 2, "dropout": 0.0} | switches
    config = PersonalizedRewardConfig(**options)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PersonalizedRewardModel(config, clip, processor)


def toy_data(n_items: int = 12, n_users: int = 40) -> RewardData:
    """Half the items are red covers, half blue; even users prefer red, odd users blue: only user × image
    interaction ranks the pairs (every item is preferred by half the users)."""
    gen = torch.Generator().manual_seed(0)
    red = torch.tensor([200.0, 40.0, 40.0]).view(3, 1, 1)
    blue = torch.tensor([40.0, 40.0, 200.0]).view(3, 1, 1)
    covers = torch.stack(
        [(red if i % 2 == 0 else blue) + 30 * torch.rand(3, 32, 32, generator=gen) for i in range(n_items)]
    )
    pairs = {"train": [], "val": [], "test": []}
    for u in range(n_users):
        split = "train" if u < 0.7 * n_users else "val" if u < 0.85 * n_users else "test"
        liked = [i for i in range(n_items) if i % 2 == u % 2]
        other = [i for i in range(n_items) if i % 2 != u % 2]
        pairs[split] += [(u, p, n) for p in liked[:4] for n in other[:4]]
    return RewardData(
        item_ids=[str(i) for i in range(n_items)],
        titles=[f"movie {i}" for i in range(n_items)],
        captions=["a movie poster"] * n_items,
        covers=covers.clamp(0, 255).to(torch.uint8),
        user_ids=[str(u) for u in range(n_users)],
        profiles=[LIKES[u % 2] for u in range(n_users)],
        pairs={k: torch.tensor(v, dtype=torch.long) for k, v in pairs.items()},
    )


FAST = RewardTrainConfig(epochs=12, batch_size=64, lr=3e-3, patience=20, seed=0)


def test_bradley_terry_learns_a_separable_toy_problem(tmp_path) -> None:
    model, data = make_model(use_title=False, use_caption=False, trainable_clip_layers=0), toy_data()
    before = evaluate_pairs(model, encode_cache(model, data), data.pairs["test"])
    metrics = train_reward_model(model, data, tmp_path, FAST, save=False)
    assert before < 0.75  # it had to learn
    assert metrics["test_accuracy"] > 0.9


def test_resume_after_interruption_continues_and_matches(tmp_path) -> None:
    config = RewardTrainConfig(epochs=3, batch_size=64, lr=3e-3, patience=10, seed=0)
    data = toy_data()
    straight = train_reward_model(make_model(dropout=0.1), data, tmp_path / "a", config)

    def interrupt(record: dict) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt  # the job dies right after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_reward_model(make_model(dropout=0.1), data, tmp_path / "b", config, on_epoch_end=interrupt)
    # the checkpoint as the trainer wrote it before `icg.fit`: no "seconds", the same other keys
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "seconds"}, checkpoint)
    seen: list[int] = []
    resumed = train_reward_model(
        make_model(dropout=0.1), data, tmp_path / "b", config, on_epoch_end=lambda r: seen.append(r["epoch"])
    )
    assert seen == [2, 3]  # epoch 1 was not trained again
    assert resumed["history"] == straight["history"]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a = PersonalizedRewardModel.from_pretrained(tmp_path / "a").state_dict()
    b = PersonalizedRewardModel.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="belongs to a run with other model, config or data"):
        train_reward_model(make_model(fusion_layers=1), data, tmp_path / "b", config)


def test_early_stopping_rule() -> None:
    stopper = EarlyStopping(patience=2)
    flags = [stopper.update(e, v) for e, v in enumerate([0.5, 0.7, 0.7, 0.65], start=1)]
    assert flags == [True, True, False, False] and stopper.best_epoch == 2 and stopper.should_stop


def test_the_best_validation_epoch_is_kept(tmp_path) -> None:
    model = make_model(use_title=False, use_caption=False, trainable_clip_layers=0)

    def diverge(record: dict) -> None:
        if record["epoch"] == FAST.epochs - 1:  # reverse every ranking: later epochs get much worse
            with torch.no_grad():
                model.fc_per[-1].weight.neg_()

    config = RewardTrainConfig(epochs=FAST.epochs, batch_size=64, lr=1e-3, patience=20)
    metrics = train_reward_model(model, toy_data(), tmp_path, config, on_epoch_end=diverge)
    vals = [r["val_accuracy"] for r in metrics["history"]]
    assert vals[-1] < max(vals)  # the last epoch is not the best one
    assert metrics["best_epoch"] == vals.index(max(vals)) + 1
    assert metrics["val_accuracy"] == max(vals)  # the restored weights are the best epoch's
    saved = PersonalizedRewardModel.from_pretrained(tmp_path)
    assert torch.equal(saved.fc_per[-1].weight, model.fc_per[-1].weight)


def _toy_interactions() -> InteractionData:
    genres = [("Comedy",), ("Horror", "Thriller"), ("Drama",), ("Western",)]
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(12)],
            "title": [f"Movie {i} (1995)" for i in range(12)],
            "year": pd.array([1995] * 12, dtype="Int64"),
            "genres": [genres[i % 4] for i in range(12)],
            "cover_path": None,
        }
    )
    users = add_profiles(
        pd.DataFrame(
            {
                "user_id": [str(u) for u in range(30)],
                "age": 30,
                "gender": "F",
                "occupation": "writer",
                "zip": "1",
            }
        )
    )
    rows = [
        (str(u), str(i), float(1 + (i + u) % 5), 0) for u in range(30) for i in range(12) if (i * 7 + u) % 6
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "signal", "timestamp"])
    return InteractionData("toy", users, items, inter)


def test_profiles_count_genres_outside_the_users_pairs_and_captions_follow_the_template() -> None:
    data = _toy_interactions()
    pairs = pd.DataFrame({"user_id": ["0"], "pos_item_id": ["1"], "neg_item_id": ["5"], "split": ["train"]})
    profiles = user_profiles(data, pairs, top_genres=1, style="watched")
    # user 0 watched items 1-5 and 7-11: Horror, Thriller and Western 3 times each (Horror first by name);
    # without the pair items 1 and 5 (Horror/Thriller) Western leads
    assert profiles["0"] == "likes western; a 30-year-old female writer"
    assert profiles["1"].endswith("a 30-year-old female writer")
    assert template_caption(("Horror", "Thriller")).startswith("a horror and thriller movie poster in ")
    covers = torch.zeros(12, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(DataError, match="no caption"):
        reward_data(data.items, covers, pairs, {}, profiles)


def test_table6_runs_every_row_and_reference(tmp_path) -> None:
    data = _toy_interactions()
    clip, processor = tiny_clip_model()
    base = PersonalizedRewardConfig(hidden_size=16, num_heads=2, trainable_clip_layers=0)
    train = RewardTrainConfig(epochs=1, batch_size=64)
    result = run_table6(
        data, clip, processor, tmp_path, clip_source="tiny", base=base, train=train, seeds=(0, 1)
    )
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {r.key for r in ROWS + TASTE_ROWS} | {
        "popularity",
        "item_mean",
        "user_mean",
        "stated_taste",
    }
    # every row is scored on every pair kind; an item-only scorer ties on same-item pairs
    assert set(rows["taste_full"]["by_kind"]) == {"paper", "debiased", "same_item"}
    assert all(t == 50.0 for t in rows["item_mean"]["by_kind"]["same_item"]["test_per_seed"])
    # a user-only scorer ties every pair (up to float rounding between batch rows)
    assert all(abs(acc - 50.0) < 1.0 for acc in rows["user_only"]["test_per_seed"])
    assert rows["full"]["paper"] == 86.2 and rows["image_user"]["paper"] == 78.3
    assert json.loads((tmp_path / "table6.json").read_text())["seeds"] == [0, 1]
    table = (tmp_path / "table6.md").read_text()
    assert "| Image and user profile |" in table and "78.3" in table and "tiny" in table
    assert "Debiased pairs" in table and "| Taste model" in table
    PersonalizedRewardModel.from_pretrained(tmp_path / "seed1" / "full")
    assert PersonalizedRewardModel.from_pretrained(tmp_path / "seed1" / "taste_full").config.interaction


def test_two_user_pairs_train_only_the_chosen_kinds_and_report_every_kind(tmp_path) -> None:
    """Same-item pairs (one item, two users) are learnable only through the user; paper-kind pairs of the
    toy are too. Training on the same-item kind alone still reports both kinds."""
    data = toy_data()
    same = {}
    for split, pairs in data.pairs.items():
        users = sorted(set(pairs[:, 0].tolist()))
        rows = [
            (u, i, v, i) for u in users for v in users for i in range(12) if u % 2 == i % 2 and v % 2 != i % 2
        ]
        same[split] = torch.tensor(rows[:200], dtype=torch.long)
    mixed = RewardData(
        **{f: getattr(data, f) for f in ("item_ids", "titles", "captions", "covers", "user_ids", "profiles")},
        pairs={s: torch.cat([data.pairs[s], same[s]]) for s in data.pairs},
        kinds={
            s: torch.cat([torch.zeros(len(data.pairs[s])), torch.full((len(same[s]),), 2)]).long()
            for s in data.pairs
        },
    )
    assert mixed.pairs["train"].shape[1] == 4 and len(mixed.select("train", ["same_item"])) == len(
        same["train"]
    )
    model = make_model(use_title=False, use_caption=False, trainable_clip_layers=0)
    config = dataclasses.replace(FAST, train_kinds=("same_item",))
    metrics = train_reward_model(model, mixed, tmp_path, config, save=False)
    assert metrics["train_pairs"] == len(same["train"])
    assert set(metrics["test_by_kind"]) == {"paper", "same_item"}
    assert (
        metrics["test_by_kind"]["same_item"] > 0.8
        and metrics["test_accuracy"] == metrics["test_by_kind"]["same_item"]
    )
    with pytest.raises(ValueError, match="train_kinds"):
        RewardTrainConfig(train_kinds=("nonsense",))
    with pytest.raises(ValueError, match="pairs must be"):
        RewardData(**{**mixed.__dict__, "pairs": {"train": torch.zeros(3, 5, dtype=torch.long)}})


def test_taste_profiles_state_likes_and_dislikes_from_ratings_outside_the_pairs() -> None:
    data = _toy_interactions()
    pairs = pd.DataFrame(
        {
            "user_id": ["0", "1"],
            "pos_item_id": ["1", "2"],
            "neg_item_id": ["5", "3"],
            "split": ["train", "test"],
        }
    )
    profiles = user_profiles(data, pairs)
    assert profiles["0"].endswith("; a 30-year-old female writer") and profiles["0"].startswith(
        ("likes", "dislikes")
    )
    changed = data.interactions.copy()
    changed.loc[(changed["user_id"] == "0") & (changed["item_id"] == "1"), "signal"] = 5.0  # a pair item
    changed.loc[(changed["user_id"] == "1") & (changed["item_id"] == "3"), "signal"] = 1.0
    # a pair item's rating never reaches any profile (neither the user's taste nor the biases)
    assert user_profiles(dataclasses.replace(data, interactions=changed), pairs) == profiles
    changed.loc[(changed["user_id"] == "1") & (changed["item_id"] == "4"), "signal"] = 5.0  # history does
    assert user_profiles(dataclasses.replace(data, interactions=changed), pairs)["1"] != profiles["1"]
    with pytest.raises(ValueError, match="profile style"):
        user_profiles(data, pairs, style="nope")


def test_the_taste_preset_reads_the_datasets_genres() -> None:
    from icg.training.reward_model import dataset_genres, reward_model_preset

    data = _toy_interactions()
    assert dataset_genres(data.items) == tuple(sorted(dataset_genres(data.items)))
    assert "unknown" not in dataset_genres(data.items) and "horror" in dataset_genres(data.items)
    config, train = reward_model_preset("taste")
    assert config.interaction and not config.user_text and not config.fuse_user
    assert set(train.train_kinds) == {"paper", "debiased", "same_item"}
