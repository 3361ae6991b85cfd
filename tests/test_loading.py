"""Checkpoint compatibility: a diffusers folder or one single file loads the same backbone; adapters move.

Tiny random SD1.5-architecture components are saved both ways (a diffusers folder; one `.safetensors` in the
community LDM layout written by `icg.single_file`) and loaded back through `load_backbone`, diffusers' own
`StableDiffusionPipeline.from_single_file`, `load_cover_pipeline` and the `icg` CLI. No test may reach a
network: sockets are refused and every attempt fails the test.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from icg.adapter.attention import get_adapter_layers
from icg.data.covers import render_cover
from icg.errors import ICGError
from icg.loading import adapter_hash, load_backbone, load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.presets import load_preset_folder
from icg.single_file import clip_to_ldm, save_single_file, unet_to_ldm, vae_to_ldm
from icg.testing import get_dummy_components, materialize_tiny_preset, tiny_text_encoder, tiny_unet, tiny_vae

MODELS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module", autouse=True)
def network_attempts() -> Iterator[list[object]]:
    """Refuse every socket connection in this module (fixtures included) and record the attempts."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError(f"tests/test_loading.py: network access attempted ({address})")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield attempts


@pytest.fixture(autouse=True)
def _no_network(network_attempts: list[object]) -> Iterator[None]:
    yield
    assert network_attempts == [], f"network access attempted: {network_attempts}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loading")


@pytest.fixture(scope="module")
def components(root: Path) -> dict:
    return get_dummy_components(root / "tokenizer-src", seed=0)


@pytest.fixture(scope="module")
def pipeline_dir(root: Path, components: dict) -> Path:
    """A complete diffusers pipeline folder (model_index.json + component folders)."""
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def ldm_file(root: Path, components: dict) -> Path:
    return save_single_file(components, root / "tiny-sd15.safetensors")


@pytest.fixture(scope="module")
def tiny(root: Path) -> Path:
    """The tiny preset folder; its backbone/ is a diffusers folder without model_index.json (seed 0)."""
    return materialize_tiny_preset(root / "tiny")


@pytest.fixture(scope="module")
def derivative(root: Path) -> tuple[dict, Path]:
    """A second SD1.5 'derivative': same architecture, other random weights, shared as one LDM file."""
    parts = get_dummy_components(root / "tokenizer-derivative", seed=1)
    return parts, save_single_file(parts, root / "derivative.safetensors")


def _assert_same_weights(
    expected: torch.nn.Module, actual: torch.nn.Module, skip: str = "processor."
) -> None:
    want = {k: v for k, v in expected.state_dict().items() if skip not in k}
    got = {k: v for k, v in actual.state_dict().items() if skip not in k}
    assert want.keys() == got.keys()
    differ = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
    assert differ == [], f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("config", ["pipeline", "preset backbone"])
def test_folder_and_single_file_give_bit_identical_backbones(
    components: dict, pipeline_dir: Path, ldm_file: Path, tiny: Path, config: str
) -> None:
    # config folder with / without model_index.json; that weights come from the file (not the folder) is
    # shown by the derivative test below, whose file and folder hold different weights
    config_dir = pipeline_dir if config == "pipeline" else tiny / "backbone"
    from_folder = load_backbone(str(pipeline_dir))
    from_file = load_backbone(str(ldm_file), str(config_dir))
    for i, name in enumerate(MODELS):
        _assert_same_weights(components[name], from_folder[i])
        _assert_same_weights(components[name], from_file[i])
    assert from_file[1].config.scaling_factor == components["vae"].config.scaling_factor
    text = "a movie poster of a cat"
    assert from_file[3](text).input_ids == components["tokenizer"](text).input_ids
    assert isinstance(from_file[4], DDIMScheduler)


def test_diffusers_own_pipeline_loader_reads_the_ldm_file(
    components: dict, pipeline_dir: Path, ldm_file: Path
) -> None:
    pipe = StableDiffusionPipeline.from_single_file(
        str(ldm_file), config=str(pipeline_dir), local_files_only=True, safety_checker=None
    )
    for name in MODELS:
        _assert_same_weights(components[name], getattr(pipe, name))


