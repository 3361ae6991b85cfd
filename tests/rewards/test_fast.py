"""Reward speed options (icg.rewards.fast): each keeps scores and image gradients within its stated
tolerance of the eager fp32 path, on tiny random models of the real classes (CPU)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import icg.rewards.base as base
from icg.rewards import (
    AestheticHead,
    AestheticReward,
    CLIPEncoder,
    CLIPSimilarityReward,
    HPSv2Reward,
    PickScoreReward,
    RewardSpeed,
    WeightedRewards,
)
from icg.rewards.clip_score import image_spec_from_processor
from icg.rewards.fast import TextFeatureCache, resize_matmul
from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel, reward_text
from icg.rewards.user_contrast import UserContrastReward
from icg.testing import tiny_clip_model

PROMPTS = ["a cartoon cat in a city at night", "a horror film poster", "a western movie poster"]
TITLES = ["Toy Story", "Psycho", "Unforgiven"]
USERS = ["likes comedy; a 24-year-old", "likes horror; a 53-year-old writer", "likes westerns"]
TINY_HPS = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _encoder(seed: int, tokenizer: bool = True) -> CLIPEncoder:
    model, processor = tiny_clip_model(seed)
    return CLIPEncoder(
        model,
        image_spec_from_processor(processor.image_processor),
        processor.tokenizer if tokenizer else None,
    )


def _rewards(tmp_path: Path) -> dict[str, base.Reward]:
    """HPSv2 (open_clip), PickScore, CLIP + aesthetic on two copies of one CLIP, personalized (contrast)."""
    (tmp_path / "fast-tiny-hps.json").write_text(json.dumps(TINY_HPS))
    open_clip.add_model_config(tmp_path / "fast-tiny-hps.json")
    torch.manual_seed(0)
    hps = open_clip.create_model("fast-tiny-hps", pretrained=None).eval()
    clip_model, processor = tiny_clip_model(2)
    torch.manual_seed(3)
    head = AestheticHead((16, 32, 16, 8, 4, 1))
    personal_clip, personal_processor = tiny_clip_model(4)
    torch.manual_seed(5)
    personal = PersonalizedRewardModel(
        PersonalizedRewardConfig(hidden_size=16, num_heads=2), personal_clip, personal_processor
    )
    spec = image_spec_from_processor(processor.image_processor)
    return {
        "hpsv2": HPSv2Reward(hps, open_clip.get_tokenizer("fast-tiny-hps")),
        "pickscore": PickScoreReward(_encoder(1)),
        "clip": CLIPSimilarityReward(CLIPEncoder(clip_model, spec, processor.tokenizer)),
        "aesthetic": AestheticReward(CLIPEncoder(copy.deepcopy(clip_model), spec, None), head),
        "personalized": UserContrastReward(personal.freeze()),
    }


def _texts(names) -> dict[str, list[str]]:
    personal = [reward_text(t, p) for t, p in zip(TITLES, PROMPTS, strict=True)]
    return {n: personal if n == "personalized" else PROMPTS for n in names}


def _run(objective: WeightedRewards, seed: int = 0, size: int = 64):
    """An upstream graph (a 'decoder') before the rewards: the gradient reaches its parameter through
    whatever the objective attaches."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(3, 3, size, size, generator=gen).requires_grad_(True)
    images = torch.sigmoid(latent)
    out = objective(images, _texts(objective.rewards), USERS)
    out.total.backward()
    return out, latent.grad


def _objective(rewards, speed: RewardSpeed) -> WeightedRewards:
    objective = WeightedRewards.from_rewards(rewards, speed=speed)
    objective.optimize(torch.device("cpu"))
    return objective


def test_auto_is_on_for_cuda_only() -> None:
    assert RewardSpeed().resolved("cuda") == RewardSpeed.on("bf16")
    assert RewardSpeed().resolved("cpu") == RewardSpeed.off()
    assert RewardSpeed(early_backward=False).resolved("cuda").early_backward is False
    with pytest.raises(ValueError, match="tower_dtype"):
        RewardSpeed(tower_dtype="int8")


@pytest.mark.parametrize(("hw", "out"), [((64, 64), (32, 32)), ((48, 40), (29, 24)), ((20, 24), (32, 38))])
def test_matmul_resize_equals_interpolate(hw: tuple[int, int], out: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *hw, requires_grad=True)
    ref = F.interpolate(x, size=out, mode="bicubic", align_corners=False, antialias=True)
    got = resize_matmul(x, out)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    (got_grad,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-5, rtol=0)


def test_square_pad_and_crop_are_one_plan() -> None:
    crop, pad = base.ImageSpec(size=(32, 32)), base.ImageSpec(size=(32, 32), mode="pad")
    assert base.pixel_plan(crop, 64, 64) == base.pixel_plan(pad, 64, 64)
    assert base.pixel_plan(crop, 64, 48) != base.pixel_plan(pad, 64, 48)


