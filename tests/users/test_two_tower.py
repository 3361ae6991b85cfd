"""Two-tower model, cold start, persistence and training on a planted preference structure."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import icg.users.train as train_module
from icg.data.records import InteractionData, add_profiles
from icg.errors import DataError
from icg.users import FeatureVocab, TwoTowerConfig, TwoTowerModel, UserProfile, train_user_encoder
from icg.users.train import sample_negatives, split_interactions

GROUPS = [("M", "artist"), ("M", "engineer"), ("F", "artist"), ("F", "engineer")]
FAST = {"epochs": 20, "batch_size": 64, "lr": 1e-2, "progress": False}


def planted_data(n_users: int = 60, n_items: int = 40, seed: int = 0) -> InteractionData:
    """Users of 4 profile groups (gender × occupation) like their group's 10 items and rate 4 others low.

    Every item is about equally popular, so only a personalized scorer can rank held-out likes above others.
    """
    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % 4
    users = add_profiles(
        pd.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(n_users)],
                "age": pd.array(rng.integers(15, 65, n_users), dtype="Int64"),
                "gender": [GROUPS[g][0] for g in group],
                "occupation": [GROUPS[g][1] for g in group],
                "zip": None,
            }
        )
    )
    item_group = np.arange(n_items) % 4
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(n_items)],
            "title": [f"Story {j % 7} of kind {item_group[j]}" for j in range(n_items)],
            "year": pd.array([2000] * n_items, dtype="Int64"),
            "genres": [(f"G{item_group[j]}", "Drama") for j in range(n_items)],
            "cover_path": None,
        }
    )
    rows = []
    for u in range(n_users):
        own = np.flatnonzero(item_group == group[u])
        other = np.flatnonzero(item_group != group[u])
        rows += [(f"u{u}", f"i{j}", 5.0) for j in rng.choice(own, 8, replace=False)]
        rows += [(f"u{u}", f"i{j}", 2.0) for j in rng.choice(other, 4, replace=False)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "signal"]).assign(timestamp=0)
    return InteractionData("planted", users, items, inter)


def small_model(data: InteractionData, seed: int = 0) -> TwoTowerModel:
    vocab = FeatureVocab.from_data(data)
    torch.manual_seed(seed)
    model = TwoTowerModel(TwoTowerConfig.for_vocab(vocab, hidden_dim=32, output_dim=16), vocab)
    genres, titles = vocab.item_tables(data.items)
    model.set_tables(
        torch.from_numpy(vocab.user_table(data.users)), torch.from_numpy(genres), torch.from_numpy(titles)
    )
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy 2-core machine makes thread start-up slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return planted_data()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained")
    return out, train_user_encoder(data, out, seed=0, **FAST)


def test_config_json_round_trip_and_validation() -> None:
    config = TwoTowerConfig(10, 8, 3, 5, 20, 4, 30, output_dim=24, dropout=0.2)
    assert TwoTowerConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="output_dim"):
        TwoTowerConfig(10, 8, 3, 5, 20, 4, 30, output_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        TwoTowerConfig(10, 8, 3, 5, 20, 4, 30, dropout=1.5)
    payload = json.loads(config.to_json()) | {"heads": 4}
    with pytest.raises(ValueError, match="heads"):
        TwoTowerConfig.from_json(json.dumps(payload))


def test_shapes(data) -> None:
    model = small_model(data)
    users = torch.tensor([1, 2, 3])
    feats = model.features_for_users(users)
    assert model.user_tower(feats).shape == (3, 16)
    assert model(feats, torch.tensor([1, 2, 3])).shape == (3,)
    assert model(feats, torch.tensor([[1, 2], [3, 4], [5, 6]])).shape == (3, 2)
    assert model.encode_users(["u0", None, "u5"], [None, "a 30-year-old female artist", None]).shape == (
        3,
        16,
    )
    with pytest.raises(ValueError, match="2 user ids but 1 profiles"):
        model.encode_users(["u0", "u1"], [None])
    with pytest.raises(ValueError, match="sequences"):
        model.encode_users("u0")


def test_unknown_id_strict_raises_and_lenient_falls_back_to_cold_start(data, caplog) -> None:
    model = small_model(data)
    with pytest.raises(ValueError, match="'nobody'"):
        model.encode_users(["nobody"], ["a 30-year-old female artist"], strict=True)
    with caplog.at_level(logging.WARNING, logger="icg.users.two_tower"):
        lenient = model.encode_users(["nobody"], ["a 30-year-old female artist"], strict=False)
    assert "nobody" in caplog.text
    cold = model.encode_users([None], [UserProfile(30, "female", "artist")])
    assert torch.isfinite(lenient).all() and lenient.shape == (1, 16)
    assert torch.equal(lenient, cold)
    # the profile matters on the cold-start path, and a known id differs from its cold-start view
    other = model.encode_users([None], [UserProfile(30, "male", "engineer")])
    assert not torch.allclose(cold, other)
    known = model.encode_users(["u2"])  # u2 is a female artist
    stored = data.users.set_index("user_id").loc["u2"]
    assert torch.equal(known, model.encode_users(["u2"], [UserProfile(int(stored.age), "F", "artist")]))
    assert not torch.allclose(
        known, model.encode_users([None], [UserProfile(int(stored.age), "F", "artist")])
    )


def test_encode_users_is_eval_mode_and_keeps_training_flag(data) -> None:
    model = small_model(data).train()
    a = model.encode_users(["u0", "u1"])
    b = model.encode_users(["u0", "u1"])
    assert torch.equal(a, b) and model.training


def test_save_load_round_trip_and_corrupt_files(data, tmp_path) -> None:
    model = small_model(data)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json", "vocab.json"}
    loaded = TwoTowerModel.from_pretrained(tmp_path)
    ids, profiles = ["u0", None, "u7"], [None, "a 40-year-old male engineer", UserProfile(22, "F", None)]
    assert torch.equal(model.encode_users(ids, profiles), loaded.encode_users(ids, profiles))
    items = torch.arange(model.config.n_items)
    assert torch.equal(model.item_tower(items), loaded.item_tower(items))

    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="model.safetensors"):
        TwoTowerModel.from_pretrained(tmp_path)
    weights.write_bytes(good)
    config_file = tmp_path / "config.json"
    payload = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(payload | {"hidden_dim": 64}))
    with pytest.raises(DataError, match="model.safetensors"):
        TwoTowerModel.from_pretrained(tmp_path)
    config_file.write_text(json.dumps(payload | {"n_users": 3}))
    with pytest.raises(DataError, match="vocab.json"):
        TwoTowerModel.from_pretrained(tmp_path)
    config_file.write_text("{")
    with pytest.raises(DataError, match="config.json"):
        TwoTowerModel.from_pretrained(tmp_path)
    config_file.unlink()
    with pytest.raises(DataError, match="config.json"):
        TwoTowerModel.from_pretrained(tmp_path)


def test_split_and_negative_sampling(data) -> None:
    vocab = FeatureVocab.from_data(data)
    split = split_interactions(data, vocab, seed=3, positive_threshold=4.0, test_fraction=0.1)
    assert len(split.train_users) + len(split.test_users) == 60 * 8
    assert np.bincount(split.test_users, minlength=vocab.users.size)[1:].tolist() == [1] * 60
    train_keys = set((split.train_users * split.n_items + split.train_items).tolist())
    test_keys = set((split.test_users * split.n_items + split.test_items).tolist())
    assert not train_keys & test_keys and not test_keys & set(split.train_seen.tolist())
    again = split_interactions(data, vocab, seed=3, positive_threshold=4.0, test_fraction=0.1)
    assert np.array_equal(again.test_items, split.test_items)
    neg = sample_negatives(split.train_users, 5, split.train_seen, split.n_items, np.random.default_rng(0))
    assert neg.shape == (len(split.train_users), 5) and neg.min() >= 1
    assert not np.isin(split.train_users[:, None] * split.n_items + neg, split.train_seen).any()
    clicks = InteractionData("clicks", data.users, data.items, data.interactions, signal_name="click")
    implicit = split_interactions(clicks, vocab, seed=3, positive_threshold=4.0, test_fraction=0.1)
    assert len(implicit.train_users) + len(implicit.test_users) == 60 * 12  # every interaction is positive


def test_training_learns_planted_preferences(trained) -> None:
    out, metrics = trained
    assert metrics["popularity_auc"] < 0.7  # the planted structure is personal, not popularity
    assert metrics["auc"] > 0.85 > metrics["popularity_auc"] + 0.1
    assert metrics["cold_start_auc"] > 0.8  # profile alone decides the group
    on_disk = json.loads((out / "metrics.json").read_text())
    assert (
        on_disk["auc"] == metrics["auc"] and on_disk["n_test"] == 60 and on_disk["epochs"] == FAST["epochs"]
    )
    for key in ("popularity_auc", "cold_start_auc", "n_train", "seconds"):
        assert key in on_disk
    model = TwoTowerModel.from_pretrained(out)
    assert model.encode_users(["u0", None], [None, "a 25-year-old female engineer"]).shape == (2, 64)


def _state(out: Path) -> dict[str, torch.Tensor]:
    return TwoTowerModel.from_pretrained(out).state_dict()


def test_deterministic_with_seed(data, trained, tmp_path) -> None:
    out, metrics = trained
    again = train_user_encoder(data, tmp_path / "same", seed=0, **FAST)
    assert again["auc"] == metrics["auc"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(_state(out).values(), _state(tmp_path / "same").values(), strict=True)
    )
    other = train_user_encoder(data, tmp_path / "other", seed=1, **FAST)
    assert not torch.equal(_state(out)["user_id.weight"], _state(tmp_path / "other")["user_id.weight"])
    assert other["n_test"] == 60


def test_resume_continues_an_interrupted_run(data, trained, tmp_path, monkeypatch, caplog) -> None:
    out, metrics = trained
    real_epoch = train_module.train_epoch
    calls: list[int] = []

    def interrupted(*args, **kwargs):
        if len(calls) == 8:
            raise KeyboardInterrupt  # dies in epoch 9, after 8 checkpoints
        calls.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_user_encoder(data, tmp_path, seed=0, **FAST)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "metrics.json").exists()

    calls.clear()
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: calls.append(1) or real_epoch(*a, **k))
    with caplog.at_level(logging.INFO, logger="icg.users.train"):
        resumed = train_user_encoder(data, tmp_path, seed=0, **FAST)
    assert "from epoch 8" in caplog.text
    assert len(calls) == FAST["epochs"] - 8  # continued, not restarted
    assert json.loads((tmp_path / "metrics.json").read_text())["auc"] == resumed["auc"] == metrics["auc"]
    assert len(resumed["history"]) == FAST["epochs"]
    assert all(
        torch.equal(a, b) for a, b in zip(_state(out).values(), _state(tmp_path).values(), strict=True)
    )

    with pytest.raises(ValueError, match="other data or settings"):
        train_user_encoder(data, tmp_path, seed=5, **FAST)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="checkpoint.pt"):
        train_user_encoder(data, tmp_path, seed=0, **FAST)


def test_a_time_budget_stops_between_epochs_and_the_run_resumes(data, trained, tmp_path) -> None:
    out, metrics = trained
    # a budget spent at once: one epoch per call, the model so far saved and marked incomplete
    first = train_user_encoder(data, tmp_path, seed=0, max_minutes=1e-6, **FAST)
    assert (first["epochs_completed"], first["completed"], len(first["history"])) == (1, False, 1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    final = train_user_encoder(data, tmp_path, seed=0, **FAST)
    assert (final["epochs_completed"], final["completed"]) == (FAST["epochs"], True)
    assert final["history"] == metrics["history"] and final["auc"] == metrics["auc"]
    assert all(
        torch.equal(a, b) for a, b in zip(_state(out).values(), _state(tmp_path).values(), strict=True)
    )
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        train_user_encoder(data, tmp_path, seed=0, max_minutes=0, **FAST)
