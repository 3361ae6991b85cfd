"""Benchmark: one adapter-training step (paper §3.4.2) with and without the reward models, same run.

What the paper's multi-reward supervision costs on top of the rest of reward-feedback training (paper: +20 %
training cost; target of issue 20: ≤ +10 %, and ≤ 28 GiB peak at batch 4 on SD1.5). Each variant is one
optimizer step of the library's own step (`icg.training.adapter_step.AdapterStep` in `TrainableAdapter`, an
`Accelerator` and AdamW on the adapter + projector, gradient clipping, as `train_adapter` runs it): the
no-grad DDIM rollout to the stop step (drawn from the last `stop_window` steps), K = 1 step with gradients
(UNet gradient checkpointing on), VAE decode of x̂0, the loss, backward, AdamW step. Only the objective
differs:
  (a) no reward: a zero-cost stand-in reward (the image mean, no model) — everything but the reward models;
  (e) all rewards, eager: every reward of the setting, λ = 0.25 each, fp32 weights, `RewardSpeed.off()` —
      the path issue 20 measured (+44.6 % / +23.0 %, 39.4 GiB);
  (c) all rewards, ours: the same rewards (a copy, same weights) with `icg.rewards.fast.RewardSpeed` on —
      bf16 towers, text features cached (warmed once before timing, as `AdapterStep` does) and the text
      towers then parked on the CPU, preprocessing shared, resize as matmuls, each reward's backward inside
      the forward;
  (g) as (c) plus `cuda_graphs` (opt-in, on CUDA only): the image towers' forward + backward replayed from
      CUDA graphs; measured after everything else, beside its own (a) rounds (a failed capture cannot spoil
      the rest); its peak excludes the graphs' private pools (replays allocate nothing): see the reserved
      memory in the memory line;
  (b) CLIP reward only, ours (`--variants` to add it).
  GPU: HPSv2 (open_clip ViT-H-14) + PickScore (CLIP ViT-H/14) + CLIP (ViT-L/14) + personalized
  (PersonalizedRewardModel on a CLIP ViT-L/14), real architectures at random weights. CPU mini: personalized +
  CLIP only (the mini has no HPSv2/PickScore).
Rounds are interleaved (a warm-up round, then `--repeats` rounds, the variant order rotating each round); a
round's variants get the same samples, noise and stop step. Reported per variant and batch: median s/step
(wall; on CPU also process CPU time), peak memory, and the overhead vs (a) of the medians beside the median
of the per-round paired ratios (the target counts as met only when both are within it). Every model of every
variant stays on the device; a variant's peak = `torch.cuda.max_memory_allocated` (reset before the call)
minus the bytes of the other variants' reward weights, which sit untouched during the call (CPU: peak RSS of
the call, same subtraction). Then, on fixed 512² images: the reward part alone (forward + backward of the
objective) eager vs ours, each option switched off in turn, and ours − eager fp32 scores per reward; last,
a `torch.profiler` table of one step of (c). Each configuration that fails prints FAIL and the run goes on.

Modes:
- default (CPU): the shipped mini preset, samples of 4 ml-100k users, 64², fp32, 1 torch thread;
- `--tiny` (or TINY=1): tiny sizes, a seconds-long smoke run (with --gpu: the GPU code path on CPU when
  there is no CUDA);
- `--gpu`: SD1.5 architecture at random weights (bench/pipeline_gpu.py's configs, tiny random Qwen2.5-VL
  context encoder, stand-in user tower), 512², `--dtype bf16|fp16` autocast with the frozen modules in that
  dtype (as `train_adapter` does on CUDA); ours' towers in `--reward-dtype` (default bf16).

    python bench/train_step.py --gpu --out $OUT/train_step.json          # H200: ≤ ~150 s with the build
    TINY=1 .venv/bin/python bench/train_step.py --gpu                   # CPU check of the GPU path
    .venv/bin/python bench/train_step.py [--tiny] [--batches 1 4] [--repeats 5] [--threads 1] [--out F]
JSON goes to --out (default $OUT/train_step.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import dataclasses
import importlib.util
import json
import logging
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
PIP_NAMES = {"open_clip": "open_clip_torch", "torchvision": "torchvision (the torch-matched version)"}


def require(*modules: str) -> None:
    """Exit with a pip line when an import the benchmark needs is missing (a bare GPU box may lack them)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        names = " ".join(PIP_NAMES.get(m, m) for m in missing)
        sys.exit(f"bench/train_step.py needs {', '.join(missing)}: pip install {names}")


require("diffusers", "accelerate", "transformers", "torchvision", "open_clip")  # what icg.training imports

from icg.rewards import Reward, RewardLoss, RewardSpeed, RewardTerm, WeightedRewards, load_reward  # noqa: E402
from icg.rewards.fast import OPTIONS, text_caches  # noqa: E402
from icg.rewards.personalized import reward_text  # noqa: E402
from icg.training.adapter import (  # noqa: E402
    REWARD_WEIGHTS,
    AdapterTrainConfig,
    TrainableAdapter,
    build_objective,
)
from icg.training.adapter_data import AdapterData, SampleStream, item_features  # noqa: E402

