"""Table 7: MMGCN, its full-ranking metrics, the split, and the Generated-user feature path (tiny preset)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from icg.evaluation.fd import ClipImageFeatures
from icg.evaluation.table7 import (
    ROWS,
    Table7Config,
    feature_similarity,
    generated_user_features,
    load_generator,
    mean_features,
    split_positives,
    summarise,
    table7_markdown,
)
from icg.recsys import (
    MMGCN,
    MMGCNConfig,
    MMGCNTrainConfig,
    evaluate,
    interaction_mask,
    normalized_adjacency,
    rank_metrics,
    train_mmgcn,
)


@pytest.fixture(autouse=True)
def one_thread():
    """As the table runs (threads=1): on a shared 2-core machine 2 busy-waiting threads are much slower."""
    from icg.training.loop import torch_threads

    with torch_threads(1):
        yield


# ----------------------------------------------------------------------------------------------- metrics
def test_recall_and_ndcg_on_a_hand_made_ranking():
    scores = torch.arange(20, 0, -1, dtype=torch.float32).repeat(2, 1)  # item j ranked j-th for both users
    relevant = torch.zeros(2, 20, dtype=torch.bool)
    relevant[0, [0, 2, 15]] = True  # hits at ranks 0 and 2, one miss beyond the top 10
    relevant[1, [9]] = True  # one hit at rank 9
    ranked = rank_metrics(scores, torch.zeros_like(relevant), relevant, k=10)
    d = [1 / math.log2(r + 2) for r in range(10)]
    assert ranked.recall == pytest.approx([2 / 3, 1.0])
    assert ranked.ndcg == pytest.approx([(d[0] + d[2]) / (d[0] + d[1] + d[2]), d[9] / d[0]])
    assert ranked.mean()["recall"] == pytest.approx((2 / 3 + 1) / 2)


def test_full_ranking_masks_seen_items_and_skips_users_without_relevant_items():
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    exclude = torch.tensor([[True, True, False, False], [False, False, False, False]])
    relevant = torch.tensor([[False, False, False, True], [False, False, False, False]])
    ranked = rank_metrics(scores, exclude, relevant, k=1)
    assert ranked.recall[0] == 0.0  # item 2 is now on top, the relevant item 3 second
    assert rank_metrics(scores, exclude, relevant, k=2).recall[0] == 1.0
    assert math.isnan(ranked.recall[1]) and ranked.mean()["users"] == 1
    with pytest.raises(ValueError, match="both excluded"):
        rank_metrics(scores, relevant, relevant, k=1)


def test_normalized_adjacency_is_symmetric_with_degree_normalization():
    adjacency = normalized_adjacency(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2, 2).to_dense()
    assert torch.allclose(adjacency, adjacency.T)
    assert adjacency[0, 2] == pytest.approx(1 / math.sqrt(2 * 1))  # user 0 (2 items), item 0 (1 user)
    assert adjacency[1, 3] == pytest.approx(1 / math.sqrt(1 * 2)) and adjacency[0, 1] == 0


# ----------------------------------------------------------------------------------------------- model
def _synthetic(seed: int = 0):
    """4 taste clusters of 40 items; each user rates 6 items of their cluster (4 train, 2 test), so most items
    have few or no train interactions and only a visual feature that names the cluster ranks them."""
    rng = np.random.default_rng(seed)
    n_users, per_cluster, clusters = 48, 40, 4
    cluster = np.repeat(np.arange(clusters), per_cluster)  # (I,)
    features = torch.nn.functional.one_hot(torch.as_tensor(cluster), clusters).float()
    features = features + 0.1 * torch.randn(
        len(cluster), clusters, generator=torch.Generator().manual_seed(0)
    )
    train, test = [], []
    for u in range(n_users):
        own = rng.choice(np.flatnonzero(cluster == u % clusters), 6, replace=False)
        train += [(u, i) for i in own[:4]]
        test += [(u, i) for i in own[4:]]
    return n_users, len(cluster), np.array(train).T, np.array(test).T, features


def test_a_visual_feature_that_carries_the_signal_beats_ids_only():
    n_users, n_items, train, test, features = _synthetic()
    config = MMGCNTrainConfig(lr=1e-2, batch_size=256, max_epochs=30, eval_every=5, patience=10, k=10)
    held_out = interaction_mask(
        *test, n_users, n_items
    )  # early stopping reads it too: a model comparison only
    recall = {}
    for name, feats in (("ids", None), ("visual", features)):
        torch.manual_seed(0)
        cfg = MMGCNConfig(n_users, n_items, dim=16, layers=1, item_feature_dim=0 if feats is None else 4)
        model = train_mmgcn(MMGCN(cfg, feats), *train, held_out, config, progress=False).model
        exclude = interaction_mask(*train, n_users, n_items)
        recall[name] = evaluate(model, *train, exclude, held_out, 10).mean()["recall"]
    assert recall["visual"] > recall["ids"] + 0.15, recall  # measured 0.36 vs 0.11 (chance ≈ 0.06)


def test_user_features_enter_the_visual_modality_and_are_checked():
    cfg = MMGCNConfig(3, 4, dim=8, layers=1, item_feature_dim=5, user_feature_dim=5)
    model = MMGCN(cfg, torch.randn(4, 5), torch.randn(3, 5))
    adjacency = normalized_adjacency(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), 3, 4)
    before = model.scores(adjacency)
    model.user_features[0] += 1.0
    after = model.scores(adjacency)
    assert not torch.allclose(before[0], after[0])
    with pytest.raises(ValueError, match="user_features"):
        MMGCN(cfg, torch.randn(4, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="item modality"):
        MMGCNConfig(3, 4, user_feature_dim=5)


# ------------------------------------------------------------------------------------------ data + features
@pytest.fixture(scope="module")
def data():
    from icg.data.registry import load_dataset

    return load_dataset("ml-100k")


def test_split_is_disjoint_about_80_10_10_and_test_is_the_user_encoders_holdout(data):
    from icg.users import FeatureVocab
    from icg.users.train import split_interactions

    config = Table7Config()
    split = split_positives(data, config)
    pairs = {
        name: set(zip(*map(np.ndarray.tolist, getattr(split, name)), strict=True))
        for name in ("train", "val", "test")
    }
    assert not (pairs["train"] & pairs["val"]) and not (pairs["train"] & pairs["test"])
    assert not (pairs["val"] & pairs["test"])
    total = sum(len(p) for p in pairs.values())
    assert total == int((data.interactions["signal"] >= 4).sum())
    assert 0.07 < len(pairs["val"]) / total < 0.11 and 0.07 < len(pairs["test"]) / total < 0.11
    held = split_interactions(
        data, FeatureVocab.from_data(data), seed=0, positive_threshold=4.0, test_fraction=0.1
    )
    assert len(held.test_users) == len(pairs["test"])
    assert split_positives(data, config).digest() == split.digest()
    mean = mean_features(torch.eye(len(split.item_ids)), *split.train, len(split.user_ids))
    first = np.flatnonzero(split.train[0] == 0)
    assert torch.count_nonzero(mean[0]) == len(first)  # user 0's feature lives on their train items only


def test_generated_user_features_on_the_tiny_preset(data, tmp_path):
    from icg.data.covers.cache import render_cover_cache
    from icg.presets import tiny_preset
    from icg.testing import tiny_clip_model

    spec = tiny_preset(tmp_path / "tiny")
    clip, _ = tiny_clip_model()
    features = ClipImageFeatures(clip)
    items = data.items.head(4).reset_index(drop=True)
    covers = render_cover_cache(items, tmp_path / "covers", 64, 1, False)[:, 0]
    titles = [str(t) for t in items["title"]]
    chosen = [np.array([0]), np.array([2]), np.array([], dtype=int)]  # m = 1; user 3 has no train items
    settings = {"pipe": {"seed": 0, "num_inference_steps": 2, "guidance_scale": 2.0, "max_prompt_tokens": 4}}
    pipe = load_generator(spec, tmp_path / "context")
    args = (features, titles, covers, ["1", "2", "3"], chosen, tmp_path / "gen")
    out, timing = generated_user_features(pipe, *args, settings=settings, chunk=2, progress=False)
    assert out.shape == (3, features.num_features) and timing["covers_this_call"] == 2
    assert torch.allclose(out[:2].norm(dim=-1), torch.ones(2)) and torch.count_nonzero(out[2]) == 0
    assert len(list((tmp_path / "gen").glob("users_*.safetensors"))) == 2
    assert len(pipe.context_encoder.cache) == 2  # one context per item

    def refuse(*a, **k):
        raise AssertionError("the cache should have answered")

    again, timing = generated_user_features(refuse, *args, settings=settings, chunk=2, progress=False)
    assert torch.equal(again, out) and timing["covers_this_call"] == 0
    settings_changed = {"pipe": settings["pipe"] | {"num_inference_steps": 3}}  # other settings: regenerate
    with pytest.raises(AssertionError, match="cache should"):
        generated_user_features(refuse, *args, settings=settings_changed, chunk=2, progress=False)


# ---------------------------------------------------------------------------------------------- summaries
def test_summary_and_markdown_state_directions_beside_the_paper():
    rng = np.random.default_rng(0)
    runs = {}
    for n, row in enumerate(ROWS):
        runs[row.key] = {}
        for s in (0, 1, 2):
            recall = np.clip(0.1 + 0.01 * n + 0.05 * rng.random(50), 0, 1)
            ndcg = recall / 2
            part = {"recall": float(recall.mean()), "ndcg": float(ndcg.mean()), "users": 50}
            runs[row.key][s] = {"test": part, "test_icg_unseen_users": part, "val": part, "best_epoch": 10,
                                "seconds": 1.0, "per_user_recall": recall.tolist(),
                                "per_user_ndcg": ndcg.tolist()}  # fmt: skip
    result = summarise(runs, ROWS, (0, 1, 2))
    item_delta = next(d for d in result["deltas"] if (d["a"], d["b"]) == ("item", "wo_image"))
    assert item_delta["recall"]["mean"] == pytest.approx(1.0, abs=1.5)
    result |= {"dataset": "ml-100k", "seeds": [0, 1, 2], "features": "miniCLIP (x)", "preset": "mini",
               "config": dataclasses.asdict(Table7Config()), "generation": None, "minutes": 0.1,
               "compute_minutes": {"mmgcn_runs": 1.0},
               "command": "c",
               "split": {k: 1 for k in ("train", "val", "test", "test_users", "items", "icg_unseen_users")}
               | {"test_is_user_encoder_holdout": {"checked": False}},
               "machine": {"processor": "cpu", "cpu_count": 2, "torch": "2", "torch_threads": 1,
                           "load_average_start": [0], "load_average": [0]}}  # fmt: skip
    text = table7_markdown(result)
    assert "16.17%" in text and "0.1016" in text and "miniCLIP" in text
    assert "higher" in text and "Control" in text


def test_feature_similarity_compares_kinds_per_user_and_skips_users_without_features():
    a = torch.eye(3)
    cos = feature_similarity({None: None, "average": a, "generated": torch.cat([a[:2], torch.zeros(1, 3)])})
    assert cos["average~generated (same user)"] == pytest.approx(
        1.0
    )  # the user without a feature is left out
    assert cos["average~average (between users)"] == pytest.approx(0.5)  # 2 users: identity mean 2/4
