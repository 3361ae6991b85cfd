"""Adapter training (paper §3.4.2): Stage 1 initialization, Stage 2 reward feedback learning; accelerate.

No ground-truth covers: the dual-path K/V projections (`to_k_p`, `to_v_p` of every attn2) and the projector
learn from rewards on *generated* images. One step, for a batch of (item, user) samples:
  c_t = text encoder(P_exp) (frozen, no graph); c_p = projector(C_ref, U_pre) (trainable);
  Gaussian noise → DDIM (`num_inference_steps`, guidance `guidance_scale`, paper 1.0) without gradients down
  to a stop step drawn from the last `stop_window` steps, with gradients through the last `grad_steps` = K
  steps before it (ReFL / DRaFT-K; UNet gradient checkpointing when enabled); the DDIM x̂0 of the stop step
  (ReFL's image; at the final step it is the pipeline's output up to ᾱ_final) → frozen VAE decoder (the
  gradient flows through it) → images in [0, 1];
  L = Σ λ_r · loss_r(reward_r(images)) over the enabled rewards (each with its `default_loss`), plus the
  optional denoising regularizer λ_d · ε-MSE on the VAE latents of the reference covers.
Stage "init" is the same loop with only the weak CLIP reconstruction term (generated image ↔ caption, λ_rec).

Engineering: `Accelerator(mixed_precision, gradient_accumulation_steps, project_dir)`; the trainable module's
forward runs the whole step, so DDP (`accelerate launch`) and autocast see it. `save_state` every
`checkpoint_every` steps into `checkpoints/step-N` (staged, renamed into place, config and trainer state
beside it); a re-run loads the latest with `load_state` and continues exactly: sample order, noise and stop
steps are pure functions of (seed, position) (`SampleStream`, per-sample generators), so nothing but the
step count is needed to skip what was consumed. The caller's `pipe` is trained in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from icg.adapter.checkpoint import save_adapter
from icg.atomic import atomic_path, write_text_atomic
from icg.backbones import backbone_for, backbone_kind
from icg.rewards.base import Reward, RewardTerm, WeightedRewards
from icg.rewards.fast import RewardSpeed
from icg.training import loop
from icg.training.adapter_config import (
    RESUMABLE_CHANGES,
    REWARD_WEIGHTS,
    AdapterTrainConfig,
    config_for_preset,
)
from icg.training.adapter_data import (
    AdapterData,
    GroupedSampleStream,
    SampleStream,
    frozen_latents,
    item_features,
)
from icg.training.adapter_step import AdapterStep
from icg.training.guard import GuardMonitor, Judge, default_judges, held_out_scores

logger = logging.getLogger(__name__)

GUARD_SAMPLES = 16  # held-out (item, user) samples the guard scores at every check
CONFIG_NAME = "adapter_train_config.json"
STATE_NAME = "trainer_state.json"
METRICS_NAME = "metrics.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class TrainedBackbone:
    """What the trainer needs to know of a pipeline's backbone: its name, network, adapter, frozen text
    encoders and step class (the backbone itself, `icg.backbones`, tells a UNet pipeline from a Flux one)."""

    name: str  # "sd15" | "flux", as saved in the adapter config
    denoiser: nn.Module
    adapter: nn.Module
    text_encoders: tuple[nn.Module, ...]
    step_class: type[AdapterStep]


Backbone = TrainedBackbone  # its name before icg.backbones.Backbone (the interface) existed


def backbone_of(pipe) -> TrainedBackbone:
    """The `TrainedBackbone` of a CoverPipeline (UNet) or FluxCoverPipeline (transformer)."""
    backbone = backbone_for(pipe)
    step_class = AdapterStep
    if backbone.kind == "flux":
        from icg.training.adapter_step_flux import FluxAdapterStep

        step_class = FluxAdapterStep
    return TrainedBackbone(
        backbone.kind, backbone.denoiser, backbone.adapter_layers(), backbone.text_encoders, step_class
    )


def _has_accelerator() -> bool:
    """A GPU (or other torch accelerator) is there: accelerate then picks its device and NCCL (etc.)."""
    current = getattr(torch, "accelerator", None)
    if current is not None:
        return current.is_available()
    return torch.cuda.is_available()


def warn_if_alone(num_processes: int) -> None:
    """`accelerate launch` with a MULTI_CPU config (and no mpirun) starts ONE process with MASTER_ADDR set and
    no WORLD_SIZE: say so instead of silently training alone."""
    if num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        logger.warning(
            "MASTER_ADDR is set but this is the only process (no WORLD_SIZE): a multi-process launch did not "
            "happen. On CPUs use `torchrun --nproc_per_node N -m icg.cli ...` or `accelerate launch "
            "--multi_gpu --num_processes N -m icg.cli ...` (an accelerate MULTI_CPU config needs mpirun)"
        )


def _any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is True on any of them (one decision for all ranks)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def _global_mean(accelerator, record: dict[str, float]) -> dict[str, float]:
    """Each logged value averaged over the processes: the record of the global batch (all ranks equal)."""
    if accelerator.num_processes == 1:
        return record
    values = torch.tensor([float(v) for v in record.values()], dtype=torch.float64, device=accelerator.device)
    means = accelerator.reduce(values, "mean").tolist()
    return dict(zip(record, means, strict=True))


class TrainableAdapter(nn.Module):
    """The parameters that train (dual-path K/V + projector). `forward(step)` runs the whole step closure,
    so the wrappers `accelerator.prepare` adds (DDP's gradient sync, autocast) cover the generation."""

    def __init__(self, adapter: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.projector = projector

    def forward(self, step) -> dict:
        return step()


# ------------------------------------------------------------------------------------------- checkpoints
def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, folder) of a run, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _check_resumable(path: Path, config: AdapterTrainConfig, fingerprint: str) -> dict:
    state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    saved = AdapterTrainConfig.from_json((path / CONFIG_NAME).read_text(encoding="utf-8"))
    if saved.run_key() != config.run_key():
        differ = [
            f.name
            for f in dataclasses.fields(config)
            if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"{path} was trained with other settings ({differ}); use another out_dir or resume=False"
        )
    if state.get("data_fingerprint") != fingerprint:
        raise ValueError(f"{path} was trained on other samples; use another out_dir or resume=False")
    return state


def _save_checkpoint(accelerator, out: Path, step: int, config: AdapterTrainConfig, state: dict) -> None:
    """save_state into a staging folder, add config + trainer state, rename into place, prune old ones."""
    root = out / "checkpoints"
    staging, final = root / f".step-{step}.partial", root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(staging / CONFIG_NAME, config.to_json())
        write_text_atomic(staging / STATE_NAME, json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for _, old in checkpoints(out)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_grid(step_fn: AdapterStep, out: Path, step: int) -> None:
    """Sample covers of fixed (item, user) samples and noise, full DDIM, no gradients → samples/step-N.png."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    cfg, data = step_fn.config, step_fn.data
    # CPU by design: sample rows index the host-side AdapterData
    rows = torch.linspace(0, len(data) - 1, min(cfg.num_sample_covers, len(data))).long().unique()
    _, images = step_fn.sample(rows, "grid")
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    grid = make_image_grid([Image.fromarray(a) for a in arrays], rows=1, cols=len(arrays))
    with atomic_path(out / "samples" / f"step-{step:06d}.png") as tmp:
        grid.save(tmp, format="PNG")


# ------------------------------------------------------------------------------------------- training
def build_objective(rewards: Mapping[str, Reward], config: AdapterTrainConfig) -> WeightedRewards:
    """Only the enabled rewards (λ > 0) enter: a switched-off reward is never evaluated, not even moved."""
    unknown = sorted(set(rewards) - set(REWARD_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown reward names {unknown}; expected some of {sorted(REWARD_WEIGHTS)}")
    weights = config.reward_weights()
    missing = sorted(set(weights) - set(rewards))
    if missing:
        fields = [REWARD_WEIGHTS[m] for m in missing]
        raise ValueError(f"rewards {missing} are enabled but not given; pass them or set {fields} to 0")
    if config.personal_contrast and "personalized" in weights:
        from icg.rewards.user_contrast import UserContrastReward

        rewards = {**rewards, "personalized": UserContrastReward(rewards["personalized"])}
    if config.users_per_item > 1 and "personalized" in weights:
        from icg.rewards.user_contrast import UserSwapReward

        rewards = {**rewards, "personalized": UserSwapReward(rewards["personalized"], config.users_per_item)}
    terms = {n: RewardTerm(rewards[n], w, rewards[n].default_loss) for n, w in weights.items()}
    return WeightedRewards(terms, None if config.reward_speed else RewardSpeed.off())


def train_adapter(
    pipe,
    rewards: Mapping[str, Reward],
    samples: AdapterData,
    out_dir: str | Path,
    config: AdapterTrainConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    held_out: AdapterData | None = None,
    judges: Sequence[Judge] = (),
) -> dict[str, object]:
    """Train `pipe`'s adapter + projector on `samples` with `rewards` (name → Reward); returns the metrics.

    `rewards` keys: "personalized", "clip", "hpsv2", "pickscore" (λ from the config; a λ = 0 reward may be
    absent). `max_minutes` / `max_steps` stop this call early between steps (a checkpoint is saved; a re-run
    continues). Output: checkpoints/step-N, samples/step-N.png, adapter/ (`save_adapter`, on completion),
    metrics.json, and TensorBoard logs when tensorboard is installed. `threads` sets torch's intra-op threads
    for this call; a resumed run must use the same count for bit-identical weights. `pipe` is trained in
    place (its other modules are frozen); a run already complete in `out_dir` returns its metrics at once
    and leaves `pipe` as it is (load `out_dir/adapter` instead).

    With `config.guard_every > 0`, `held_out` (samples the run never trains on) and `judges` (measures it
    never optimises, e.g. `guard.default_judges`) form the reward-hacking guard (`icg.training.guard`).
    """
    config = config or AdapterTrainConfig()
    if not isinstance(samples, AdapterData):
        raise ValueError(
            f"samples must be an AdapterData (see prepare_adapter_data), got {type(samples).__name__}"
        )
    loop.check_run_options(max_minutes, max_steps=max_steps, threads=threads)
    if config.guard_every > 0 and (not isinstance(held_out, AdapterData) or not judges):
        raise ValueError("guard_every > 0 needs held_out samples (an AdapterData) and at least one judge")
    names = [j.name for j in judges]
    if len(set(names)) != len(names) or "train_reward" in names:
        raise ValueError(f"judge names must be unique and not 'train_reward', got {names}")
    objective = build_objective(rewards, config)
    out = Path(out_dir)
    # the caller's global RNG is left as it was
    with loop.torch_threads(threads), torch.random.fork_rng(devices=[]):
        cache = Path(cache_dir) if cache_dir is not None else out / "cache" / "context"
        budget = (max_minutes, max_steps)
        guard = (held_out, list(judges)) if config.guard_every > 0 else None
        return _train(pipe, objective, samples, out, config, resume, progress, budget, cache, guard)


def _train(
    pipe,
    objective: WeightedRewards,
    data: AdapterData,
    out: Path,
    config: AdapterTrainConfig,
    resume: bool,
    progress: bool,
    budget: tuple[float | None, int | None],
    cache_dir: Path,
    guard: tuple[AdapterData, list[Judge]] | None,
) -> dict[str, object]:
    max_minutes, max_steps = budget
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import is_tensorboard_available
    from diffusers.optimization import get_scheduler

    started = time.perf_counter()
    if config.users_per_item > 1:
        data = data.grouped_by_item(config.users_per_item, config.seed)
    fingerprint = data.fingerprint()
    full_key = hashlib.sha256((fingerprint + config.to_json()).encode()).hexdigest()
    metrics_file = out / METRICS_NAME
    done = loop.finished_metrics(metrics_file, full_key, resume and (out / "adapter").is_dir())
    if done is not None:
        logger.info("adapter training in %s is complete; nothing to do", out)
        return done
    tensorboard = bool(is_tensorboard_available())
    accelerator = Accelerator(
        # without cpu=True, accelerate maps a torchrun/`accelerate launch` world on a machine with no GPU to
        # DistributedType.NO: every process then trains alone on the same samples (issue 15)
        cpu=not _has_accelerator(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_dir=str(out),
        log_with="tensorboard" if tensorboard else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device = accelerator.device
    main = accelerator.is_main_process
    warn_if_alone(accelerator.num_processes)
    if not resume and main and (out / "checkpoints").exists():
        logger.warning("resume=False: removing the old checkpoints in %s", out / "checkpoints")
        shutil.rmtree(out / "checkpoints")

    # frozen: everything but the dual-path K/V and the projector
    backbone = backbone_of(pipe)
    frozen = [backbone.denoiser, pipe.vae, *backbone.text_encoders, pipe.context_encoder, pipe.user_encoder]
    frozen.append(objective)
    for module in frozen:
        if module is not None:
            module.requires_grad_(False).eval()
    module = TrainableAdapter(backbone.adapter, pipe.projector)
    pipe.to(device)
    objective.to(device)
    if config.mixed_precision != "no" and device.type == "cuda":  # frozen weights in the compute dtype
        dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
        for frozen_module in (backbone.denoiser, pipe.vae, *backbone.text_encoders):
            frozen_module.to(dtype)
    module.float().requires_grad_(True).train()
    if config.gradient_checkpointing:  # the denoiser and the VAE decoder of x̂0 (most of a 512² step's memory)
        backbone.denoiser.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()

    with accelerator.main_process_first():  # the first process fills the disk cache, the others read it
        feats = item_features(pipe, data, cache_dir, config.max_prompt_tokens, progress=progress and main)
    ref_latents = frozen_latents(pipe, data.covers, pipe.default_size) if config.denoise_weight > 0 else None

    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps * accelerator.num_processes
    )
    module, optimizer, schedule = accelerator.prepare(module, optimizer, schedule)
    step_fn = backbone.step_class(pipe, data, feats, objective, config, device, ref_latents)
    stream = (
        GroupedSampleStream(len(data), config.users_per_item, config.seed)
        if config.users_per_item > 1
        else SampleStream(len(data), config.seed)
    )
    monitor, guard_fn = None, None
    if guard is not None:
        held_out, judges = guard
        if config.users_per_item > 1:  # the swap reward reads groups: the guard's samples come in them too
            held_out = held_out.grouped_by_item(config.users_per_item, config.seed)
        with accelerator.main_process_first():
            held_feats = item_features(pipe, held_out, cache_dir, config.max_prompt_tokens)
        guard_fn = backbone.step_class(pipe, held_out, held_feats, objective, config, device, None)
        judges = [j.to(device) for j in judges]
        monitor = GuardMonitor(config.guard_rule(), {j.name: j.higher_is_better for j in judges})

        def check(at: int) -> dict:
            record = monitor.record(at, held_out_scores(guard_fn, judges, config.batch_size))
            means = {f"guard/{k}": v for k, v in record["means"].items()}
            return means | {"guard/flagged": record["flagged"]}

    if tensorboard:
        accelerator.init_trackers(f"adapter_{config.stage}", config=dataclasses.asdict(config))

    start, history, seconds_before = 0, [], 0.0
    found = checkpoints(out) if resume else []
    if found:
        state = _check_resumable(found[-1][1], config, fingerprint)
        accelerator.load_state(str(found[-1][1]))
        start, history, seconds_before = state["step"], state["history"], state["seconds"]
        if monitor is not None:
            monitor.checks = list(state.get("guard", []))
        if state.get("num_processes") != accelerator.num_processes:
            logger.warning(
                "resuming on %d processes, checkpoint from %s: the sample order differs",
                accelerator.num_processes,
                state.get("num_processes"),
            )
        logger.info("resuming %s from step %d of %d", out, start, config.steps)
    elif config.sample_every and main:
        _save_grid(step_fn, out, 0)
    if monitor is not None and not monitor.checks:
        if start > 0:
            logger.warning("the guard was off before step %d: its baseline is this step, not step 0", start)
        accelerator.log(check(start), step=start)

    batch, procs, gas = config.batch_size, accelerator.num_processes, config.gradient_accumulation_steps
    step, step_seconds, saved = start, [], start
    bar = tqdm(
        total=config.steps, initial=start, desc=f"adapter {config.stage}", disable=not (progress and main)
    )
    while step < config.steps:
        over_time = loop.time_is_up(started, step_seconds, max_minutes)
        # every process stops at the same step, or the others would wait forever in the next all-reduce
        if _any_process(accelerator, over_time or (max_steps is not None and step - start >= max_steps)):
            logger.warning("stopping %s at step %d/%d (budget); resumable", out, step, config.steps)
            break
        tick, logs = time.perf_counter(), []
        for micro in range(gas):
            m = step * gas + micro  # global micro-step
            first = (m * procs + accelerator.process_index) * batch  # this process's stream position
            rows = stream.take(first, batch)
            with accelerator.accumulate(module):
                result = module(lambda r=rows, f=first, m=m: step_fn(r, f, m))
                accelerator.backward(result["loss"])
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(module.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            logs.append(result["log"])
        step += 1
        record = _global_mean(accelerator, {k: sum(log[k] for log in logs) / len(logs) for k in logs[0]})
        record |= {"step": step, "lr": schedule.get_last_lr()[0]}
        if monitor is not None and step % config.guard_every == 0:
            record |= check(step)
        history.append(record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        step_seconds.append(time.perf_counter() - tick)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss/total']:.4f}")
        seconds = seconds_before + time.perf_counter() - started
        trainer_state = {"step": step, "history": history, "data_fingerprint": fingerprint,
                         "num_processes": procs, "seconds": seconds,
                         "guard": monitor.checks if monitor is not None else []}  # fmt: skip
        stop = _any_process(accelerator, monitor is not None and monitor.should_stop)
        if step % config.checkpoint_every == 0 or step == config.steps or stop:
            _save_checkpoint(accelerator, out, step, config, trainer_state)
            saved = step
        if config.sample_every and step % config.sample_every == 0 and main:
            _save_grid(step_fn, out, step)
        if stop:
            logger.error(
                "reward-hacking guard: stopping %s at step %d (%d flagged checks in a row); the checkpoint "
                "is saved, adapter/ is not written",
                out, step, config.guard_patience,
            )  # fmt: skip
            break
    bar.close()
    if step != saved:  # stopped by the budget between checkpoints
        _save_checkpoint(accelerator, out, step, config, trainer_state)

    completed = step == config.steps and not (monitor is not None and monitor.should_stop)
    unwrapped = accelerator.unwrap_model(module)
    if completed and main:
        loop.replace_folder(
            out / "adapter",
            lambda staging: save_adapter(
                staging, unwrapped.adapter, unwrapped.projector, backbone=backbone.name
            ),
        )
    seconds = round(seconds_before + time.perf_counter() - started, 1)
    metrics = {
        "stage": config.stage, "completed": completed, "steps_completed": step, "steps": config.steps,
        "adapter": str(out / "adapter") if completed else None, "rewards": config.reward_weights(),
        "denoise_weight": config.denoise_weight, "n_samples": len(data), "n_items": len(data.item_ids),
        "n_users": len(data.user_ids), "data": data.info, "device": str(device), "num_processes": procs,
        "guard": monitor.summary() if monitor is not None else None,
        "stopped_by_guard": bool(monitor is not None and monitor.should_stop),
        "tensorboard": tensorboard, "trainable_parameters": sum(p.numel() for p in unwrapped.parameters()),
        "seconds": seconds, "seconds_this_call": round(time.perf_counter() - started, 1),
        "seconds_per_step": round(sum(step_seconds) / len(step_seconds), 3) if step_seconds else None,
        "torch_threads": torch.get_num_threads(), "fingerprint": full_key,
        "config": dataclasses.asdict(config), "history": history,
    }  # fmt: skip
    text = json.dumps(metrics, indent=2)
    if main:
        write_text_atomic(metrics_file, text)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group, and a
        tracker.finish()  # second stage may run in the same `accelerate launch` process
    if config.gradient_checkpointing:
        backbone.denoiser.disable_gradient_checkpointing()
        pipe.vae.disable_gradient_checkpointing()
    unwrapped.eval()
    return json.loads(text)


def import_ip_adapter(pipe, path: str | Path):
    """Start `pipe`'s dual path from an IP-Adapter checkpoint: `load_ip_adapter_sd15` on a UNet pipeline,
    `load_ip_adapter_flux` on a Flux one (the projector's context path takes `image_proj` when the shapes
    agree; the result says whether it did)."""
    if backbone_kind(pipe) == "flux":
        from icg.adapter.flux import load_ip_adapter_flux

        return load_ip_adapter_flux(pipe.transformer, path, projector=pipe.projector)
    from icg.adapter.checkpoint import load_ip_adapter_sd15

    return load_ip_adapter_sd15(pipe.unet, path, projector=pipe.projector)


def train_adapter_from_preset(
    spec,
    data,
    out_dir: str | Path,
    config: AdapterTrainConfig | None = None,
    *,
    hpsv2: str | Path | None = None,
    pickscore: str | Path | None = None,
    pickscore_processor: str | Path | None = None,
    ip_adapter: str | Path | None = None,
    max_users: int | None = None,
    **options: object,
) -> dict[str, object]:
    """Load the preset's pipeline and rewards, build the samples, train (`options` go to `train_adapter`).

    `data`: an `InteractionData` (samples by `prepare_adapter_data`, covers at the pipeline's size) or a
    ready `AdapterData`. Rewards: personalized from `spec.reward_model`, CLIP from `spec.clip`, HPSv2 and
    PickScore only from the paths given; an enabled reward with no source is switched off with a warning
    (the mini preset has neither HPSv2 nor PickScore). With `config.guard_every > 0` the guard watches
    `GUARD_SAMPLES` positives of validation users on validation items with `default_judges` (the preset's
    `reward_judge`, SSIM, LPIPS-miniCLIP on its CLIP) unless `held_out`/`judges` are given. Stage 2 starts
    from the adapter of `spec` (e.g. `spec.replace(adapter=<stage 1 out>/adapter)`); with none, from a
    zero-initialised one. `ip_adapter` (an IP-Adapter-SD15 `.bin`/`.safetensors`, or IP-Adapter-Flux for a
    Flux preset) replaces the dual path's K/V by its `to_k_ip`/`to_v_ip` (`import_ip_adapter`) before
    training.
    """
    from icg.errors import ICGError
    from icg.loading import load_cover_pipeline
    from icg.rewards import load_reward
    from icg.training.adapter_data import prepare_adapter_data

    config = config or AdapterTrainConfig()
    sources = {"personalized": spec.reward_model, "clip": spec.clip, "hpsv2": hpsv2, "pickscore": pickscore}
    off = {n: 0.0 for n in config.reward_weights() if sources[n] is None}
    if off:
        logger.warning("no checkpoint for rewards %s: switched off", sorted(off))
        try:
            config = dataclasses.replace(config, **{REWARD_WEIGHTS[n]: v for n, v in off.items()})
        except ValueError as exc:
            raise ICGError(f"preset '{spec.name}' has no checkpoint for any enabled reward: {exc}") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # a fresh (zero-init) adapter's projector is drawn from torch's RNG
        pipe = load_cover_pipeline(spec)
        if ip_adapter is not None:
            import_ip_adapter(pipe, ip_adapter)
    rewards: dict[str, Reward] = {}
    for name in config.reward_weights():
        kwargs = (
            {"processor_path": pickscore_processor} if name == "pickscore" and pickscore_processor else {}
        )
        rewards[name] = load_reward(name, sources[name], **kwargs)
    pixels = pipe.default_size
    if config.guard_every > 0 and "held_out" not in options:
        if isinstance(data, AdapterData):
            raise ICGError("the guard needs held-out samples: pass held_out=, or the dataset, not samples")
        held = prepare_adapter_data(data, pixels, Path(out_dir) / "cache", user_split="val", item_split="val")
        options["held_out"] = held.subset(GUARD_SAMPLES, seed=config.seed)
        options.setdefault("judges", default_judges(spec.reward_judge, spec.clip))
    if not isinstance(data, AdapterData):
        data = prepare_adapter_data(data, pixels, Path(out_dir) / "cache", max_users=max_users)
    config = config_for_preset(config, spec)
    return train_adapter(pipe, rewards, data, out_dir, config, **options)  # type: ignore[arg-type]
