"""Adapter training (paper §3.4.2), tiny preset: what trains, exact resume, reward switches, learning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from icg.adapter.attention import get_adapter_layers
from icg.data.pixels import to_pil
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.presets import tiny_preset
from icg.rewards import load_reward
from icg.rewards.base import Reward
from icg.testing import tiny_clip_model, tiny_ip_adapter_state_dict
from icg.training.adapter import AdapterTrainConfig, checkpoints, train_adapter
from icg.training.adapter_data import AdapterData, SampleStream

# 3 DDIM steps, the stop step from the last 2, K = 1: every path of the step runs, in well under a second
FAST = dict(batch_size=2, num_inference_steps=3, stop_window=2, max_prompt_tokens=8, lambda_hps=0.0,
            lambda_pick=0.0, checkpoint_every=2, sample_every=0, lr=1e-3)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny preset, a tiny CLIP folder (the CLIP reward) and a tiny personalized reward folder."""
    root = tmp_path_factory.mktemp("adapter")
    spec = tiny_preset(root / "tiny")
    clip, processor = tiny_clip_model()
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reward = PersonalizedRewardModel(
            PersonalizedRewardConfig(hidden_size=16, num_heads=2), clip, processor
        )
    reward.save_pretrained(root / "reward")
    return {"spec": spec, "clip": root / "clip", "reward": root / "reward"}


@pytest.fixture(scope="module")
def data() -> AdapterData:
    covers = torch.randint(
        0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return AdapterData(
        item_ids=["1", "2", "3"],
        titles=["Toy Story", "Heat", "Psycho"],
        covers=covers,
        user_ids=["1", "2"],  # known to the tiny preset's user encoder (ml-100k ids)
        profiles=["likes comedy; a 24-year-old male technician", "likes horror; a 53-year-old female"],
        samples=torch.tensor([[0, 0], [0, 1], [1, 2], [1, 0], [0, 2]]),
    )


def _rewards(parts) -> dict[str, Reward]:
    return {
        "clip": load_reward("clip", parts["clip"]),
        "personalized": load_reward("personalized", parts["reward"]),
    }


def _trainable(pipe) -> dict[str, torch.Tensor]:
    state = {f"adapter.{k}": v for k, v in get_adapter_layers(pipe.unet).state_dict().items()}
    state |= {f"projector.{k}": v for k, v in pipe.projector.state_dict().items()}
    return {k: v.detach().clone() for k, v in state.items()}


def _frozen(pipe, rewards) -> dict[str, torch.Tensor]:
    """Every weight that must not move: UNet base (not the dual path), VAE, text encoder, MLLM + meta tokens,
    user encoder, reward models."""
    modules = {"vae": pipe.vae, "text": pipe.text_encoder, "context": pipe.context_encoder,
               "users": pipe.user_encoder, **{f"reward_{n}": r for n, r in rewards.items()}}  # fmt: skip
    state = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items() if ".processor." not in k}
    for name, module in modules.items():
        state |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
    return {k: v.detach().clone() for k, v in state.items()}