def test_ldm_layout_matches_diffusers_conversion_at_sd15_size() -> None:
    """At full SD1.5 size (meta tensors, no memory): SD1.5's key names and counts, and an exact round trip."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD1.5's UNet
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
        )
        clip = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12
            )
        )
    ldm_unet = unet_to_ldm(unet.state_dict(), layers_per_block=2)
    ldm_vae = vae_to_ldm(vae.state_dict(), num_up_blocks=4)
    ldm_clip = clip_to_ldm(clip.state_dict())
    assert (len(ldm_unet), len(ldm_vae), len(ldm_clip)) == (686, 248, 196)  # tensors per model in SD1.5 files
    everything = {**ldm_unet, **ldm_vae, **ldm_clip}
    assert infer_diffusers_model_type(everything) == "v1"
    assert CHECKPOINT_KEY_NAMES["v1"] in everything and CHECKPOINT_KEY_NAMES["clip"] in everything
    shapes = {
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    }
    assert {k: tuple(everything[k].shape) for k in shapes} == shapes
    back = {
        "unet": convert_ldm_unet_checkpoint(everything, unet.config),
        "vae": convert_ldm_vae_checkpoint(everything, vae.config),
        "text_encoder": {
            k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(everything).items()
        },
    }
    for name, model in zip(MODELS, (unet, vae, clip), strict=True):
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in back[name].items()} == want, name


def test_fp16_file_loads_in_the_requested_dtype(root: Path, components: dict, pipeline_dir: Path) -> None:
    half = {name: copy.deepcopy(components[name]).to(torch.float16) for name in MODELS}
    file = save_single_file(half, root / "tiny-fp16.safetensors")
    unet, vae, text_encoder, _, _ = load_backbone(str(file), str(pipeline_dir))
    for name, model in zip(MODELS, (unet, vae, text_encoder), strict=True):
        want = {k: v.half().float() for k, v in components[name].state_dict().items()}
        got = model.state_dict()
        assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want), name


def test_diffusers_keyed_unet_file_takes_the_rest_from_the_config(
    root: Path, tiny: Path, components: dict
) -> None:
    other = tiny_unet(seed=1)
    file = save_single_file({"unet": other}, root / "unet-only.safetensors", layout="diffusers")
    unet, vae, text_encoder, _, _ = load_backbone(str(file), str(tiny / "backbone"))
    _assert_same_weights(other, unet)
    _assert_same_weights(components["vae"], vae)
    _assert_same_weights(components["text_encoder"], text_encoder)


def test_adapter_moves_to_a_single_file_derivative_without_retraining(
    tiny: Path, derivative: tuple[dict, Path], components: dict
) -> None:
    parts, file = derivative
    assert not torch.equal(parts["unet"].conv_in.weight, components["unet"].conv_in.weight)
    spec = load_preset_folder(tiny).replace(base_model=str(file), base_config=str(tiny / "backbone"))
    pipe = load_cover_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    for name in MODELS:
        _assert_same_weights(parts[name], getattr(pipe, name))
    saved = load_file(str(tiny / "adapter" / "adapter.safetensors"))
    adapter = get_adapter_layers(pipe.unet).layers.state_dict()
    projector = pipe.projector.state_dict()
    assert len(adapter) == 8 and saved.keys() == {f"adapter.{k}" for k in adapter} | {
        f"projector.{k}" for k in projector
    }
    assert all(torch.equal(saved[f"adapter.{k}"], v) for k, v in adapter.items())
    assert all(torch.equal(saved[f"projector.{k}"], v) for k, v in projector.items())
    item = CoverItem("Toy Story", render_cover("1", "Toy Story", ("Animation",), size=64), item_id="1")
    out = pipe([item], [CoverUser(user_id="1")], num_inference_steps=1, max_prompt_tokens=4, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


def icg(*args: str) -> subprocess.CompletedProcess[str]:
    """`icg ARGS` in a fresh interpreter with the hub switched off, as a user would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "from icg.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_generates_with_a_single_file_backbone(
    tiny: Path, derivative: tuple[dict, Path], tmp_path: Path
) -> None:
    _, file = derivative
    image = tmp_path / "ref.png"
    render_cover("1", "Toy Story", ("Animation",), size=64).save(image)
    out = tmp_path / "covers"
    result = icg(
        "generate", "--preset", str(tiny), "--base-model", str(file), "--base-config", str(tiny / "backbone"),
        "--adapter", str(tiny / "adapter"), "--title", "Toy Story", "--image", str(image), "--steps", "1",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pngs, sidecars = sorted(out.glob("*.png")), sorted(out.glob("*.json"))
    assert len(pngs) == 1 and len(sidecars) == 1 and (out / "index.html").is_file()
    meta = json.loads(sidecars[0].read_text())
    assert meta["model_ids"]["base_model"] == str(file)
    assert meta["adapter_hash"] == adapter_hash(tiny / "adapter")


def icg_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """`icg ARGS` through the same entry point in this process (saves the ~7 s of imports of a new one);
    returns stderr after checking exit code 2, i.e. `main` turned the error into one message."""
    from icg.cli import main

    monkeypatch.setattr(sys, "argv", ["icg", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    return " ".join(err.split())  # one message, however the console wrapped it


def _sdxl_shaped_file(path: Path) -> Path:
    """SDXL's layout at tiny size: a text_time UNet (label_emb), CLIP-L under conditioner.embedders.0 and the
    tensor diffusers uses to recognise SDXL's second (OpenCLIP-bigG) text encoder."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    )
    tensors = {**unet_to_ldm(unet.state_dict(), 2), **vae_to_ldm(tiny_vae().state_dict(), 4)}
    for key, value in clip_to_ldm(tiny_text_encoder().state_dict()).items():
        tensors[key.replace("cond_stage_model.", "conditioner.embedders.0.")] = value
    tensors[CHECKPOINT_KEY_NAMES["xl_base"]] = torch.zeros(64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_cli_single_file_of_another_architecture_is_a_one_line_error(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = _sdxl_shaped_file(tmp_path / "sdxl-like.safetensors")
    image = tmp_path / "ref.png"
    render_cover("1", "Toy Story", ("Animation",), size=64).save(image)
    message = icg_in_process(
        capsys, monkeypatch,
        "generate", "--preset", str(tiny), "--base-model", str(file), "--base-config", str(tiny / "backbone"),
        "--title", "Toy Story", "--image", str(image), "--steps", "1", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert (
        f"error: {file}: the unet does not match the architecture in {tiny / 'backbone' / 'unet'}" in message
    )
    assert "diffusers identifies the file as 'xl_base'" in message


def test_differently_sized_or_truncated_unet_file_names_what_differs(
    root: Path, tiny: Path, components: dict, tmp_path: Path
) -> None:
    narrow = {**components, "unet": tiny_unet(block_out_channels=(16, 32))}
    file = save_single_file(narrow, tmp_path / "narrow.safetensors")
    with pytest.raises(ICGError, match=r"narrow\.safetensors: the unet does not match") as info:
        load_backbone(str(file), str(tiny / "backbone"))
    assert "conv_in.weight is (16, 4, 3, 3) in the file but (32, 4, 3, 3) in the config" in str(info.value)
    # a missing weight: diffusers alone would leave it uninitialised on the meta device
    tensors = load_file(str(root / "tiny-sd15.safetensors"))
    del tensors["model.diffusion_model.out.2.weight"]
    save_file(tensors, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(ICGError, match=r"1 weights missing from the file \(e\.g\. conv_out\.weight\)"):
        load_backbone(str(tmp_path / "truncated.safetensors"), str(tiny / "backbone"))


def test_single_file_without_a_usable_config_folder_is_a_clear_error(
    ldm_file: Path, tiny: Path, tmp_path: Path
) -> None:
    with pytest.raises(ICGError, match="needs --base-config"):
        load_backbone(str(ldm_file), None)
    with pytest.raises(ICGError, match="must be a local diffusers folder"):
        load_backbone(str(ldm_file), str(tmp_path / "no-such-folder"))
    with pytest.raises(ICGError, match=r"missing unet/config\.json"):
        load_backbone(str(ldm_file), str(tmp_path))
    with pytest.raises(ICGError, match="single-file checkpoint not found"):
        load_backbone(str(tmp_path / "missing.safetensors"), str(tmp_path))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ICGError, match=r"broken\.safetensors: cannot read the checkpoint"):
        load_backbone(str(tmp_path / "broken.safetensors"), str(tiny / "backbone"))


def test_cli_adapter_into_a_unet_of_other_widths_is_a_one_line_error(
    tiny: Path,
    components: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide = {**components, "unet": tiny_unet(block_out_channels=(16, 32))}
    for name, part in wide.items():
        part.save_pretrained(tmp_path / "config" / name)
    file = save_single_file(wide, tmp_path / "other-widths.safetensors")
    image = tmp_path / "ref.png"
    render_cover("1", "Toy Story", ("Animation",), size=64).save(image)
    message = icg_in_process(
        capsys, monkeypatch,
        "generate", "--preset", str(tiny), "--base-model", str(file),
        "--base-config", str(tmp_path / "config"),
        "--title", "Toy Story", "--image", str(image), "--steps", "1", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert f"{tiny / 'adapter'}: cannot load the adapter into the backbone {file}" in message
    assert "hidden size mismatch" in message and "checkpoint 32, UNet 16" in message


def test_exporter_refuses_to_bake_an_installed_adapter_into_the_backbone(tmp_path: Path) -> None:
    from icg.adapter.attention import install_dual_path_adapter

    unet = tiny_unet()
    install_dual_path_adapter(unet)
    with pytest.raises(ValueError, match="export the backbone before installing an adapter"):
        save_single_file({"unet": unet}, tmp_path / "with-adapter.safetensors")
    assert not (tmp_path / "with-adapter.safetensors").exists()


def test_a_broken_preset_file_names_itself(tmp_path):
    from icg.errors import ICGError
    from icg.presets import load_preset_folder

    (tmp_path / "preset.json").write_text('{"name": "x", "backbone": "sd15", "heads": 3}')
    with pytest.raises(
        ICGError, match=r"preset.json: not a preset file .*unknown PresetSpec fields \['heads'\]"
    ):
        load_preset_folder(tmp_path)
    (tmp_path / "preset.json").write_text("{not json")
    with pytest.raises(ICGError, match="preset.json: not a preset file"):
        load_preset_folder(tmp_path)


def test_the_preset_registry(tmp_path):
    from icg.errors import ICGError
    from icg.presets import FLUX, SD15, get_preset, list_presets, presets_dir, register_preset

    assert get_preset("sd15") == SD15 and SD15.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert get_preset("flux") == FLUX and (FLUX.num_inference_steps, FLUX.guidance_scale) == (28, 3.5)
    assert sorted(p.name for p in presets_dir().glob("*.json")) == ["flux.json", "sd15.json"]
    mine = SD15.replace(name="my-sd15", base_model="/models/realistic-vision")
    register_preset("my-sd15", mine)
    assert get_preset("my-sd15") == mine and "my-sd15" in list_presets()
    (tmp_path / "preset.json").write_text(mine.replace(name="folder").to_json())
    register_preset("my-folder", tmp_path)
    assert get_preset("my-folder").name == "folder"
    with pytest.raises(ICGError, match="built-in preset"):
        register_preset("mini", mine)
    with pytest.raises(ICGError, match="unknown preset 'nope'.*my-sd15"):
        get_preset("nope")


def test_a_tiny_preset_of_another_builder_version_is_rebuilt(tmp_path, monkeypatch) -> None:
    """A folder under icg_home() made by an older tiny builder (no stamp, or another version) is built again,
    a current one is loaded as it is: a changed builder never meets a stale cache."""
    from icg import presets
    from icg.presets import BUILD_STAMP, TINY_PRESET_VERSION, PresetSpec, materialize_if_stale

    builds: list[Path] = []

    def build(folder: Path) -> Path:
        builds.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "preset.json").write_text(PresetSpec(name="tiny").to_json(), encoding="utf-8")
        return folder

    folder = tmp_path / "tiny"
    build(folder)  # as an older builder left it: no stamp
    builds.clear()
    assert materialize_if_stale(folder, build).name == "tiny" and builds == [folder]
    assert (folder / BUILD_STAMP).read_text().strip() == str(TINY_PRESET_VERSION)
    materialize_if_stale(folder, build)
    assert builds == [folder]  # current: not rebuilt
    monkeypatch.setattr(presets, "TINY_PRESET_VERSION", TINY_PRESET_VERSION + 1)
    materialize_if_stale(folder, build)
    assert builds == [folder, folder]
