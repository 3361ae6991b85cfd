"""Packaging the mini preset: a work folder of trained parts → a preset folder the public loaders read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from icg.errors import ICGError
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.presets import mini_preset
from icg.testing import materialize_tiny_preset, tiny_clip_model
from icg.training.mini import RECORD_NAME, check_steps, package_mini


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    """A work folder laid out as `icg train mini` leaves it, built from tiny random parts."""
    root = tmp_path_factory.mktemp("mini")
    tiny = materialize_tiny_preset(root / "tiny")
    work = root / "work"
    shutil.copytree(tiny / "backbone" / "vae", work / "vae")
    for name in ("unet", "scheduler"):
        shutil.copytree(tiny / "backbone" / name, work / "unet" / name)
    clip, processor = tiny_clip_model()  # text width 32 = the tiny UNet's cross-attention width
    clip.save_pretrained(work / "clip")
    processor.save_pretrained(work / "clip")
    (work / "clip" / "checkpoint.pt").write_bytes(b"resume state")  # must not be shipped
    shutil.copytree(tiny / "context_encoder", work / "context")
    shutil.copytree(tiny / "user_encoder", work / "users")
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel

    reward = PersonalizedRewardModel(PersonalizedRewardConfig(hidden_size=16, num_heads=2), clip, processor)
    reward.save_pretrained(work / "reward")
    (work / "reward" / "cache").mkdir()  # training-only, must not be shipped
    (work / RECORD_NAME).write_text(json.dumps({"steps": {"clip": {"seconds_total": 1.0}}}))
    return work


def test_package_loads_through_public_loaders(work, tmp_path):
    out = package_mini(work, tmp_path / "mini")
    assert not (out / "clip" / "checkpoint.pt").exists() and not (out / "reward_model" / "cache").exists()
    from icg.rewards import load_reward

    reward = load_reward("personalized", out / "reward_model")
    from icg.rewards.personalized import reward_text

    texts = [reward_text("Psycho", "a horror movie poster"), reward_text("Heat", "a crime movie poster")]
    scores = reward.score(torch.rand(2, 3, 32, 32), texts, ["likes horror", "likes comedy"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert (out / RECORD_NAME).is_file() and not (tmp_path / "mini.partial").exists()
    # the backbone is a plain diffusers SD folder
    sd = StableDiffusionPipeline.from_pretrained(out / "backbone", safety_checker=None)
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    spec = mini_preset(out)
    assert spec.name == "mini" and spec.clip == str((out / "clip").resolve())
    assert spec.reward_judge is None  # no reward-judge step in this work folder
    shutil.copytree(work / "reward", work / "reward_judge")  # as `--step reward-judge` leaves it
    try:
        with_judge = mini_preset(package_mini(work, tmp_path / "mini_judge"))
    finally:
        shutil.rmtree(work / "reward_judge")
    assert with_judge.reward_judge == str((tmp_path / "mini_judge" / "reward_judge").resolve())
    assert not (tmp_path / "mini_judge" / "reward_judge" / "cache").exists()
    pipe = load_cover_pipeline(spec)
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    item = CoverItem(title="Toy Story (1995)", image=Image.fromarray(image), item_id="1")
    output = pipe([item], [CoverUser(user_id="1")], num_inference_steps=1, max_prompt_tokens=4)
    assert len(output.images) == 1 and output.metadata[0]["user_id"] == "1"


def test_trained_adapter_is_packaged_and_loaded(work, tmp_path):
    tiny = work.parent / "tiny"
    shutil.copytree(tiny / "adapter", work / "adapter" / "adapter", dirs_exist_ok=True)
    try:
        spec = mini_preset(package_mini(work, tmp_path / "with"))
        assert spec.adapter == str((tmp_path / "with" / "adapter").resolve())
        pipe = load_cover_pipeline(spec)  # loads the adapter weights into the backbone (widths checked)
        assert pipe.projector is not None
        bare = mini_preset(package_mini(work, tmp_path / "without", with_adapter=False))
        assert bare.adapter is None
    finally:
        shutil.rmtree(work / "adapter")


def test_repackaging_replaces_the_folder(work, tmp_path):
    out = package_mini(work, tmp_path / "mini")
    (out / "stale.txt").write_text("old")
    package_mini(work, tmp_path / "mini")
    assert not (out / "stale.txt").exists()


def test_missing_step_output_is_a_clear_error(tmp_path):
    (tmp_path / "work").mkdir()
    with pytest.raises(ICGError, match=r"no output of step\(s\) \['clip', 'vae'"):
        package_mini(tmp_path / "work", tmp_path / "mini")
    assert not (tmp_path / "mini").exists() and not (tmp_path / "mini.partial").exists()


def test_mini_preset_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(ICGError, match="icg train mini"):
        mini_preset(tmp_path)


def test_steps_are_checked_and_ordered():
    assert check_steps(["users", "clip"]) == ["clip", "users"]
    with pytest.raises(ICGError, match="unknown mini training step"):
        check_steps(["vea"])


def test_train_mini_hands_the_device_to_the_vae_and_unet_steps_only(monkeypatch, tmp_path) -> None:
    import icg.training.mini as mini

    seen: dict[str, dict] = {}

    def record(name):
        return lambda data, work, recipe, threads, progress, **kw: seen.setdefault(name, kw) and {} or {}

    monkeypatch.setattr(mini, "_STEP_FUNCTIONS", {name: record(name) for name in mini.STEPS})
    data = type("Data", (), {"name": "toy"})()
    mini.train_mini(data, tmp_path, ["clip", "vae", "unet", "users"], device="cuda", progress=False)
    assert seen == {"clip": {}, "vae": {"device": "cuda"}, "unet": {"device": "cuda"}, "users": {}}
