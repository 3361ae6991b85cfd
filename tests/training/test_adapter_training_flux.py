"""Adapter training (reward feedback) on the tiny-flux preset: only the dual path + projector move."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from icg.adapter.flux import get_flux_adapter_layers
from icg.loading import load_cover_pipeline
from icg.presets import load_preset_folder
from icg.rewards import load_reward
from icg.testing import tiny_clip_model
from icg.testing_flux import materialize_tiny_flux_preset
from icg.training.adapter import AdapterTrainConfig, train_adapter
from icg.training.adapter_data import AdapterData


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _state(modules: dict[str, torch.nn.Module], skip_processors: bool = False) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if not (skip_processors and ".processor." in key):
                state[f"{name}.{key}"] = value.detach().clone()
    return state


def test_reward_steps_on_tiny_flux_change_only_adapter_and_projector(tmp_path: Path) -> None:
    spec = load_preset_folder(materialize_tiny_flux_preset(tmp_path / "tiny-flux"))
    clip, processor = tiny_clip_model()
    clip.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    pipe = load_cover_pipeline(spec)
    rewards = {"clip": load_reward("clip", tmp_path / "clip")}
    covers = torch.randint(
        0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    data = AdapterData(
        item_ids=["1", "2"], titles=["Toy Story", "Heat"], covers=covers, user_ids=["1", "2"],
        profiles=["likes comedy", "likes horror"], samples=torch.tensor([[0, 0], [1, 1], [0, 1]]),
    )  # fmt: skip
    trainable = _state({"adapter": get_flux_adapter_layers(pipe.transformer), "projector": pipe.projector})
    frozen_modules = {"transformer": pipe.transformer, "vae": pipe.vae, "clip_text": pipe.text_encoder,
                      "t5": pipe.text_encoder_2, "context": pipe.context_encoder, "users": pipe.user_encoder,
                      "reward": rewards["clip"]}  # fmt: skip
    frozen = _state(frozen_modules, skip_processors=True)
    config = AdapterTrainConfig(
        steps=2, batch_size=2, num_inference_steps=3, stop_window=2, guidance_scale=3.5, max_prompt_tokens=6,
        lambda_hps=0.0, lambda_pick=0.0, lambda_per=0.0, denoise_weight=0.5, checkpoint_every=2,
        sample_every=2, lr=1e-2,
    )  # fmt: skip
    metrics = train_adapter(pipe, rewards, data, tmp_path / "run", config, progress=False)
    assert metrics["completed"] and metrics["rewards"] == {"clip": 0.25}
    assert {"loss/clip", "loss/denoise"} <= set(metrics["history"][0])
    after = _state({"adapter": get_flux_adapter_layers(pipe.transformer), "projector": pipe.projector})
    changed = {k for k in trainable if not torch.equal(trainable[k], after[k])}
    assert {k.split(".")[0] for k in changed} == {"adapter", "projector"}
    assert any("to_k_p" in k for k in changed) and any("to_v_p" in k for k in changed)
    now = _state(frozen_modules, skip_processors=True)
    assert [k for k in frozen if not torch.equal(frozen[k], now[k])] == []
    saved = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert saved["backbone"] == "flux"
    assert (tmp_path / "run/samples/step-000002.png").is_file()
    loaded = load_cover_pipeline(dataclasses.replace(spec, adapter=str(tmp_path / "run/adapter")))
    reloaded = _state({"adapter": get_flux_adapter_layers(loaded.transformer), "projector": loaded.projector})
    assert all(torch.equal(v, reloaded[k]) for k, v in after.items())


def test_import_ip_adapter_on_a_flux_preset_fills_the_double_stream_dual_path(tmp_path: Path) -> None:
    """`icg train adapter --ip-adapter` on a Flux preset: IP-Adapter-Flux's to_{k,v}_ip → to_{k,v}_p."""
    from icg.testing_flux import tiny_ip_adapter_flux_state_dict
    from icg.training.adapter import import_ip_adapter

    pipe = load_cover_pipeline(load_preset_folder(materialize_tiny_flux_preset(tmp_path / "tiny-flux")))
    state = tiny_ip_adapter_flux_state_dict(pipe.transformer, seed=7)
    torch.save(state, tmp_path / "ip-adapter-flux.bin")
    import_ip_adapter(pipe, tmp_path / "ip-adapter-flux.bin")
    layers = get_flux_adapter_layers(pipe.transformer).layers
    assert len(layers) == len(pipe.transformer.transformer_blocks)
    for k, layer in enumerate(layers):
        for part in ("k", "v"):
            linear = getattr(layer, f"to_{part}_p")
            assert torch.equal(linear.weight, state["ip_adapter"][f"{k}.to_{part}_ip.weight"])
            assert torch.equal(linear.bias, state["ip_adapter"][f"{k}.to_{part}_ip.bias"])