def test_only_adapter_and_projector_change(parts, data, tmp_path):
    pipe, rewards = load_cover_pipeline(parts["spec"]), _rewards(parts)
    trainable, frozen = _trainable(pipe), _frozen(pipe, rewards)
    fast = {**FAST, "checkpoint_every": 1, "sample_every": 1}
    config = AdapterTrainConfig(
        steps=2, gradient_accumulation_steps=2, denoise_weight=0.5, guidance_scale=2.0, **fast
    )
    metrics = train_adapter(pipe, rewards, data, tmp_path / "run", config, progress=False)
    assert metrics["completed"] and metrics["rewards"] == {"personalized": 0.25, "clip": 0.25}
    after = _trainable(pipe)
    changed = [k for k in trainable if not torch.equal(trainable[k], after[k])]
    assert {k.split(".")[0] for k in changed} == {"adapter", "projector"}
    assert any("to_k_p" in k for k in changed) and any("to_v_p" in k for k in changed)
    now = _frozen(pipe, rewards)
    assert now.keys() == frozen.keys()
    assert [k for k in frozen if not torch.equal(frozen[k], now[k])] == []
    trainable_ids = {id(p) for m in (get_adapter_layers(pipe.unet), pipe.projector) for p in m.parameters()}
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.context_encoder, pipe.user_encoder):
        assert all(id(p) in trainable_ids or not p.requires_grad for p in module.parameters())
    history = metrics["history"]
    assert [h["step"] for h in history] == [1, 2]
    assert {"loss/total", "loss/clip", "loss/personalized", "reward/clip", "loss/denoise"} <= set(history[0])
    # outputs: config beside each checkpoint, grids, an adapter the preset loader accepts
    assert [s for s, _ in checkpoints(tmp_path / "run")] == [1, 2]
    saved = AdapterTrainConfig.from_json(
        (tmp_path / "run/checkpoints/step-2/adapter_train_config.json").read_text()
    )
    assert saved == config
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == [
        "step-000000.png", "step-000001.png", "step-000002.png"]  # fmt: skip
    loaded = load_cover_pipeline(dataclasses.replace(parts["spec"], adapter=str(tmp_path / "run/adapter")))
    assert all(torch.equal(v, _trainable(loaded)[k]) for k, v in after.items())
    # a complete run is not redone
    again = train_adapter(pipe, rewards, data, tmp_path / "run", config, progress=False)
    assert again["seconds"] == metrics["seconds"]


def test_from_preset_loads_its_rewards_and_switches_off_the_missing(parts, data, tmp_path):
    from icg.training.adapter import train_adapter_from_preset

    spec = dataclasses.replace(parts["spec"], clip=str(parts["clip"]), reward_model=str(parts["reward"]))
    config = AdapterTrainConfig(steps=1, **{**FAST, "lambda_hps": 0.25, "max_prompt_tokens": 77})
    metrics = train_adapter_from_preset(spec, data, tmp_path / "run", config, progress=False)
    assert metrics["completed"] and metrics["rewards"] == {"personalized": 0.25, "clip": 0.25}
    assert metrics["config"]["lambda_hps"] == 0.0 and metrics["config"]["max_prompt_tokens"] == 12
    with pytest.raises(ValueError, match="no checkpoint for any enabled reward"):
        train_adapter_from_preset(parts["spec"], data, tmp_path / "none", config)


def test_from_preset_starts_from_an_ip_adapter_and_trains_with_pickscore(parts, data, tmp_path):
    """`ip_adapter` (official .bin layout) sets the dual path's K/V before training; PickScore loads from a
    model folder + a separate processor folder (PickScore_v1's layout) and enters the objective."""
    from icg.training.adapter import train_adapter_from_preset

    pipe = load_cover_pipeline(parts["spec"])
    state = tiny_ip_adapter_state_dict(pipe.unet, image_embed_dim=24, seed=5)
    torch.save(state, tmp_path / "ip-adapter_sd15.bin")
    clip, processor = tiny_clip_model(seed=2)
    clip.save_pretrained(tmp_path / "PickScore_v1")
    processor.save_pretrained(tmp_path / "pick_processor")
    spec = dataclasses.replace(parts["spec"], clip=str(parts["clip"]), reward_model=str(parts["reward"]))
    config = AdapterTrainConfig(steps=1, **{**FAST, "lambda_pick": 0.25, "lr": 1e-7})
    metrics = train_adapter_from_preset(
        spec, data, tmp_path / "run", config, pickscore=tmp_path / "PickScore_v1",
        pickscore_processor=tmp_path / "pick_processor", ip_adapter=tmp_path / "ip-adapter_sd15.bin",
        progress=False,
    )  # fmt: skip
    assert metrics["rewards"] == {"personalized": 0.25, "pickscore": 0.25, "clip": 0.25}
    assert "loss/pickscore" in metrics["history"][0]
    trained = get_adapter_layers(
        load_cover_pipeline(spec.replace(adapter=str(tmp_path / "run/adapter"))).unet
    )
    preset = get_adapter_layers(pipe.unet)
    for k, (layer, before) in enumerate(zip(trained.layers, preset.layers, strict=True)):
        for part in ("k", "v"):
            ip = state["ip_adapter"][f"{2 * k + 1}.to_{part}_ip.weight"]
            got = getattr(layer, f"to_{part}_p").weight
            torch.testing.assert_close(got, ip, atol=1e-6, rtol=0)  # one AdamW step of lr 1e-7 from it
            assert (getattr(before, f"to_{part}_p").weight - ip).abs().max() > 1e-2  # not the preset's


