"""`save_pretrained` / `from_pretrained` on both cover pipelines: one folder, one call, the same covers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from icg.atomic import atomic_folder
from icg.data.covers import render_cover
from icg.errors import ICGError
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverPipeline, CoverUser
from icg.pipeline_flux import FluxCoverPipeline
from icg.presets import get_preset, load_preset_folder
from icg.presets_spec import GenerationConfig
from icg.presets_tiny import materialize_tiny_preset
from icg.presets_tiny_flux import materialize_tiny_flux_preset

FAST = {"num_inference_steps": 2, "max_prompt_tokens": 6}


def _items() -> list[CoverItem]:
    return [CoverItem("Toy Story", render_cover("1", "Toy Story", ("Animation",), size=64), item_id="1")]


def _covers(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    users = [CoverUser(user_id="1"), CoverUser(profile="a 30-year-old female writer")]
    return pipe(_items(), users, seed=3, output_type="pt", **FAST).images


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pretrained")


@pytest.fixture(scope="module")
def sd15(root: Path) -> tuple[CoverPipeline, Path]:
    """The tiny preset loaded, with a changed generation config, saved with `save_pretrained`."""
    pipe = load_cover_pipeline(load_preset_folder(materialize_tiny_preset(root / "tiny")))
    pipe.generation_config = GenerationConfig(num_inference_steps=3, guidance_scale=5.0, max_prompt_tokens=9)
    return pipe, pipe.save_pretrained(root / "saved")


def test_sd15_round_trip_gives_the_same_covers(sd15: tuple[CoverPipeline, Path]) -> None:
    pipe, folder = sd15
    loaded = CoverPipeline.from_pretrained(folder)
    assert isinstance(loaded, CoverPipeline)
    assert torch.equal(_covers(pipe), _covers(loaded))
    assert loaded.generation_config == pipe.generation_config
    # the folder's own name, a str, reads the same; get_preset sees the same preset
    again = CoverPipeline.from_pretrained(str(folder))
    assert torch.equal(_covers(again), _covers(loaded))
    spec = get_preset(str(folder))
    assert spec.generation_config() == pipe.generation_config and spec.name == "saved"


def test_sd15_folder_layout_backbone_has_no_adapter_weights(sd15: tuple[CoverPipeline, Path]) -> None:
    _, folder = sd15
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter", "backbone", "context_encoder", "preset.json", "user_encoder",
    ]  # fmt: skip
    index = json.loads((folder / "backbone" / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    unet = load_file(str(folder / "backbone" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not [k for k in unet if ".processor." in k]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".saved.")]  # no staging left


def test_saving_again_replaces_the_folder(sd15: tuple[CoverPipeline, Path], root: Path) -> None:
    pipe, _ = sd15
    folder = root / "twice"
    pipe.save_pretrained(folder)
    (folder / "stale.txt").write_text("old")
    pipe.save_pretrained(folder, name="renamed")
    assert not (folder / "stale.txt").exists()
    assert load_preset_folder(folder).name == "renamed"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' warning about the old config itself
def test_an_old_scheduler_config_is_saved_and_kept_as_it_is(
    sd15: tuple[CoverPipeline, Path], root: Path
) -> None:
    """diffusers' StableDiffusionPipeline rewrites steps_offset/clip_sample when built: not here."""
    pipe = CoverPipeline.from_pretrained(sd15[1])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, clip_sample=True)
    folder = pipe.save_pretrained(root / "old-scheduler")
    assert (pipe.scheduler.config.steps_offset, pipe.scheduler.config.clip_sample) == (0, True)
    saved = json.loads((folder / "backbone" / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["steps_offset"], saved["clip_sample"]) == (0, True)
    assert torch.equal(_covers(pipe), _covers(CoverPipeline.from_pretrained(folder)))


@pytest.mark.parametrize(
    "component", ["adapter", "context_encoder", "user_encoder", "backbone", "backbone/vae", "backbone/unet"]
)
def test_missing_component_is_an_error_naming_it(
    sd15: tuple[CoverPipeline, Path], root: Path, component: str
) -> None:
    _, folder = sd15
    broken = root / f"broken-{len(list(root.iterdir()))}"  # a name that holds no component's name
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / component)
    with pytest.raises(ICGError, match=f"{component.split('/')[-1]}.* is missing"):
        CoverPipeline.from_pretrained(broken)


def test_wrong_backbone_class_is_an_error(sd15: tuple[CoverPipeline, Path]) -> None:
    _, folder = sd15
    with pytest.raises(ICGError, match="sd15 backbone"):
        FluxCoverPipeline.from_pretrained(folder)


def test_without_context_encoder_cannot_be_saved(sd15: tuple[CoverPipeline, Path], root: Path) -> None:
    _, folder = sd15
    lean = CoverPipeline.from_pretrained(folder, with_context_encoder=False)
    with pytest.raises(ICGError, match="context encoder"):
        lean.save_pretrained(root / "lean")
    assert not (root / "lean").exists()


def test_flux_round_trip_gives_the_same_covers(root: Path) -> None:
    pipe = load_cover_pipeline(load_preset_folder(materialize_tiny_flux_preset(root / "tiny-flux")))
    folder = pipe.save_pretrained(root / "saved-flux")
    loaded = FluxCoverPipeline.from_pretrained(folder)
    assert isinstance(loaded, FluxCoverPipeline)
    assert load_preset_folder(folder).backbone == "flux"
    assert loaded.generation_config == pipe.generation_config
    assert torch.equal(_covers(pipe), _covers(loaded))
    transformer = folder / "backbone" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert not [k for k in load_file(str(transformer)) if ".processor." in k]


def test_atomic_folder_keeps_the_old_folder_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("died half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