ALL_VARIANTS = ("no_reward", "all_rewards_eager", "all_rewards", "all_rewards_graphed", "one_reward")
DEFAULT_VARIANTS = ("no_reward", "all_rewards_eager", "all_rewards")  # + all_rewards_graphed on CUDA
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAPER_OVERHEAD, TARGET_OVERHEAD, TARGET_PEAK_GIB = 0.20, 0.10, 28.0
ISSUE_20 = {"all_rewards_b1": 0.446, "all_rewards_b4": 0.230, "peak_b4_gib": 39.4}  # eager, measured before
TITLES = ("Toy Story", "Heat", "Psycho", "Babe", "Seven", "Sabrina", "Copycat", "Casino")
PROFILES = ("likes comedy; a 24-year-old male technician", "likes horror; a 53-year-old female writer")


class ImageMean(Reward):
    """Variant (a)'s reward: the image mean. No model, so the step pays for everything except rewards."""

    name = "no_reward"
    needs_texts = False
    frozen = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the reward a device

    def _score(self, images: Tensor, texts: list[str] | None, users: object) -> Tensor:
        return images.mean(dim=(1, 2, 3)) + self.anchor  # (B,)


class PeakMemory:
    """Peak memory of one call: GPU allocated bytes, or CPU peak RSS.

    CPU: before the call, free heap pages go back to the OS (glibc `malloc_trim`, else memory freed by an
    earlier call would stay resident and hide this call's need) and the peak RSS (VmHWM) is reset through
    /proc/self/clear_refs; where that is refused, ru_maxrss (a process-lifetime peak) is all there is."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.resettable = self.cuda or self._reset_rss()
        libc = ctypes.util.find_library("c")
        self.trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc and not self.cuda else None
        self.label = (
            "GPU max_memory_allocated (reset before each call)"
            if self.cuda
            else f"CPU peak RSS of the call (VmHWM reset{', heap trimmed' if self.trim else ''} before)"
            if self.resettable
            else "CPU ru_maxrss: process peak so far, NOT per call (clear_refs refused)"
        )

    @staticmethod
    def _reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def _rss(self, field: str) -> int:
        if not self.resettable:  # the process-lifetime peak is all there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(match.group(1)) * 1024 if match else 0

    def start(self) -> int:
        """Reset the peak; the bytes in use now."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if self.trim is not None:
            self.trim(0)
        if self.resettable:
            self._reset_rss()
        return self._rss("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._rss("VmHWM")


def random_data(n_items: int, user_ids: list[str]) -> AdapterData:
    """A few items with random 64² covers, every (user, item) pair a sample (tiny and GPU modes)."""
    covers = torch.randint(0, 256, (n_items, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    samples = [[u, i] for i in range(n_items) for u in range(len(user_ids))]
    return AdapterData(
        item_ids=[str(i + 1) for i in range(n_items)],
        titles=[TITLES[i % len(TITLES)] for i in range(n_items)],
        covers=covers.to(torch.uint8),
        user_ids=user_ids,
        profiles=[PROFILES[u % len(PROFILES)] for u in range(len(user_ids))],
        samples=torch.tensor(samples),
    )


def cpu_parts(tiny: bool, tmp: Path) -> tuple[Any, dict[str, Reward], AdapterData, int, str]:
    """(pipe, rewards, samples, explicit prompt tokens, label): the mini preset, or the tiny one."""
    from icg.loading import load_cover_pipeline
    from icg.presets import get_preset, tiny_preset

    spec = tiny_preset(tmp / "tiny") if tiny else get_preset("mini")
    pipe = load_cover_pipeline(spec)
    if tiny:  # the rewards of tests/training/test_adapter_training.py, through the same loaders
        from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel
        from icg.testing import tiny_clip_model

        clip, processor = tiny_clip_model()
        clip.save_pretrained(tmp / "clip")
        processor.save_pretrained(tmp / "clip")
        torch.manual_seed(0)
        config = PersonalizedRewardConfig(hidden_size=16, num_heads=2)
        PersonalizedRewardModel(config, clip, processor).save_pretrained(tmp / "reward")
        clip_path, reward_path = tmp / "clip", tmp / "reward"
        data = random_data(4, ["1", "2"])  # ids the tiny preset's user encoder knows
    else:
        from icg.data.registry import load_dataset
        from icg.training.adapter_data import prepare_adapter_data

        clip_path, reward_path = spec.clip, spec.reward_model
        data = prepare_adapter_data(load_dataset("ml-100k"), 64, tmp / "covers", max_users=4)
    rewards = {
        "personalized": load_reward("personalized", reward_path),
        "clip": load_reward("clip", clip_path),
    }
    label = "tiny preset, tiny random rewards" if tiny else "mini preset (shipped weights), ml-100k samples"
    return pipe, rewards, data, spec.explicit_prompt_tokens, label


def gpu_parts(
    tiny: bool, device: torch.device, tmp: Path
) -> tuple[Any, dict[str, Reward], AdapterData, int, str]:
    """SD1.5-architecture CoverPipeline and the four rewards at real architectures, random weights."""
    os.environ["TINY"] = "1" if tiny else "0"  # bench/pipeline_gpu.py picks its configs at import
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel

    import pipeline_gpu as sd
    import rewards as arch  # bench/rewards.py: the CLIP architectures and their builder
    from icg.adapter.attention import install_dual_path_adapter
    from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
    from icg.context import ContextEncoder, build_tiny_context_encoder
    from icg.pipeline import CoverPipeline
    from icg.rewards import CLIPEncoder, CLIPSimilarityReward, HPSv2Reward, PickScoreReward
    from icg.rewards.clip_score import image_spec_from_processor
    from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel
    from icg.testing import BOS_TOKEN, EOS_TOKEN, tiny_clip_tokenizer, tiny_clip_vocab, tiny_scheduler

    vocab, _ = tiny_clip_vocab()
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: seconds, not minutes, for ~3 B parameters
        unet = UNet2DConditionModel(**sd.UNET)
        vae = AutoencoderKL(**sd.VAE)
        text = sd.text_encoder(len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
    install_dual_path_adapter(unet, init="text")
    build_tiny_context_encoder(tmp / "context", seed=0)
    context = ContextEncoder.from_pretrained(tmp / "context", num_meta_tokens=1, local_files_only=True)
    projector = PersonalizedProjector(
        ProjectorConfig(context_dim=context.hidden_size, num_meta_tokens=1,
                        cross_attention_dim=sd.UNET["cross_attention_dim"], user_dim=sd.USER_DIM)
    )  # fmt: skip
    tokenizer = tiny_clip_tokenizer(tmp / "tokenizer", max_length=sd.TEXT_TOKENS)
    pipe = CoverPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=tiny_scheduler(),
        context_encoder=context, projector=projector, user_encoder=sd.StandInUserEncoder(),
    )  # fmt: skip

    hps_name, (big, large, size, patch) = "ViT-H-14", (arch.VIT_H, arch.VIT_L, 224, 14)
    if tiny:
        hps_name, (big, large, size, patch) = "bench-tiny-hps", (arch.TINY, arch.TINY, 32, 8)
        (tmp / f"{hps_name}.json").write_text(json.dumps(arch.TINY_OPEN_CLIP))
        open_clip.add_model_config(tmp / f"{hps_name}.json")
    with torch.device(device):
        hps = open_clip.create_model(hps_name, pretrained=None, device=device)
        towers = {k: arch.hf_clip(a, size, patch, seed) for k, a, seed in
                  (("pickscore", big, 1), ("clip", large, 2), ("personalized", large, 3))}  # fmt: skip

    def encoder(key: str) -> CLIPEncoder:
        model, processor = towers[key]
        return CLIPEncoder(model, image_spec_from_processor(processor.image_processor), processor.tokenizer)

    rewards = {
        "hpsv2": HPSv2Reward(hps, open_clip.get_tokenizer(hps_name)),
        "pickscore": PickScoreReward(encoder("pickscore")),
        "clip": CLIPSimilarityReward(encoder("clip")),
        "personalized": PersonalizedRewardModel(PersonalizedRewardConfig(), *towers["personalized"]),
    }
    rewards = {k: r.to(device) for k, r in rewards.items()}  # the personalized model's own heads too
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    label = (
        f"SD1.5 architecture{' (TINY configs)' if tiny else ''}, random weights ({n_unet:.0f} M-param UNet); "
        f"rewards {'tiny' if tiny else 'HPSv2 ViT-H-14, PickScore ViT-H/14, CLIP + personalized on ViT-L/14'}"
    )
    return pipe, rewards, random_data(4, ["1", "2", "3", "4"]), sd.TEXT_TOKENS, label


def objectives(
    rewards: dict[str, Reward], config: AdapterTrainConfig, ours: RewardSpeed, variants: tuple[str, ...]
) -> tuple[dict[str, WeightedRewards], dict[str, Reward]]:
    """(a) the image mean; (e) every reward, eager, on a copy of the rewards (same weights, fp32); (c) every
    reward with `ours`; (b) CLIP only with `ours`. λ from the config (0.25 each). → (objectives, the copy)."""
    clip_only = {"lambda_hps": 0.0, "lambda_per": 0.0, "lambda_pick": 0.0}
    every = missing_off(rewards)
    eager_rewards = copy.deepcopy(rewards) if "all_rewards_eager" in variants else {}
    built = {
        "no_reward": lambda: WeightedRewards(
            {"no_reward": RewardTerm(ImageMean(), 1.0, RewardLoss())}, speed=RewardSpeed.off()
        ),
        "all_rewards_eager": lambda: build_objective(eager_rewards, dataclasses.replace(config, **every)),
        "all_rewards": lambda: build_objective(rewards, dataclasses.replace(config, **every)),
        "all_rewards_graphed": lambda: build_objective(rewards, dataclasses.replace(config, **every)),
        "one_reward": lambda: build_objective(rewards, dataclasses.replace(config, **clip_only)),
    }
    out = {v: built[v]() for v in variants}
    for v, objective in out.items():
        objective.speed = ours if v in ("all_rewards", "one_reward") else RewardSpeed.off()
        if v == "all_rewards_graphed":
            objective.speed = dataclasses.replace(ours, cuda_graphs=True)
    return out, eager_rewards


def missing_off(rewards: dict[str, Reward]) -> dict[str, float]:
    """λ = 0 for the rewards of the setting that are not there (CPU presets; a reward that failed)."""
    return {field: 0.0 for name, field in REWARD_WEIGHTS.items() if name not in rewards}


def probe(rewards: dict[str, Reward], size: int, device: torch.device) -> dict[str, str]:
    """Score one image with each reward (no graph); a reward that fails is dropped with its reason, so the
    rest is still measured (e.g. a transformers version the personalized reward does not run on)."""
    failed = {}
    image = torch.full((1, 3, size, size), 0.5, device=device)
    for name in list(rewards):
        try:
            text = [reward_text(TITLES[0], "a poster")] if name == "personalized" else ["a poster"]
            rewards[name].score(image, text, [PROFILES[0]], grad=False)
        except Exception as exc:
            failed[name] = fail(f"reward {name} (dropped from every variant)", exc, device)
            del rewards[name]
    return failed


def storages(module: nn.Module, device: torch.device) -> dict[int, int]:
    """data pointer → bytes of every storage on `device` behind the module's parameters and buffers."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.device == device]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def others_bytes(variants: dict[str, WeightedRewards], device: torch.device) -> dict[str, int]:
    """Per variant: bytes of the reward weights on `device` only the other variants hold (untouched)."""
    held = {v: storages(o, device) for v, o in variants.items()}
    out = {}
    for v in variants:
        rest = {ptr: n for w, h in held.items() if w != v for ptr, n in h.items() if ptr not in held[v]}
        out[v] = sum(rest.values())
    return out


def prepare(pipe, data: AdapterData, variants: dict[str, WeightedRewards], config, accelerator, cache: Path):
    """Set up as `_train` does (frozen modules, dtypes, checkpointing, item features, AdamW, `prepare`; each
    `AdapterStep` applies its objective's speed options and warms its text caches) → (step(variant, batch,
    round), steps, trainable parameter count, seconds each AdapterStep took to build)."""
    from icg.adapter.attention import get_adapter_layers
    from icg.training.adapter_step import AdapterStep

    device = accelerator.device
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.context_encoder, pipe.user_encoder,
                   *variants.values()):  # fmt: skip
        if module is not None:
            module.requires_grad_(False).eval()
    trainable = TrainableAdapter(get_adapter_layers(pipe.unet), pipe.projector)
    pipe.to(device)
    for objective in variants.values():
        objective.to(device)
    precision = config.mixed_precision
    if precision != "no" and device.type == "cuda":  # frozen weights in the compute dtype
        for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
            frozen.to(DTYPES[precision])
    trainable.float().requires_grad_(True).train()
    pipe.unet.enable_gradient_checkpointing()
    pipe.vae.enable_gradient_checkpointing()  # as `_train` does: the decode of x̂0 holds most of the memory
    feats = item_features(pipe, data, cache, config.max_prompt_tokens)
    if precision == "fp16":  # random fp16 weights may overflow in the VAE; keeps the timing runnable
        pipe.vae.decoder.register_forward_hook(lambda m, i, out: torch.nan_to_num(out, 0.0, 1.0, -1.0))
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    module, optimizer = accelerator.prepare(trainable, optimizer)
    steps, build_s = {}, {}
    for v, objective in list(variants.items()):
        sync(device)
        start = time.perf_counter()
        try:
            steps[v] = AdapterStep(pipe, data, feats, objective, config, device, None)
        except Exception as exc:  # e.g. warming the text caches: the variant is dropped, the run goes on
            fail(f"{v}: AdapterStep set-up (variant dropped)", exc, device)
            del variants[v]
            continue
        sync(device)
        build_s[v] = time.perf_counter() - start
    stream = SampleStream(len(data), config.seed)

    def train_step(variant: str, batch: int, round_: int) -> None:
        """One optimizer step, as `_train`'s micro-step; round r takes samples r·B … and stop draw r."""
        first = round_ * batch
        rows = stream.take(first, batch)
        try:
            result = module(lambda: steps[variant](rows, first, round_))
            accelerator.backward(result["loss"])
            accelerator.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
        finally:  # a failed step leaves no gradient behind for the next variant
            optimizer.zero_grad(set_to_none=True)

    return train_step, steps, sum(p.numel() for p in trainable.parameters()), build_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fail(what: str, exc: BaseException, device: torch.device) -> str:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    print(f"FAIL {what}: {reason}", flush=True)
    logging.debug("%s", traceback.format_exc())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return reason


def measure(
    train_step: Callable[[str, int, int], None],
    variants: list[str],
    batches: list[int],
    warmup: int,
    repeats: int,
    device: torch.device,
    other: dict[str, int],
    deadline: float,
) -> dict[str, Any]:
    """Interleaved rounds per batch size (order rotating); per variant wall/CPU stats and peak memory.
    Rounds stop early (and say so) when the next one would pass `deadline`."""
    from pipeline_cpu import stats

    memory, results, failures = PeakMemory(device), {}, {}
    for batch in batches:
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        peaks: dict[str, list[tuple[int, int]]] = {v: [] for v in variants}
        alive, round_s = list(variants), 0.0
        for r in range(warmup + repeats):
            if r > warmup and time.perf_counter() + round_s > deadline:
                print(f"batch {batch}: stopped after {r - warmup} timed rounds (time budget)", flush=True)
                break
            started = time.perf_counter()
            for variant in alive[r % len(alive) :] + alive[: r % len(alive)]:
                base = memory.start()
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    train_step(variant, batch, r)
                    peak = memory.peak()
                except Exception as exc:  # one configuration failing must not end the run
                    failures[f"{variant}_b{batch}"] = fail(f"{variant} batch {batch}", exc, device)
                    alive.remove(variant)
                    continue
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if r >= warmup:
                    samples[variant].append((wall, cpu))
                    peaks[variant].append((peak - other[variant], peak - base))
            round_s = time.perf_counter() - started
            if not alive:
                break
        for variant in variants:
            if not samples[variant]:
                continue
            entry = stats(samples[variant])
            entry["peak_mib"] = max(p for p, _ in peaks[variant]) / 2**20
            entry["step_growth_mib"] = max(g for _, g in peaks[variant]) / 2**20
            entry["wall_s"], entry["cpu_s"] = ([round(x[k], 4) for x in samples[variant]] for k in (0, 1))
            results[f"{variant}_b{batch}"] = entry
    results["memory"] = memory.label + "; minus the other variants' resident reward weights"
    if device.type == "cuda":  # CUDA-graph pools are reserved, never 'allocated': this line shows them
        results["memory"] += f"; reserved at the end {torch.cuda.memory_reserved(device) / 2**30:.1f} GiB"
    results["failures"] = failures
    return results


def report(results: dict[str, Any], variants: list[str], batches: list[int], names: dict, cpu_side: bool):
    """Print the table and the verdicts; → overheads vs (a), judged on median CPU time (CPU) or wall (GPU)."""
    from pipeline_cpu import verdict

    key, unit, scale = ("cpu_median_s", "MiB", 1) if cpu_side else ("median_s", "GiB", 1 / 1024)
    print(f"\noverhead judged on the median {'process CPU time' if cpu_side else 'wall time'} per step")
    print(f"memory: {results['memory']}; growth = peak − in use before the call\n")
    cpu_col, cpu_align = (" CPU s/step |", "---:|") if cpu_side else ("", "")
    print(
        f"| variant | batch | s/step (median wall) |{cpu_col} peak {unit} | growth {unit} | vs (a) | paired |"
    )
    print(f"|---|---:|---:|{cpu_align}---:|---:|---:|---:|")
    overheads: dict[str, float] = {}
    raw = "cpu_s" if cpu_side else "wall_s"
    for batch in batches:
        for variant in variants:
            base = results.get(f"no_reward_b{batch}")
            if variant == "all_rewards_graphed":  # measured after the rest, beside its own (a) rounds
                base = results.get(f"no_reward_for_g_b{batch}")
            r = results.get(f"{variant}_b{batch}")
            if r is None:
                print(
                    f"| {names[variant]} | {batch} | FAIL: {results['failures'].get(f'{variant}_b{batch}')} |"
                )
                continue
            vs = paired = "baseline" if variant == "no_reward" else "–"
            if base is not None and variant != "no_reward":
                over = r[key] / base[key] - 1
                n = min(len(r[raw]), len(base[raw]))  # same rounds: paired ratios
                pair = statistics.median(t / b for t, b in zip(r[raw][:n], base[raw][:n], strict=True)) - 1
                overheads[f"{variant}_b{batch}"], overheads[f"{variant}_b{batch}_paired"] = over, pair
                vs, paired = f"{over:+.1%}", f"{pair:+.1%}"
            cpu_cell = f" {r['cpu_median_s']:.3f} |" if cpu_side else ""
            print(
                f"| {names[variant]} | {batch} | {r['median_s']:.3f} |{cpu_cell} "
                f"{r['peak_mib'] * scale:.1f} | {r['step_growth_mib'] * scale:.1f} | {vs} | {paired} |"
            )
    print()
    for batch in batches:
        over, pair = overheads.get(f"all_rewards_b{batch}"), overheads.get(f"all_rewards_b{batch}_paired")
        if over is not None:
            before = overheads.get(f"all_rewards_eager_b{batch}")
            print(
                f"batch {batch}: all rewards, ours {over:+.1%} (per-round {pair:+.1%}); target ≤ "
                f"+{TARGET_OVERHEAD:.0%}: {verdict(max(over, pair) <= TARGET_OVERHEAD)}; eager in this run "
                f"{'–' if before is None else f'{before:+.1%}'}"
                + (
                    ""
                    if cpu_side
                    else f" (issue 20, H200: eager {ISSUE_20.get(f'all_rewards_b{batch}', 0):+.1%})"
                )
                + f"; the paper +{PAPER_OVERHEAD:.0%}"
            )
        over, pair = (overheads.get(f"all_rewards_graphed_b{batch}{k}") for k in ("", "_paired"))
        if over is not None:
            print(
                f"batch {batch}: all rewards, ours + CUDA graphs {over:+.1%} (per-round {pair:+.1%}); "
                f"target ≤ +{TARGET_OVERHEAD:.0%}: {verdict(max(over, pair) <= TARGET_OVERHEAD)}"
            )
    peak = results.get(f"all_rewards_b{max(batches)}", {}).get("peak_mib")
    if peak is not None and not cpu_side:
        gib = peak / 1024
        eager = results.get(f"all_rewards_eager_b{max(batches)}", {}).get("peak_mib", float("nan")) / 1024
        print(
            f"peak memory, batch {max(batches)}, all rewards: ours {gib:.1f} GiB, eager {eager:.1f} GiB; "
            f"target ≤ {TARGET_PEAK_GIB:.0f} GiB: {verdict(gib <= TARGET_PEAK_GIB)} (issue 20, eager: "
            f"{ISSUE_20['peak_b4_gib']} GiB)"
        )
    return overheads


def reward_inputs(step, batch: int):
    """Texts per reward and profiles of the first `batch` samples, as the step builds them."""
    rows = torch.arange(batch) % len(step.data)
    items = step.data.samples[rows, 1].tolist()
    return step.reward_inputs(rows, [step.feats.prompts[i] for i in items])


def reward_part(
    steps: dict, variants: dict[str, WeightedRewards], rewards: dict, eager_rewards: dict, config,
    accelerator, batches: list[int], size: int, repeats: int, deadline: float,
) -> dict[str, Any]:  # fmt: skip
    """The reward part alone on fixed images (B, 3, size, size): objective forward + backward to the
    images, eager vs ours and ours with each option off in turn (ms, median of `repeats`); then ours and
    eager-under-autocast minus the eager fp32 scores (no autocast) per reward."""
    device = accelerator.device
    ours, eager = variants.get("all_rewards"), variants.get("all_rewards_eager")
    if ours is None or eager is None:
        return {}
    every_config = dataclasses.replace(config, **missing_off(rewards))
    configs: dict[str, WeightedRewards] = {"eager": eager, "ours": ours}
    for option in ("tower_dtype", *OPTIONS):
        off = {option: "fp32" if option == "tower_dtype" else False}
        objective = build_objective(eager_rewards if option == "tower_dtype" else rewards, every_config)
        objective.speed = dataclasses.replace(ours.active_speed, **off)
        configs[f"ours without {option}"] = objective
    out: dict[str, Any] = {"ms": {}, "score_gap": {}}
    step = steps["all_rewards"]
    for batch in batches:
        texts, profiles = reward_inputs(step, batch)
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
        for name, objective in configs.items():
            if time.perf_counter() > deadline:
                print(f"reward part: stopped before {name} b{batch} (time budget)")
                break
            try:
                if name.startswith("ours without"):
                    objective.optimize(device)
                    objective.warm_text_caches(texts, profiles)  # a no-op unless caches are on and cold
                times = []
                for r in range(1 + repeats):
                    x = images.clone().requires_grad_(True)
                    sync(device)
                    start = time.perf_counter()
                    with accelerator.autocast():
                        total = objective(x, texts, profiles).total
                    total.backward()
                    sync(device)
                    if r:
                        times.append(time.perf_counter() - start)
                out["ms"][f"{name}_b{batch}"] = 1e3 * statistics.median(times)
            except Exception as exc:
                out["ms"][f"{name}_b{batch}"] = f"FAIL {fail(f'reward part {name} b{batch}', exc, device)}"
            finally:
                if name.startswith("ours without"):  # the shared reward modules back to ours / eager
                    ours.optimize(device)
                    eager.optimize(device)
                    steps["all_rewards"].warm_reward_texts()
        with torch.no_grad():
            for name in ours.rewards:
                try:
                    reference = eager.rewards[name].score(images, texts[name], profiles)
                    with accelerator.autocast():
                        autocast = eager.rewards[name].score(images, texts[name], profiles)
                        fast = ours.rewards[name].score(images, texts[name], profiles)
                    unit = 1.0  # PickScore: logits = logit_scale · cosine; gaps in cosine units
                    if name == "pickscore":
                        unit = float(eager.rewards[name].encoder.logit_scale.float().exp())
                    out["score_gap"][f"{name}_b{batch}"] = {
                        "ours_minus_fp32": float((fast - reference).abs().max()) / unit,
                        "eager_autocast_minus_fp32": float((autocast - reference).abs().max()) / unit,
                        "fp32_score_mean": float(reference.mean()) / unit,
                    }
                except Exception as exc:
                    out["score_gap"][f"{name}_b{batch}"] = f"FAIL {fail(f'score check {name}', exc, device)}"
    print("\nreward part alone (objective forward + backward to the images, fixed images), median ms:")
    names = list(configs)
    print("| batch | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for batch in batches:
        cells = [out["ms"].get(f"{n}_b{batch}", "–") for n in names]
        print(f"| {batch} | " + " | ".join(c if isinstance(c, str) else f"{c:.1f}" for c in cells) + " |")
    print(
        "\nscores, max |Δ| vs the eager fp32 path (no autocast); PickScore in cosine units (÷ logit_scale):"
    )
    for key, gap in out["score_gap"].items():
        if isinstance(gap, str):
            print(f"  {key}: {gap}")
        else:
            print(
                f"  {key}: ours {gap['ours_minus_fp32']:.2e}, eager under autocast "
                f"{gap['eager_autocast_minus_fp32']:.2e} (fp32 mean score {gap['fp32_score_mean']:.3g})"
            )
    return out


def profile(train_step: Callable[[str, int, int], None], batch: int, device: torch.device) -> str:
    """One step of (c) under torch.profiler: the top ops by self device time (CPU: self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        train_step("all_rewards", batch, 0)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=20)
    print(f"\nprofile of one step, all rewards (ours), batch {batch}, sorted by {key}:\n{table}")
    return table


def main() -> None:
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture, real reward architectures")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (also TINY=1)")
    parser.add_argument("--device", default=None, help="default: cuda with --gpu when available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="--gpu default bf16; else fp32")
    parser.add_argument(
        "--reward-dtype", choices=sorted(DTYPES), default=None, help="ours' towers (--gpu: bf16, else fp32)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=ALL_VARIANTS,
        default=None,
        help="default: (a), (e), (c); + (g) on CUDA",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=15, help="DDIM steps of the rollout")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 4; --tiny 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    parser.add_argument(
        "--budget-s", type=float, default=125.0, help="stop timing past this (s, after imports)"
    )
    parser.add_argument("--no-extras", action="store_true", help="skip the reward-part table and profile")
    parser.add_argument("--out", type=Path, help="JSON (default: $OUT/train_step.json if $OUT is set)")
    args = parser.parse_args()
    tiny = args.tiny or os.environ.get("TINY") == "1"
    logging.basicConfig(level=logging.WARNING)
    from accelerate import Accelerator
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from pipeline_cpu import machine_line

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    default_device = "cuda" if args.gpu and (torch.cuda.is_available() or not tiny) else "cpu"
    wanted = torch.device(args.device or default_device)
    if wanted.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; for a CPU check of the GPU path use TINY=1 --gpu")
    dtype = args.dtype or ("bf16" if args.gpu else "fp32")
    precision = "no" if dtype == "fp32" else dtype
    accelerator = Accelerator(mixed_precision=precision, cpu=wanted.type == "cpu")
    device = accelerator.device
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if tiny else 4)
    reward_dtype = args.reward_dtype or ("bf16" if args.gpu else "fp32")
    ours_speed = RewardSpeed.on(reward_dtype)  # = RewardSpeed().resolved("cuda") with bf16; forced on CPU
    wanted_names = args.variants or [
        *DEFAULT_VARIANTS,
        *(["all_rewards_graphed"] if device.type == "cuda" else []),
    ]
    variants_wanted = tuple(v for v in ALL_VARIANTS if v in wanted_names)
    import accelerate
    import open_clip

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    machine = (
        f"{machine_line(torch.get_num_threads())} | GPU: {gpu} (CUDA {torch.version.cuda}) | open_clip "
        f"{open_clip.__version__} accelerate {accelerate.__version__}"
    )
    print(machine, flush=True)
    deadline = t0 + args.budget_s

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        build = gpu_parts(tiny, device, tmp) if args.gpu else cpu_parts(tiny, tmp)
        pipe, rewards, data, prompt_tokens, label = build
        config = AdapterTrainConfig(
            num_inference_steps=args.steps, grad_steps=1, mixed_precision=precision,
            max_prompt_tokens=min(77, prompt_tokens), gradient_checkpointing=True,
        )  # fmt: skip
        dropped = probe(rewards, 64, device) if args.gpu else {}
        variants, eager_rewards = objectives(rewards, config, ours_speed, variants_wanted)
        train_step, steps, n_trainable, build_s = prepare(
            pipe, data, variants, config, accelerator, tmp / "ctx"
        )
        built_at = time.perf_counter() - t0
        print(f"built in {built_at:.1f} s; AdapterStep set-up per variant (s): "
              f"{json.dumps({k: round(v, 3) for k, v in build_s.items()})}", flush=True)  # fmt: skip
        other = others_bytes(variants, device)
        reserve = 0.0 if args.no_extras else (6.0 if tiny else 25.0)  # the reward part + profile
        names = list(variants)
        graphed = "all_rewards_graphed" in names  # measured last: a failed capture must not spoil the rest
        reserve_g = (20.0 if not tiny else 3.0) if graphed else 0.0
        main_names = [n for n in names if n != "all_rewards_graphed"]
        results = measure(
            train_step, main_names, args.batches, args.warmup, repeats, device, other,
            deadline - reserve - reserve_g,
        )  # fmt: skip
        extras: dict[str, Any] = {}
        if not args.no_extras:
            size = pipe.unet.config.sample_size * pipe.vae_scale_factor
            try:
                extras["reward_part"] = reward_part(
                    steps, variants, rewards, eager_rewards, config, accelerator, args.batches, size,
                    2 if tiny else 5, deadline - reserve_g,
                )  # fmt: skip
            except Exception as exc:
                extras["reward_part"] = f"FAIL {fail('reward part', exc, device)}"
            if "all_rewards" in variants and time.perf_counter() < deadline - reserve_g:
                try:
                    extras["profile"] = profile(train_step, max(args.batches), device)
                except Exception as exc:
                    extras["profile"] = f"FAIL {fail('profile', exc, device)}"
        if graphed:  # (g) beside its own no-reward rounds
            pair = [n for n in ("no_reward", "all_rewards_graphed") if n in names]
            late = measure(train_step, pair, args.batches, args.warmup, repeats, device, other, deadline)
            for key, value in late.items():
                if key.startswith("no_reward_b"):
                    results[f"no_reward_for_g_b{key.removeprefix('no_reward_b')}"] = value
                elif key.startswith("all_rewards_graphed_b"):
                    results[key] = value
            results["failures"] |= late["failures"]
        ours = variants.get("all_rewards", variants[names[0]])
        cached = {n: sum(len(c) for c in text_caches(r)) for n, r in ours.rewards.items()}

    setup = {
        "mode": label, "device": str(device), "dtype": dtype, "ours": dataclasses.asdict(ours_speed),
        "eager": dataclasses.asdict(RewardSpeed.off()),
        "resolution": pipe.unet.config.sample_size * pipe.vae_scale_factor,
        "ddim_steps": config.num_inference_steps, "grad_steps_K": config.grad_steps,
        "stop_window": config.stop_window, "guidance": config.guidance_scale,
        "gradient_checkpointing": True, "samples": len(data), "repeats": repeats, "warmup": args.warmup,
        "trainable_params_M": n_trainable / 1e6,
        "reward_params_M": {n: sum(p.numel() for p in r.parameters()) / 1e6 for n, r in rewards.items()},
        "other_variants_bytes_subtracted_GiB": {k: v / 2**30 for k, v in other.items()},
        "rewards_dropped": dropped, "adapter_step_setup_s": build_s, "text_features_cached": cached,
        "build_s": built_at,
        "load_avg": os.getloadavg()[0],
    }  # fmt: skip
    print("\nsetup:", json.dumps(setup))
    if not args.gpu:
        print(
            "note: the CPU presets have no HPSv2 / PickScore (no honest stand-in): (c) = personalized + CLIP"
        )
    every = " + ".join(variants["all_rewards"].rewards) if "all_rewards" in variants else ""
    names_map = {"no_reward": "(a) no reward", "one_reward": "(b) CLIP reward only, ours",
                 "all_rewards_graphed": "(g) all, ours + CUDA-graphed image towers (opt-in)",
                 "all_rewards_eager": f"(e) all, eager fp32: {every}",
                 "all_rewards": f"(c) all, ours: {every}"}  # fmt: skip
    overheads = report(results, names, args.batches, names_map, device.type == "cpu")
    wall = time.perf_counter() - t0
    print(f"total wall time {wall:.1f} s (budget {args.budget_s:.0f} s)")
    out = args.out or (Path(os.environ["OUT"]) / "train_step.json" if os.environ.get("OUT") else None)
    if out is not None:
        payload = {"machine": machine, "setup": setup, "results": results, "overheads": overheads,
                   "extras": extras, "wall_s": wall, "paper_overhead": PAPER_OVERHEAD,
                   "target_overhead": TARGET_OVERHEAD, "target_peak_gib": TARGET_PEAK_GIB,
                   "issue_20_before": ISSUE_20}  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
