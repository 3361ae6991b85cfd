"""The shipped mini preset loads through the public loaders and makes covers (offline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.presets import get_preset, mini_assets_dir

MAX_SHIPPED_BYTES = 60 * 1024 * 1024


@pytest.fixture(scope="module")
def spec():
    return get_preset("mini")


def test_shipped_weights_fit_the_budget():
    files = [f for f in mini_assets_dir().rglob("*") if f.is_file()]
    assert files, "src/icg/assets/mini is empty: run `icg train mini`"
    assert sum(f.stat().st_size for f in files) <= MAX_SHIPPED_BYTES
    assert not [f for f in files if f.name == "checkpoint.pt"]  # resume state is never shipped


def test_backbone_is_a_plain_diffusers_folder(spec):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(spec.base_model, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    image = sd("a horror movie poster", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_mini_generates_personalized_covers(spec):
    from icg.generate import dataset_item
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverUser

    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    item = dataset_item("ml-100k", "1", size=64)
    user = CoverUser(user_id="1")
    out = pipe([item], [user], num_inference_steps=3, max_prompt_tokens=24, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64)
    assert float(out.images.std()) > 0.02  # a picture, not a flat field
    assert "movie poster" in out.metadata[0]["explicit_prompt"]  # the template teacher's form


def test_mini_rewards_load_and_score(spec):
    from icg.rewards import load_reward
    from icg.rewards.personalized import reward_text

    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32))
    clip = load_reward("clip", spec.clip)
    assert clip.score(images, ["a horror movie", "a comedy movie"]).shape == (2,)
    reward = load_reward("personalized", spec.reward_model)
    texts = [reward_text("Psycho", "a horror movie poster"), reward_text("Heat", "a crime movie poster")]
    scores = reward.score(images, texts, ["likes horror; a 20-year-old student", "likes comedy"])
    assert torch.isfinite(scores).all()
    # the held-out judge is another model (seed 1), not a copy of the optimised one
    judge = load_reward("personalized", spec.reward_judge)
    judged = judge.score(images, texts, ["likes horror; a 20-year-old student", "likes comedy"])
    assert torch.isfinite(judged).all() and not torch.allclose(judged, scores)
