"""One configuration spine: the preset's `GenerationConfig` is what the pipeline, demo and training use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from icg.presets import FLUX, SD15, GenerationConfig, PresetSpec, load_preset_folder, tiny_preset
from icg.training.adapter_config import AdapterTrainConfig, config_for_preset


def test_generation_config_round_trips_and_replaces() -> None:
    config = GenerationConfig(num_inference_steps=4, guidance_scale=2.5, max_prompt_tokens=9)
    assert GenerationConfig.from_dict(config.to_dict()) == config
    assert GenerationConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    assert config.to_kwargs() == {"num_inference_steps": 4, "guidance_scale": 2.5, "max_prompt_tokens": 9}
    assert config.replace(num_inference_steps=None, guidance_scale=1.0) == GenerationConfig(4, 1.0, 9)
    with pytest.raises(AttributeError):
        config.num_inference_steps = 3  # frozen


def test_the_preset_owns_its_generation_config() -> None:
    """Read from preset.json's own keys, so every saved preset keeps loading."""
    assert SD15.generation_config() == GenerationConfig(15, 7.0, 77)
    assert FLUX.generation_config() == GenerationConfig(28, 3.5, 77)
    old = {"name": "old", "num_inference_steps": 6, "guidance_scale": 3.0, "explicit_prompt_tokens": 20}
    text = json.dumps(old)
    assert PresetSpec.from_json(text).generation_config() == GenerationConfig(6, 3.0, 20)


def _tiny_with_steps(tmp_path: Path, steps: int, tokens: int) -> Path:
    """The tiny preset saved to a folder, its preset.json edited: the one place the settings change."""
    folder = tmp_path / "tiny"
    tiny_preset(folder)
    file = folder / "preset.json"
    data = json.loads(file.read_text())
    file.write_text(json.dumps({**data, "num_inference_steps": steps, "explicit_prompt_tokens": tokens}))
    return folder


def test_a_changed_preset_reaches_the_pipeline_and_training(tmp_path: Path) -> None:
    from icg.loading import load_cover_pipeline
    from icg.pipeline import CoverItem

    spec = load_preset_folder(_tiny_with_steps(tmp_path, steps=2, tokens=5))
    pipe = load_cover_pipeline(spec)
    assert pipe.generation_config == GenerationConfig(2, spec.guidance_scale, 5)
    pipe.set_progress_bar_config(disable=True)
    item = CoverItem(title="A Quiet Harbor", image=Image.new("RGB", (32, 32), (90, 40, 10)))
    out = pipe([item], output_type="pt")  # no settings given: the preset's
    assert out.metadata[0]["num_inference_steps"] == 2
    assert out.metadata[0]["guidance_scale"] == spec.guidance_scale
    assert pipe([item], num_inference_steps=3).metadata[0]["num_inference_steps"] == 3  # the caller wins

    trained = config_for_preset(AdapterTrainConfig(stop_window=2), spec)
    assert (trained.num_inference_steps, trained.max_prompt_tokens) == (2, 5)


@pytest.mark.slow
def test_a_changed_preset_reaches_the_demo(tmp_path: Path) -> None:
    from icg.data.movielens import load_ml100k
    from icg.demo import run_demo

    folder = _tiny_with_steps(tmp_path, steps=2, tokens=5)
    run_demo(load_ml100k(), tmp_path / "demo", preset=str(folder))
    sidecars = [json.loads(f.read_text()) for f in sorted((tmp_path / "demo" / "covers").glob("*.json"))]
    assert sidecars and {s["num_inference_steps"] for s in sidecars} == {2}
