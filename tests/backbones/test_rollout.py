"""One rollout: the adapter trainer's covers (sample grids, the guard's held-out covers) are the pipeline's.

At the same seed, the final stop step and no gradients, `AdapterStep.sample` must give the very tensors that
`covers_from_embeddings` gives for the same prompts, C_ref and U_pre — per backbone, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icg.backbones import FluxBackbone, RolloutSettings, SD15Backbone, backbone_for, backbone_kind
from icg.loading import load_cover_pipeline
from icg.presets import load_preset_folder, tiny_preset
from icg.rewards import load_reward
from icg.rewards.base import WeightedRewards
from icg.testing import tiny_clip_model
from icg.testing_flux import materialize_tiny_flux_preset
from icg.training.adapter import AdapterTrainConfig, backbone_of
from icg.training.adapter_data import AdapterData, item_features, mix_seed


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny and tiny-flux presets and a tiny CLIP reward folder."""
    root = tmp_path_factory.mktemp("backbones")
    tiny_preset(root / "tiny")
    materialize_tiny_flux_preset(root / "tiny-flux")
    clip, processor = tiny_clip_model()
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root


@pytest.fixture(scope="module")
def pipes(root: Path) -> dict[str, object]:
    pipes = {
        "sd15": load_cover_pipeline(load_preset_folder(root / "tiny")),
        "flux": load_cover_pipeline(load_preset_folder(root / "tiny-flux")),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _data() -> AdapterData:
    covers = torch.randint(
        0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return AdapterData(
        item_ids=["1", "2"], titles=["Toy Story", "Heat"], covers=covers, user_ids=["1", "2"],
        profiles=["likes comedy", "likes horror"], samples=torch.tensor([[0, 0], [1, 1], [0, 1]]),
    )  # fmt: skip


def _step(pipe, root: Path, guidance_scale: float):
    """An adapter-training step on `pipe`, built as the trainer builds it, and its item features."""
    data = _data()
    config = AdapterTrainConfig(
        batch_size=2, num_inference_steps=3, stop_window=2, guidance_scale=guidance_scale,
        max_prompt_tokens=6, lambda_hps=0.0, lambda_pick=0.0, lambda_per=0.0,
    )  # fmt: skip
    feats = item_features(pipe, data, None, config.max_prompt_tokens)
    objective = WeightedRewards.from_rewards({"clip": load_reward("clip", root / "clip")})
    step_class = backbone_of(pipe).step_class
    return step_class(pipe, data, feats, objective, config, torch.device("cpu"), None), data, feats


@pytest.mark.parametrize(("kind", "guidance_scale"), [("sd15", 1.0), ("sd15", 3.0), ("flux", 3.5)])
def test_training_rollout_equals_the_pipeline(pipes, root, kind: str, guidance_scale: float) -> None:
    pipe = pipes[kind]
    step, data, feats = _step(pipe, root, guidance_scale)
    rows = torch.tensor([0, 1, 2])
    prompts, sampled = step.sample(rows, "grid")
    users, items = data.samples[rows].unbind(1)
    seeds = [mix_seed(step.config.seed, "grid", int(j)) for j in rows.tolist()]
    covers = pipe.covers_from_embeddings(
        prompts, feats.context[items], feats.users[users], seeds, 3, guidance_scale,
        height=step.pixels, width=step.pixels,
    )  # fmt: skip
    assert covers.shape == sampled.shape == (3, 3, step.pixels, step.pixels)
    assert torch.equal(sampled, covers)
    # the comparison can fail: one step short of the end is another image
    with torch.no_grad():
        _, text, cond_p, uncond_p = step.conditioning(rows)
        early = step.rollout(text, cond_p, uncond_p, seeds, stop=1, grad=False)
    assert not torch.equal(early, covers)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_grad_steps_reach_the_personal_tokens_only_in_the_window(pipes, kind: str) -> None:
    """`grad_steps=K` gives c_p a gradient through the last K steps; 0 gives none (the pipelines)."""
    pipe = pipes[kind]
    backbone = backbone_for(pipe)
    text = backbone.encode_prompts(["a cover"])
    width = pipe.projector.config.cross_attention_dim
    cond_p = torch.zeros(1, 2, width, requires_grad=True)
    settings = RolloutSettings(2, 1.0, pipe.default_size, pipe.default_size, grad_steps=1, predict_x0=True)
    images = backbone.rollout(text, cond_p, cond_p, [0], settings, torch.device("cpu"))
    images.sum().backward()
    assert cond_p.grad is not None
    none = RolloutSettings(2, 1.0, pipe.default_size, pipe.default_size)
    assert not backbone.rollout(text, cond_p, cond_p, [0], none, torch.device("cpu")).requires_grad


def test_one_function_says_which_backbone(pipes, root) -> None:
    assert isinstance(pipes["sd15"].backbone, SD15Backbone)
    assert isinstance(pipes["flux"].backbone, FluxBackbone)
    assert [backbone_kind(pipes[k]) for k in ("sd15", "flux")] == ["sd15", "flux"]
    assert backbone_kind(load_preset_folder(root / "tiny-flux")) == "flux"
    assert backbone_kind(pipes["flux"].backbone) == backbone_kind("flux") == "flux"
    with pytest.raises(ValueError, match="not supported"):
        backbone_kind("sdxl")
    with pytest.raises(ValueError, match="not supported"):
        backbone_kind(object())


def test_one_loader_for_both_backbones_and_the_old_flux_path(root) -> None:
    """`load_cover_pipeline` loads either backbone through its `load_components`; `icg.loading_flux` keeps
    its names as a shim over it."""
    from icg.errors import ICGError
    from icg.loading_flux import load_flux_backbone, load_flux_cover_pipeline

    spec = load_preset_folder(root / "tiny-flux")
    pipe = load_flux_cover_pipeline(spec, with_context_encoder=False)
    assert backbone_kind(pipe) == "flux" and pipe.context_encoder is None
    assert set(load_flux_backbone(spec.base_model)) == set(FluxBackbone.load_components(spec.base_model))
    with pytest.raises(ICGError, match="not a flux preset"):
        load_flux_cover_pipeline(load_preset_folder(root / "tiny"))
    with pytest.raises(ICGError, match="not supported for flux"):
        FluxBackbone.load_components(spec.base_model, base_config=str(root / "tiny"))


@pytest.mark.parametrize("kind", ["sd15", "flux"])
@pytest.mark.parametrize("suffixes", [None, ["gritty noir", "bright pastel"]])
def test_call_is_its_grid_through_covers_from_embeddings(pipes, kind: str, suffixes) -> None:
    """Both pipelines' `__call__` is prepare_call → the shared steps 5–8 (`denoise_call`): the same covers
    as `covers_from_embeddings` on the call's grid (each item's prompt encoded once there, each cover's
    prompt here), and a sidecar that names the backbone."""
    from PIL import Image

    from icg.pipeline import CoverItem, CoverUser

    pipe = pipes[kind]
    items = [CoverItem("Alien Night", Image.new("RGB", (64, 64), (200, 30, 30)), "a"),
             CoverItem("Sunny Love", Image.new("RGB", (64, 64), (30, 30, 200)), "b")]  # fmt: skip
    users = [CoverUser(user_id="1"), CoverUser(profile="loves horror")]
    out = pipe(items, users, num_inference_steps=2, seed=5, output_type="pt", prompt_suffixes=suffixes)
    call = pipe.prepare_call(
        items, users, 2, None, None, None, None, 1, None, 1.0, True, False, suffixes
    )  # fmt: skip
    grid = call.grid
    seeds = [5 + n for n in range(len(grid.cells))]
    again = pipe.covers_from_embeddings(
        grid.cell_prompts, grid.cover_context(), grid.cover_users(), seeds, 2, call.config.guidance_scale
    )
    assert torch.equal(out.images, again)
    assert not torch.equal(out.images[0], out.images[1])  # two users, two covers: the check can fail
    assert {m["backbone"] for m in out.metadata} == {kind}
