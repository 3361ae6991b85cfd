"""`icg train mini`: train every model of the mini preset in order, then package them like real checkpoints.

Steps (each also runnable alone; each trainer resumes from its own checkpoint and returns at once when its
output is complete, so a killed run loses at most one epoch of one step):

    clip     mini CLIP (text + vision) — CLIP score, reconstruction target, reward backbone, text encoder
    vae      AutoencoderKL 64² → 16²×4 on rendered covers
    unet     UNet2DConditionModel on VAE latents, conditioned on the mini CLIP text encoder
    context  tiny Qwen2.5-VL: meta tokens + template-teacher explicit prompts
    users    two-tower user encoder
    reward   personalized preference reward model on the mini CLIP
    reward-judge
             the same recipe with seed 1 (another user split, another init): the adapter's held-out judge,
             never optimised against (reward-hacking guard, held-out report)
    adapter-init / adapter
             the dual-path adapter + projectors: stage 1 (CLIP reconstruction), then stage 2 (reward feedback
             from the personalized reward and CLIP score); they train on a preset packaged from the steps
             above into `work/preset`, since they drive the whole cover pipeline

`package_mini` then writes the preset folder (default `icg/assets/mini`): `backbone/` is a diffusers
`StableDiffusionPipeline` folder (unet, vae, text_encoder, tokenizer, scheduler, model_index.json), the other
components are folders their own `from_pretrained` reads, and `preset.json` names them — so `--preset mini`
goes through exactly the loaders of `--preset sd15`. Training-only files (checkpoints, caches) stay in the
work folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from icg.atomic import write_text_atomic
from icg.data.records import InteractionData
from icg.errors import ICGError
from icg.machine import machine
from icg.presets import PresetSpec, mini_assets_dir
from icg.training.loop import torch_threads
from icg.training.recipe import MiniRecipe, load_recipe

logger = logging.getLogger(__name__)

STEPS = ("clip", "vae", "unet", "context", "users", "reward", "reward-judge", "adapter-init", "adapter")
RECORD_NAME = "train_mini.json"
# Files a trainer writes for itself (resume state, caches), never shipped.
_TRAINING_ONLY = {"checkpoint.pt"}


def _cache(work: Path) -> Path:
    return work / "clip" / "cache"  # the 64² multi-variant covers, rendered once and shared by all steps


def _step_clip(data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool) -> dict:
    from icg.training.mini_clip import mini_clip_preset, train_mini_clip

    config = mini_clip_preset(recipe.clip_preset)
    return train_mini_clip(data, work / "clip", config, progress=progress, threads=threads)


def _step_vae(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool, device: str = "cpu"
) -> dict:
    from icg.training.mini_vae import train_mini_vae

    return train_mini_vae(
        data.items, work / "vae", cache_dir=_cache(work), threads=threads, device=device, progress=progress
    )


def _step_unet(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool, device: str = "cpu"
) -> dict:
    from icg.training.mini_unet import train_mini_unet

    return train_mini_unet(
        data.items, work / "unet", vae_dir=work / "vae", clip_dir=work / "clip", cache_dir=_cache(work),
        threads=threads, device=device, progress=progress,
    )  # fmt: skip


def _step_context(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool
) -> dict:
    from icg.training.mini_context import train_mini_context

    return train_mini_context(
        data.items, work / "context", clip_dir=work / "clip", cache_dir=_cache(work), threads=threads,
        progress=progress,
    )  # fmt: skip


def _step_users(data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool) -> dict:
    from icg.users.train import train_user_encoder

    with torch_threads(threads):
        return train_user_encoder(data, work / "users", seed=recipe.users_seed, progress=progress)


def _step_reward(data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool) -> dict:
    from icg.training.reward_model import train_from_dataset

    # issue 18: the "taste" recipe (frozen CLIP, so an epoch takes seconds: its own epochs + early stopping)
    with torch_threads(threads):
        return train_from_dataset(
            data, work / "reward", recipe.reward_profile, clip=work / "clip", seed=recipe.reward_seed
        )


# the shipped recipe's judge seed: evaluation holds out the judge's users (`held_out`)
JUDGE_SEED = load_recipe("mini").judge_seed


def _step_reward_judge(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool
) -> dict:
    from icg.training.reward_model import train_from_dataset

    with torch_threads(threads):  # the reward's recipe, another seed and user split
        return train_from_dataset(
            data, work / "reward_judge", recipe.reward_profile, clip=work / "clip", seed=recipe.judge_seed
        )


def _adapter(
    work: Path, data: InteractionData, recipe: MiniRecipe, threads: int, progress: bool, stage: str
) -> dict:
    from icg.presets import mini_preset
    from icg.training.adapter import AdapterTrainConfig, train_adapter_from_preset

    if not (work / "preset" / "preset.json").is_file() or stage == "init":
        package_mini(work, work / "preset", with_adapter=False)
    spec = mini_preset(work / "preset")
    if stage == "init":
        config, out = AdapterTrainConfig(**recipe.adapter_init), work / "adapter_init"
    else:
        config, out = AdapterTrainConfig(**recipe.adapter), work / "adapter"
        spec = spec.replace(adapter=str(work / "adapter_init" / "adapter"))
    return train_adapter_from_preset(spec, data, out, config, threads=threads, progress=progress)


def _step_adapter_init(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool
) -> dict:
    return _adapter(work, data, recipe, threads, progress, "init")


def _step_adapter(
    data: InteractionData, work: Path, recipe: MiniRecipe, threads: int, progress: bool
) -> dict:
    return _adapter(work, data, recipe, threads, progress, "reward")


_STEP_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "clip": _step_clip,
    "vae": _step_vae,
    "unet": _step_unet,
    "context": _step_context,
    "users": _step_users,
    "reward": _step_reward,
    "reward-judge": _step_reward_judge,
    "adapter-init": _step_adapter_init,
    "adapter": _step_adapter,
}


_DEVICE_STEPS = {"vae", "unet"}  # the steps whose trainers take a device (the others run on the CPU)


def check_steps(steps: Sequence[str]) -> list[str]:
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ICGError(f"unknown mini training step(s) {unknown}; expected some of {list(STEPS)}")
    return [s for s in STEPS if s in steps]  # always in dependency order


def train_mini(
    data: InteractionData,
    work_dir: str | Path,
    steps: Sequence[str] = STEPS,
    *,
    threads: int = 1,
    progress: bool = True,
    device: str = "cpu",
    recipe: str | Path | MiniRecipe = "mini",
) -> dict[str, dict]:
    """Run `steps` in order into `work_dir/<step>/`; returns {step: metrics}. Records wall time per step in
    `work_dir/train_mini.json` (a step that was already complete reports its trainer's own total seconds).
    `device` is where the VAE and UNet steps train (the other steps run on the CPU). `recipe` is a shipped
    recipe's name, a recipe file (`icg.training.recipe`) or a `MiniRecipe`.
    """
    recipe = recipe if isinstance(recipe, MiniRecipe) else load_recipe(recipe)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    record_file = work / RECORD_NAME
    record = json.loads(record_file.read_text()) if record_file.is_file() else {"steps": {}}
    results: dict[str, dict] = {}
    for step in check_steps(steps):
        logger.info("mini preset: step %s", step)
        tick = time.perf_counter()
        on_device = {"device": device} if step in _DEVICE_STEPS else {}
        metrics = _STEP_FUNCTIONS[step](data, work, recipe, threads, progress, **on_device)
        metrics = {k: v for k, v in metrics.items() if k != "history"}
        results[step] = metrics
        record["steps"][step] = {
            "seconds_this_call": round(time.perf_counter() - tick, 1),
            "seconds_total": metrics.get("seconds"),
            "completed": metrics.get("completed", True),
        }
        record.update(machine=machine(), threads=threads, dataset=data.name, recipe=recipe.to_dict())
        write_text_atomic(record_file, json.dumps(record, indent=2, default=str))
    return results


# ------------------------------------------------------------------------------------------------ packaging
def _copy_files(src: Path, dst: Path, folders: tuple[str, ...] = ()) -> None:
    """A trainer's output folder (weights, configs, metrics) without resume state or caches; subfolders only
    when named in `folders` (e.g. the reward model's tuned `clip/`)."""
    if not src.is_dir():
        raise ICGError(f"{src}: missing; run its training step first (`icg train mini --step ...`)")
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in _TRAINING_ONLY:
            shutil.copy2(path, dst / path.name)
        elif path.is_dir() and path.name in folders:
            shutil.copytree(path, dst / path.name, ignore=shutil.ignore_patterns(*_TRAINING_ONLY))


def _package_backbone(work: Path, out: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(work / "clip"),
        tokenizer=CLIPTokenizer.from_pretrained(work / "clip"),
        unet=UNet2DConditionModel.from_pretrained(work / "unet" / "unet"),
        scheduler=DDIMScheduler.from_pretrained(work / "unet" / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def _context_meta_tokens(folder: Path) -> int:
    config = folder / "icg_context.json"
    if not config.is_file():
        raise ICGError(f"{config}: missing; the context step has not finished")
    return int(json.loads(config.read_text())["num_meta_tokens"])


def package_mini(work_dir: str | Path, out_dir: str | Path | None = None, with_adapter: bool = True) -> Path:
    """Write the preset folder from a finished work folder (a fresh folder, then swapped in); the trained
    adapter (`work/adapter/adapter`) goes in when present and `with_adapter`."""
    work = Path(work_dir)
    out = Path(out_dir) if out_dir is not None else mini_assets_dir()
    needed = {"clip": "clip", "vae": "vae", "unet": "unet/unet", "context": "context", "users": "users"}
    needed["reward"] = "reward"
    missing = [step for step, sub in needed.items() if not (work / sub).is_dir()]
    if missing:
        raise ICGError(f"{work}: no output of step(s) {missing}; run `icg train mini --work {work}` first")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _package_into(work, staging, with_adapter)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    logger.info("mini preset packaged in %s (%.1f MB)", out, size / 1e6)
    return out


def _package_into(work: Path, staging: Path, with_adapter: bool) -> None:
    _package_backbone(work, staging / "backbone")
    adapter = work / "adapter" / "adapter"
    if with_adapter and adapter.is_dir():
        _copy_files(adapter, staging / "adapter")
    _copy_files(work / "clip", staging / "clip")
    _copy_files(work / "context", staging / "context_encoder")
    _copy_files(work / "users", staging / "user_encoder")
    _copy_files(work / "reward", staging / "reward_model", folders=("clip",))
    judge = work / "reward_judge"
    if judge.is_dir():
        _copy_files(judge, staging / "reward_judge", folders=("clip",))
    spec = PresetSpec(
        name="mini",
        base_model="backbone",
        context_encoder="context_encoder",
        user_encoder="user_encoder",
        clip="clip",
        reward_model="reward_model",
        reward_judge="reward_judge" if (staging / "reward_judge").is_dir() else None,
        adapter="adapter" if (staging / "adapter").is_dir() else None,
        num_meta_tokens=_context_meta_tokens(work / "context"),
        explicit_prompt_tokens=48,
    )
    (staging / "preset.json").write_text(spec.to_json() + "\n")
    record = work / RECORD_NAME
    if record.is_file():
        shutil.copy2(record, staging / RECORD_NAME)