def test_exact_options_equal_the_eager_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 towers + text cache + shared preprocessing + matmul resize + early backward: same scores, same
    gradient into the upstream graph (fp32 rounding), one preprocessing and one CLIP-L pass per call."""
    rewards = _rewards(tmp_path)
    eager_out, eager_grad = _run(_objective(rewards, RewardSpeed.off()))
    plans = []
    monkeypatch.setattr(base, "run_plan", lambda *a, _f=base.run_plan: plans.append(a[1]) or _f(*a))
    passes, personal = [], []
    fast = _objective(rewards, RewardSpeed.on("fp32"))
    assert rewards["aesthetic"].encoder.model is rewards["clip"].encoder.model  # equal weights: shared
    fast.rewards["clip"].encoder.model.vision_model.register_forward_hook(lambda *a: passes.append(1))
    personal_vision = fast.rewards["personalized"].base.clip.vision_model.embeddings
    personal_vision.register_forward_hook(lambda *a: personal.append(1))
    for _ in range(2):  # the second call reads every text from the caches
        plans.clear(), passes.clear(), personal.clear()
        fast_out, fast_grad = _run(fast)
        assert len(plans) == 1 and len(passes) == 1  # eager: 7 preprocessings, 2 CLIP-L passes
        assert len(personal) == 1  # user contrast: 3 users share one pass over the covers (eager: 3)
        torch.testing.assert_close(fast_grad, eager_grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(fast_out.total, eager_out.total.detach(), atol=1e-5, rtol=0)
        for name, score in eager_out.scores.items():
            torch.testing.assert_close(fast_out.scores[name], score.detach(), atol=1e-5, rtol=0)
            assert not fast_out.scores[name].requires_grad and not fast_out.losses[name].requires_grad
    assert fast.rewards["hpsv2"].text_cache.misses == len(PROMPTS)


def test_bf16_towers_keep_scores_within_1e2_of_fp32(tmp_path: Path) -> None:
    """Stated tolerance: |Δ| ≤ 1e-2 in cosine units (PickScore's logits: 1e-2 · logit_scale); the image
    gradient keeps its direction (cosine ≥ 0.99)."""
    rewards = _rewards(tmp_path)
    eager_out, eager_grad = _run(_objective(rewards, RewardSpeed.off()))
    bf16 = _objective(rewards, RewardSpeed.on("bf16"))
    assert (
        rewards["pickscore"].encoder.model.vision_model.embeddings.patch_embedding.weight.dtype
        == torch.bfloat16
    )
    assert rewards["pickscore"].encoder.logit_scale.dtype == torch.float32  # scalars stay exact
    assert rewards["aesthetic"].head.layers[0].weight.dtype == torch.float32  # heads stay fp32
    out, grad = _run(bf16)
    scale = {"pickscore": float(rewards["pickscore"].encoder.logit_scale.exp())}
    for name, score in eager_out.scores.items():
        gap = (out.scores[name] - score.detach()).abs().max() / scale.get(name, 1.0)
        assert gap <= 1e-2, f"{name}: bf16 − fp32 = {gap:.3g}"
    assert F.cosine_similarity(grad.flatten(), eager_grad.flatten(), dim=0) >= 0.99


def test_text_cache_empties_when_weights_change_and_skips_training(tmp_path: Path) -> None:
    reward = _rewards(tmp_path)["pickscore"]
    reward.set_text_cache(True)
    encoder = reward.encoder
    first = encoder.text_features(PROMPTS[:2])
    assert len(encoder.text_cache) == 2
    torch.testing.assert_close(encoder.text_features(PROMPTS[1:2]), first[1:], atol=1e-6, rtol=0)
    assert encoder.text_cache.misses == 2
    state = {
        k: v + 0.5 if k.startswith("text_model.encoder") else v for k, v in encoder.model.state_dict().items()
    }
    encoder.model.load_state_dict(state)
    again = encoder.text_features(PROMPTS[:2])
    assert encoder.text_cache.misses == 4 and (again - first).abs().max() > 1e-3  # recomputed
    personal = PersonalizedRewardModel(
        PersonalizedRewardConfig(hidden_size=16, num_heads=2), *tiny_clip_model(4)
    )
    personal.set_text_cache(True)
    personal.set_trainable()
    personal.train()
    feats = personal.text_features(USERS)
    assert feats.requires_grad and len(personal.text_cache) == 0  # a reward model in training: no cache


def test_early_backward_is_off_when_a_reward_trains(tmp_path: Path) -> None:
    personal = PersonalizedRewardModel(
        PersonalizedRewardConfig(hidden_size=16, num_heads=2), *tiny_clip_model(4)
    )
    personal.set_trainable()
    objective = _objective({"personalized": personal}, RewardSpeed.on("fp32"))
    out, grad = _run(objective)
    assert out.losses["personalized"].requires_grad and personal.fc_per[0].weight.grad is not None
    assert grad is not None and grad.abs().sum() > 0


def test_warming_the_caches_leaves_no_miss_for_training(tmp_path: Path) -> None:
    objective = _objective(_rewards(tmp_path), RewardSpeed.on("fp32"))
    texts = _texts(objective.rewards)
    encoded = objective.warm_text_caches(texts, USERS, batch_size=2)
    assert encoded == 3 * len(PROMPTS) + 3 * len(USERS)  # hpsv2, pickscore, clip; title, caption, user
    assert objective.warm_text_caches(texts, USERS) == 0
    _run(objective)
    assert objective.warm_text_caches(texts, USERS) == 0  # the training call met every string cached


def test_cached_training_call_never_reads_the_text_towers(tmp_path: Path) -> None:
    """What lets `offload_text_towers` park them: with every text cached, a training call reads only the
    image paths — scrambling the text weights behind the cache's back (`.data`, no version bump) changes
    nothing."""
    objective = _objective(_rewards(tmp_path), RewardSpeed.on("fp32"))
    objective.warm_text_caches(_texts(objective.rewards), USERS)
    before, _ = _run(objective)
    objective.offload_text_towers("cpu")  # where the rewards already are: moves nothing here
    for reward in objective.rewards.values():
        assert reward.text_tensors()
        for tensor in reward.text_tensors():
            if tensor.is_floating_point():
                tensor.data.normal_()
    after, grad = _run(objective)
    assert grad.abs().sum() > 0
    for name, score in before.scores.items():
        torch.testing.assert_close(after.scores[name], score, atol=1e-6, rtol=0)


class _ParkedText(base.Reward):
    """A reward whose text path reports itself parked elsewhere; records where it is asked to go."""

    name = "parked"
    frozen = True

    def __init__(self) -> None:
        super().__init__()
        self.text = torch.nn.Linear(4, 4)
        self.text_cache = TextFeatureCache()
        self.moves: list[str] = []

    def text_tensors(self) -> list[torch.Tensor]:
        return [torch.empty(1, device="meta")]  # "parked" (never read)

    def place_text_tower(self, device) -> None:
        self.moves.append(str(device))

    def warm_text_cache(self, texts, users=None) -> None:
        params = list(self.text.parameters())
        self.text_cache.lookup(texts, lambda t: torch.ones(len(t), 4), params)

    def _score(self, images, texts, users):
        return images.mean(dim=(1, 2, 3))


def test_a_parked_text_tower_comes_back_only_for_misses() -> None:
    reward = _ParkedText()
    objective = _objective({"parked": reward}, RewardSpeed.on("fp32"))
    objective.warm_text_caches({"parked": PROMPTS})
    assert reward.moves == ["cpu", "meta"] and len(reward.text_cache) == len(PROMPTS)  # back, then parked
    objective.warm_text_caches({"parked": PROMPTS[:2]})
    assert reward.moves == ["cpu", "meta"]  # all cached: it stayed parked
    assert not reward.text_cache.forbid_misses


def test_tower_graphs_capture_once_per_shape_and_replay_once_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA-graph gating, on CPU: `make_graphed_callables` stands in as counters around the eager tower
    (the capture itself needs CUDA and is measured by bench/train_step.py on the device)."""
    captured: list[tuple] = []
    replays: list[int] = []

    def fake_capture(fn, sample_args):
        captured.append(tuple(sample_args[0].shape))
        return lambda x: replays.append(1) or fn(x)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_capture)
    rewards = _rewards(tmp_path)
    eager_out, eager_grad = _run(_objective(rewards, RewardSpeed.off()))
    graphed = _objective(rewards, RewardSpeed.on("fp32", cuda_graphs=True))
    towers = [
        graphed.rewards["hpsv2"].graphs,
        graphed.rewards["pickscore"].encoder.graphs,
        graphed.rewards["clip"].encoder.graphs,
        graphed.rewards["personalized"].base.graphs,
    ]
    for tower in towers:
        monkeypatch.setattr(tower, "device_type", "cpu")
    _run(graphed)
    assert len(captured) == 4 and len(replays) == 4  # hpsv2, pickscore, the shared CLIP-L, personalized
    out, grad = _run(graphed)
    assert len(captured) == 4 and len(replays) == 8  # same shapes: replayed, not captured again
    torch.testing.assert_close(grad, eager_grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.total, eager_out.total.detach(), atol=1e-5, rtol=0)
    # without sharing, the user-contrast reward runs the personalized tower 3 times in one call: the graph
    # serves the first (a second replay would overwrite what the first one's backward reads), eager the rest
    unshared = WeightedRewards.from_rewards(
        {"personalized": graphed.rewards["personalized"]},
        speed=dataclasses.replace(RewardSpeed.on("fp32", cuda_graphs=True), share_preprocessing=False),
    )
    unshared.optimize("cpu")
    out, grad = _run(unshared)
    assert len(replays) == 9 and grad.abs().sum() > 0
    with torch.no_grad():
        _run_no_grad = graphed(torch.rand(3, 3, 64, 64), _texts(graphed.rewards), USERS)
    assert len(replays) == 9 and not _run_no_grad.total.requires_grad  # no graph without gradients