def test_cli_train_adapter_passes_the_real_weight_options(parts, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import icg.training.adapter as adapter_module
    from icg.cli import app

    seen: dict[str, object] = {}

    def fake(spec, data, out, config, **kwargs):
        seen.update(kwargs, adapter=spec.adapter)
        return {"completed": True}

    monkeypatch.setattr(adapter_module, "train_adapter_from_preset", fake)
    args = [
        "train",
        "adapter",
        "--preset",
        str(Path(parts["spec"].base_model).parent),
        "--out",
        str(tmp_path),
    ]
    options = ["--pickscore", "P", "--pickscore-processor", "Q", "--ip-adapter", "ip.bin", "--hpsv2", "H"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert seen["pickscore"] == "P" and seen["pickscore_processor"] == "Q" and seen["hpsv2"] == "H"
    assert seen["ip_adapter"] == Path("ip.bin")
    both = CliRunner().invoke(app, [*args, "--ip-adapter", "ip.bin", "--init-adapter", str(tmp_path)])
    assert "give one of them" in str(both.exception) or "give one of them" in both.output


def test_resume_after_a_kill_is_exact(parts, data, tmp_path):
    config = AdapterTrainConfig(steps=4, **FAST)
    straight = load_cover_pipeline(parts["spec"])
    train_adapter(straight, _rewards(parts), data, tmp_path / "a", config, progress=False)

    first = load_cover_pipeline(parts["spec"])
    part = train_adapter(first, _rewards(parts), data, tmp_path / "b", config, progress=False, max_steps=3)
    assert not part["completed"] and part["steps_completed"] == 3 and part["adapter"] is None
    assert [s for s, _ in checkpoints(tmp_path / "b")] == [2, 3]
    import shutil

    shutil.rmtree(tmp_path / "b/checkpoints/step-3")  # killed before step 3 was saved: step 3 is redone
    resumed = load_cover_pipeline(parts["spec"])  # as a new process: fresh weights, then load_state
    metrics = train_adapter(resumed, _rewards(parts), data, tmp_path / "b", config, progress=False)
    assert metrics["completed"] and [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
    a, b = _trainable(straight), _trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    files = [load_file(str(tmp_path / run / "adapter/adapter.safetensors")) for run in ("a", "b")]
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])
    straight_history = json.loads((tmp_path / "a/metrics.json").read_text())["history"]
    assert straight_history == metrics["history"]


def test_gradient_checkpointing_changes_no_value(parts, data, tmp_path):
    """K = 2 steps with gradients, with and without checkpointing: bit-identical weights (CPU)."""
    weights = []
    for flag in (True, False):
        pipe = load_cover_pipeline(parts["spec"])
        config = AdapterTrainConfig(
            steps=1, grad_steps=2, gradient_checkpointing=flag, **{**FAST, "stop_window": 1}
        )
        train_adapter(pipe, _rewards(parts), data, tmp_path / str(flag), config, progress=False)
        weights.append(_trainable(pipe))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(
        torch.equal(weights[0][k], _trainable(load_cover_pipeline(parts["spec"]))[k]) for k in weights[0]
    )


def test_samples_are_positives_of_train_users_on_train_items(tmp_path):
    from icg.data.movielens import load_ml100k
    from icg.data.pairs import build_pairs
    from icg.data.splits import split_items
    from icg.training.adapter_data import prepare_adapter_data, sample_frame

    ml = load_ml100k()
    data = prepare_adapter_data(ml, 64, tmp_path, max_users=3)
    assert data.covers.shape == (len(data.item_ids), 3, 64, 64) and len(data.user_ids) == 3
    pairs, _ = build_pairs(ml.interactions)
    frame = sample_frame(data)
    train = pairs[pairs["split"] == "train"]
    assert set(frame["user_id"]) <= set(train["user_id"].astype(str))
    positives = set(zip(train["user_id"].astype(str), train["pos_item_id"].astype(str), strict=True))
    assert set(zip(frame["user_id"], frame["item_id"], strict=True)) <= positives
    train_items = set(ml.items["item_id"].astype(str).iloc[split_items(len(ml.items), 0, 0.1, 0.1).train])
    assert set(frame["item_id"]) <= train_items
    # the taste profiles the mini reward reads (issue 18): stated likes and dislikes, then the demographics
    assert all(p.startswith(("likes ", "dislikes ")) for p in data.profiles) and len(data.fingerprint()) == 64


class SpyReward(Reward):
    """Counts its calls; scores the mean brightness (a trivially learnable reward)."""

    name = "spy"
    needs_texts = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _score(self, images, texts, users):
        self.calls += 1
        return images.mean((1, 2, 3))


def test_switched_off_reward_is_never_called(parts, data, tmp_path):
    pipe = load_cover_pipeline(parts["spec"])
    off_hps, off_pick, on = SpyReward(), SpyReward(), SpyReward()
    rewards = {
        "hpsv2": off_hps,
        "pickscore": off_pick,
        "personalized": on,
        "clip": load_reward("clip", parts["clip"]),
    }
    config = AdapterTrainConfig(steps=2, **FAST)  # lambda_hps = lambda_pick = 0
    metrics = train_adapter(pipe, rewards, data, tmp_path / "run", config, progress=False)
    assert off_hps.calls == 0 and off_pick.calls == 0 and on.calls == 2
    assert "reward/hpsv2" not in metrics["history"][0] and "reward/personalized" in metrics["history"][0]
    # stage 1 uses the CLIP reconstruction term only, whatever else is given
    on.calls = 0
    init = AdapterTrainConfig(stage="init", steps=1, **FAST)
    metrics = train_adapter(pipe, rewards, data, tmp_path / "init", init, progress=False)
    assert on.calls == 0 and metrics["rewards"] == {"clip": 0.25}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"stage": "warmup"}, "stage"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"lambda_per": -1.0}, "lambda_per"),
        ({"lambda_hps": 0, "lambda_per": 0, "lambda_pick": 0, "lambda_rec": 0}, "no reward"),
        ({"stage": "init", "lambda_rec": 0}, "lambda_rec"),
        ({"stop_window": 20}, "stop_window"),
        ({"grad_steps": 15}, "grad_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
    ],
)
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        AdapterTrainConfig(**changes)


