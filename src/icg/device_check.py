"""Device checks: every model path of ICG run on one device, one PASS/FAIL line per path.

Two uses of the same paths:
- on a real device (`bench/gpu_check.py --device cuda`, or `--device cpu` in `make test`): the code runs;
- on a *fake* CUDA device on a CPU-only machine (`fake_cuda()`, the tests): modules moved `.to("cuda")` hold
  FakeTensors (shapes and devices, no data) and every op on them checks its inputs' devices, so a tensor made
  on the CPU meeting a CUDA one raises `FakeTensorDeviceMismatchError` exactly where a GPU would fail.
  Host-side work (tokenization, scheduler tables, Python numbers) keeps running on real CPU tensors. Steps
  that need the values of device tensors (text generation, the MLLM's vision grid) cannot run fake: there
  `mllm_stand_in` replaces the MLLM's forward/generate by stand-ins that check every tensor argument sits on
  the model's device — our side of the boundary is checked, the library's side runs on the real device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from icg.device_parts import (
    CheckContext,
    DeviceMixError,
    backward,
    check_on_device,
    device_adapter_step,
    device_images,
    device_mllm,
    device_pipeline,
    device_reward_parts,
    fake_cuda,
)
from icg.device_paths import MORE_PATHS

__all__ = ["PATHS", "CheckResult", "DeviceMixError", "check_on_device", "fake_cuda", "run_paths"]

logger = logging.getLogger(__name__)


# --- the paths ------------------------------------------------------------------------------------------


def path_context(ctx: CheckContext) -> str:
    pipe = device_pipeline(ctx)
    with device_mllm(ctx, pipe), torch.no_grad():
        context = pipe.context_encoder.context_embeddings(device_images(2), ["Heat", "Toy Story"])
        prompts = pipe.context_encoder.explicit_prompt(
            device_images(2), ["Heat", "Toy Story"], max_new_tokens=4
        )
    check_on_device("C_ref", ctx.device, {"context": context})
    return f"C_ref {tuple(context.shape)}, {len(prompts)} prompts"


def path_users_projector(ctx: CheckContext) -> str:
    pipe = device_pipeline(ctx)
    with torch.no_grad():
        # a known id, a parsed profile, and a stated taste (its neighbour mix over the taste table)
        assert pipe.user_encoder.has_taste_table, "the checked user encoder has no taste table"
        users = pipe.user_encoder.encode_users(
            ["1", None, None], [None, "a 24-year-old male technician", "loves horror and sci-fi"]
        )
        users = users.to(ctx.device, pipe.projector.dtype)
        context = torch.zeros(3, 1, pipe.context_encoder.hidden_size, device=ctx.device, dtype=users.dtype)
        cond, uncond = pipe.personal_tokens(context, users)
    check_on_device("user path", ctx.device, {"U_pre": users, "c_p": cond, "uncond c_p": uncond})
    return f"U_pre {tuple(users.shape)}, c_p {tuple(cond.shape)}"


def _generate(ctx: CheckContext, flux: bool) -> str:
    from icg.pipeline import CoverItem, CoverUser

    pipe = device_pipeline(ctx, flux)
    items = [CoverItem(t, im) for t, im in zip(["Heat", "Toy Story"], device_images(2), strict=True)]
    users = [CoverUser(user_id="1"), CoverUser(profile="a 30-year-old female writer")]
    with device_mllm(ctx, pipe):
        out = pipe(items, users, num_inference_steps=2, output_type="pt", max_prompt_tokens=4)
    check_on_device("covers", ctx.device, {"images": out.images})
    return f"{len(out.images)} covers {tuple(out.images.shape[1:])}"


def path_pipeline_sd15(ctx: CheckContext) -> str:
    return _generate(ctx, flux=False)


def path_pipeline_flux(ctx: CheckContext) -> str:
    return _generate(ctx, flux=True)


def path_rewards(ctx: CheckContext) -> str:
    from icg.rewards import WeightedRewards
    from icg.rewards.personalized import reward_text

    rewards = device_reward_parts(ctx)
    images = torch.rand(2, 3, 40, 40, device=ctx.device, requires_grad=True)
    captions = ["a horror film poster", "a cartoon cat"]
    texts = {
        "clip": captions,
        "personalized": [reward_text(t, c) for t, c in zip(["Psycho", "Heat"], captions, strict=True)],
    }
    users = ["a 24-year-old male technician"] * 2
    out = WeightedRewards.from_rewards(rewards)(images, texts, users)
    if not backward(ctx, out.total):
        return "clip + personalized: scores (forward only on fake CUDA)"
    check_on_device("rewards", ctx.device, {"total": out.total, "image grad": images.grad})
    return "clip + personalized: scores and image gradients"


def _train(ctx: CheckContext, flux: bool, stage: str) -> str:
    step, backbone = device_adapter_step(ctx, flux, stage)
    adapter = backbone.adapter
    if any(p.dtype != torch.float32 for p in adapter.parameters()):  # the trainer keeps them in float32
        adapter.float()
    adapter.requires_grad_(True)
    rows = torch.tensor([0, 1])
    # frozen parts in the checked dtype, the adapter in float32: the trainer runs this under accelerate's
    # autocast (mixed precision) exactly so
    low = ctx.dtype != torch.float32
    with torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=low):
        prompts, text, cond_p, uncond_p = step.conditioning(rows)
        images = step.rollout(text, cond_p, uncond_p, [0, 1], stop=1, grad=True)
        texts, profiles = step.reward_inputs(rows, prompts)
        loss = step.objective(images, texts, profiles).total + step.denoise_loss(rows, text, cond_p, 0)
    if not backward(ctx, loss):
        check_on_device("adapter step", ctx.device, {"loss": loss})
        return f"stage {stage}: loss (forward only on fake CUDA)"
    grads = {n: p.grad for n, p in adapter.named_parameters() if p.grad is not None}
    if not grads:
        raise RuntimeError("no adapter parameter received a gradient")
    check_on_device("adapter step", ctx.device, {"loss": loss, **grads})
    adapter.zero_grad(set_to_none=True)
    return f"stage {stage}: loss and {len(grads)} adapter gradients"


def path_train_sd15(ctx: CheckContext) -> str:
    return "; ".join(_train(ctx, False, stage) for stage in ("init", "reward"))


def path_train_flux(ctx: CheckContext) -> str:
    return _train(ctx, True, "reward")


PATHS: dict[str, Callable[[CheckContext], str]] = {
    "context encoder (C_ref, P_exp)": path_context,
    "user encoder + projector": path_users_projector,
    "SD1.5 cover pipeline": path_pipeline_sd15,
    "Flux cover pipeline": path_pipeline_flux,
    "rewards (CLIP, personalized)": path_rewards,
    "adapter training step, SD1.5 (init, reward)": path_train_sd15,
    "adapter training step, Flux": path_train_flux,
    # the rewards, guard, metrics, baselines, MMGCN and batch stage: `icg.device_paths` (file size)
    **MORE_PATHS,
}


@dataclasses.dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float
    missing: str | None = None  # a package the path needs that is not installed (e.g. open_clip): not run

    @property
    def status(self) -> str:
        return "PASS" if self.ok else ("SKIP" if self.missing else "FAIL")

    def line(self) -> str:
        return f"{self.status}  {self.name}  ({self.seconds:.1f} s)  {self.detail}"


def run_paths(
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    names: list[str] | None = None,
    fake: bool = False,
    shapes: str = "tiny",
) -> list[CheckResult]:
    """Run each path (all by default) on `device` (fake CUDA when `fake`); a failure never stops the rest."""
    results = []
    with tempfile.TemporaryDirectory(prefix="icg-device-check-") as tmp:
        ctx = CheckContext(torch.device(device), dtype, fake, Path(tmp), shapes)
        with fake_cuda() if fake else contextlib.nullcontext():
            for name in names or list(PATHS):
                started = time.perf_counter()
                missing = None
                try:
                    detail, ok = PATHS[name](ctx), True
                except Exception as err:  # a check reports every failure and goes on
                    detail, ok = f"{type(err).__name__}: {err}".splitlines()[0][:300], False
                    if isinstance(err, ModuleNotFoundError):  # the machine lacks a package: not a verdict
                        missing = err.name
                    logger.debug("%s failed:\n%s", name, traceback.format_exc())
                results.append(CheckResult(name, ok, detail, time.perf_counter() - started, missing))
    return results