def test_config_round_trip_and_reward_checks(parts, data, tmp_path):
    config = AdapterTrainConfig(stage="init", steps=7, grad_steps=2, mixed_precision="bf16")
    assert AdapterTrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown"):
        AdapterTrainConfig.from_json(json.dumps({"stepz": 1}))
    pipe = load_cover_pipeline(parts["spec"])
    with pytest.raises(ValueError, match=r"\['hpsv2'\] are enabled but not given"):
        train_adapter(pipe, _rewards(parts), data, tmp_path, AdapterTrainConfig(lambda_pick=0))
    with pytest.raises(ValueError, match="unknown reward names"):
        train_adapter(
            pipe, {**_rewards(parts), "aesthetic": SpyReward()}, data, tmp_path, AdapterTrainConfig(**FAST)
        )


def test_sample_stream_is_a_pure_function_of_position():
    stream = SampleStream(5, seed=3)
    whole = stream.take(0, 12)
    assert torch.equal(torch.cat([stream.take(0, 7), stream.take(7, 5)]), whole)
    assert sorted(whole[:5].tolist()) == list(range(5)) and sorted(whole[5:10].tolist()) == list(range(5))


def test_loss_falls_on_a_learnable_reward(parts, data, tmp_path):
    """Mean brightness is reachable through the adapter alone; it must rise (the spy's sign flips → falls)."""
    pipe = load_cover_pipeline(parts["spec"])
    items = [CoverItem(t, to_pil(c)) for t, c in zip(data.titles, data.covers, strict=True)]

    def brightness() -> float:
        out = pipe(items, [CoverUser("1")], num_inference_steps=3, guidance_scale=1.0, max_prompt_tokens=8,
                   output_type="pt")  # fmt: skip
        return float(out.images.mean())

    before = brightness()
    fast = {**FAST, "stop_window": 1, "lr": 5e-2, "checkpoint_every": 100}
    config = AdapterTrainConfig(
        steps=10, lambda_rec=0.0, lambda_per=1.0, gradient_checkpointing=False, **fast
    )
    metrics = train_adapter(
        pipe, {"personalized": SpyReward()}, data, tmp_path / "run", config, progress=False
    )
    losses = [h["loss/total"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.005, losses
    assert brightness() > before + 0.005


def test_groups_share_their_item_and_stay_whole_in_the_stream(data):
    from icg.training.adapter_data import GroupedSampleStream

    grouped = data.grouped_by_item(2, seed=0)
    assert len(grouped) == 2 * len(data) and grouped.info["users_per_item"] == 2
    pairs = grouped.samples.view(-1, 2, 2)  # (group, member, (user, item))
    assert torch.equal(pairs[:, 0], data.samples)  # each group starts with the original sample
    assert (pairs[:, 0, 1] == pairs[:, 1, 1]).all() and (pairs[:, 0, 0] != pairs[:, 1, 0]).all()
    stream = GroupedSampleStream(len(grouped), 2, seed=3)
    rows = stream.take(0, 2 * len(data))
    assert sorted(rows.tolist()) == list(range(len(grouped))) and (rows.view(-1, 2)[:, 0] % 2 == 0).all()
    assert torch.equal(torch.cat([stream.take(0, 4), stream.take(4, 6)]), stream.take(0, 10))
    with pytest.raises(ValueError, match="multiples of 2"):
        stream.take(1, 2)
    with pytest.raises(ValueError, match="users_per_item"):
        data.grouped_by_item(3)  # only 2 users


def test_users_per_item_trains_on_groups_and_resumes_exactly(parts, data, tmp_path):
    from icg.rewards.user_contrast import UserSwapReward

    config = AdapterTrainConfig(steps=2, users_per_item=2, **FAST)
    with pytest.raises(ValueError, match="multiple of users_per_item"):
        AdapterTrainConfig(**{**FAST, "batch_size": 3}, users_per_item=2)
    straight = load_cover_pipeline(parts["spec"])
    metrics = train_adapter(straight, _rewards(parts), data, tmp_path / "a", config, progress=False)
    assert metrics["completed"] and metrics["data"]["users_per_item"] == 2
    first = load_cover_pipeline(parts["spec"])
    train_adapter(first, _rewards(parts), data, tmp_path / "b", config, progress=False, max_steps=1)
    resumed = load_cover_pipeline(parts["spec"])
    train_adapter(resumed, _rewards(parts), data, tmp_path / "b", config, progress=False)
    a, b = _trainable(straight), _trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from icg.training.adapter import build_objective

    objective = build_objective(_rewards(parts), config)
    assert isinstance(objective.rewards["personalized"], UserSwapReward)


def test_the_rollout_samples_as_the_preset_generates() -> None:
    """A Flux adapter trained with 15 steps and guidance 1.0 would meet 28 and 3.5 at generation."""
    from icg.presets import FLUX, SD15
    from icg.training.adapter import config_for_preset

    flux = config_for_preset(AdapterTrainConfig(), FLUX)
    assert (flux.num_inference_steps, flux.guidance_scale) == (28, 3.5)
    chosen = config_for_preset(AdapterTrainConfig(num_inference_steps=10, guidance_scale=2.0), FLUX)
    assert (chosen.num_inference_steps, chosen.guidance_scale) == (10, 2.0)  # what the user set wins
    sd15 = config_for_preset(AdapterTrainConfig(), SD15)
    assert sd15.guidance_scale == 1.0  # SD1.5 trains without CFG (paper)
