"""Benchmark: one adapter-training step (paper §3.4.2) with and without the reward models, same run.

What the paper's multi-reward supervision costs on top of the rest of reward-feedback training (paper: +20 %
training cost; our target: ≤ 10 %). Each variant is one optimizer step of the library's own step
(`icg.training.adapter_step.AdapterStep` in `TrainableAdapter`, an `Accelerator` and AdamW on the adapter +
projector, gradient clipping, as `train_adapter` runs it): the no-grad DDIM rollout to the stop step (drawn
from the last `stop_window` steps), K = 1 step with gradients (UNet gradient checkpointing on), VAE decode of
x̂0, the loss, backward, AdamW step. Only the objective differs:
  (a) no reward: a zero-cost stand-in reward (the image mean, no model) — everything but the reward models;
  (b) one reward: the CLIP reconstruction reward only (λ_rec);
  (c) all rewards: every reward of the setting, λ = 0.25 each. GPU: HPSv2 (open_clip ViT-H-14) + PickScore
      (CLIP ViT-H/14) + CLIP (ViT-L/14) + personalized (PersonalizedRewardModel on a CLIP ViT-L/14), real
      architectures at random weights. CPU mini: personalized + CLIP only (the mini has no HPSv2/PickScore).
Rounds are interleaved (a warm-up round, then `--repeats` rounds, the variant order rotating each round); a
round's variants get the same samples, noise and stop step. Reported per variant and batch: median s/step
(wall; on CPU also process CPU time, which other jobs on a shared machine disturb less), peak memory and the
overhead (b)/(a) − 1, (c)/(a) − 1 of the medians, beside the median of the per-round paired ratios (the
target counts as met only when both are within it); the JSON keeps every call's time. Memory: GPU
`torch.cuda.max_memory_allocated` after a reset, with only the variant's reward models on the GPU (the others
are parked on the CPU between calls, outside the timing, as a run without them would not load them); CPU:
peak RSS of the call (see `PeakMemory`; where /proc/self/clear_refs is refused, ru_maxrss, a process-lifetime
peak, and the output says so).

Modes:
- default (CPU): the shipped mini preset (`load_cover_pipeline`, rewards by `load_reward`), samples of 4
  ml-100k users (`prepare_adapter_data`), 64², fp32, 1 torch thread (`--threads`);
- `--tiny`: the tiny preset with tiny random CLIP / personalized rewards: a seconds-long smoke run;
- `--gpu`: SD1.5 architecture at random weights (bench/pipeline_gpu.py's configs, tiny random Qwen2.5-VL
  context encoder, stand-in user tower), 512², `--dtype bf16|fp16` autocast with the frozen modules in that
  dtype (as `train_adapter` does on CUDA), rewards as loaded by `train_adapter_from_preset` (fp32 weights;
  `--reward-dtype` to change); `--gpu --tiny --device cpu` runs that code path with tiny sizes on CPU.

    .venv/bin/python bench/train_step.py [--tiny] [--batches 1 4] [--repeats 5] [--threads 1] [--out F]
    python bench/train_step.py --gpu [--dtype bf16|fp16] [--reward-dtype fp32|bf16|fp16] --out $OUT/x.json
    .venv/bin/python bench/train_step.py --gpu --tiny --device cpu       # CPU check of the GPU path
JSON goes to --out (default $OUT/train_step.json when $OUT is set).
"""

from __future__ import annotations

import argparse
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

from icg.rewards import Reward, RewardLoss, RewardTerm, WeightedRewards, load_reward  # noqa: E402
from icg.training.adapter import AdapterTrainConfig, TrainableAdapter, _build_objective  # noqa: E402
from icg.training.adapter_data import AdapterData, SampleStream, item_features  # noqa: E402

VARIANTS = ("no_reward", "one_reward", "all_rewards")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAPER_OVERHEAD, TARGET_OVERHEAD = 0.20, 0.10
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
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    label = (
        f"SD1.5 architecture{' (TINY configs)' if tiny else ''}, random weights ({n_unet:.0f} M-param UNet); "
        f"rewards {'tiny' if tiny else 'HPSv2 ViT-H-14, PickScore ViT-H/14, CLIP + personalized on ViT-L/14'}"
    )
    return pipe, rewards, random_data(4, ["1", "2", "3", "4"]), sd.TEXT_TOKENS, label


def objectives(rewards: dict[str, Reward], config: AdapterTrainConfig) -> dict[str, WeightedRewards]:
    """(a) the image mean, (b) CLIP only, (c) every reward given; λ from the config (0.25 each)."""
    clip_only = {"lambda_hps": 0.0, "lambda_per": 0.0, "lambda_pick": 0.0}
    every = {f: 0.0 for n, f in (("hpsv2", "lambda_hps"), ("pickscore", "lambda_pick")) if n not in rewards}
    return {
        "no_reward": WeightedRewards({"no_reward": RewardTerm(ImageMean(), 1.0, RewardLoss())}),
        "one_reward": _build_objective(rewards, dataclasses.replace(config, **clip_only)),
        "all_rewards": _build_objective(rewards, dataclasses.replace(config, **every)),
    }


def prepare(
    pipe,
    data: AdapterData,
    variants: dict[str, WeightedRewards],
    config: AdapterTrainConfig,
    accelerator,
    reward_dtype: torch.dtype,
    cache: Path,
) -> tuple[Callable[[str, int, int], None], int]:
    """Set up as `_train` does (frozen modules, dtypes, checkpointing, item features, AdamW, `prepare`);
    → (step(variant, batch, round), trainable parameter count)."""
    from icg.adapter.attention import get_adapter_layers
    from icg.training.adapter_step import AdapterStep

    device = accelerator.device
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.context_encoder, pipe.user_encoder,
                   *variants.values()):  # fmt: skip
        if module is not None:
            module.requires_grad_(False).eval()
    for objective in variants.values():
        objective.to(dtype=reward_dtype)
    trainable = TrainableAdapter(get_adapter_layers(pipe.unet), pipe.projector)
    pipe.to(device)
    precision = config.mixed_precision
    if precision != "no" and device.type == "cuda":  # frozen weights in the compute dtype
        for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
            frozen.to(DTYPES[precision])
    trainable.float().requires_grad_(True).train()
    pipe.unet.enable_gradient_checkpointing()
    feats = item_features(pipe, data, cache, config.max_prompt_tokens)
    if precision == "fp16":  # random fp16 weights may overflow in the VAE; keeps the timing runnable
        pipe.vae.decoder.register_forward_hook(lambda m, i, out: torch.nan_to_num(out, 0.0, 1.0, -1.0))
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    module, optimizer = accelerator.prepare(trainable, optimizer)
    steps = {v: AdapterStep(pipe, data, feats, objective, config, device, None)
             for v, objective in variants.items()}  # fmt: skip
    stream = SampleStream(len(data), config.seed)

    def train_step(variant: str, batch: int, round_: int) -> None:
        """One optimizer step, as `_train`'s micro-step; round r takes samples r·B … and stop draw r."""
        first = round_ * batch
        rows = stream.take(first, batch)
        result = module(lambda: steps[variant](rows, first, round_))
        accelerator.backward(result["loss"])
        accelerator.clip_grad_norm_(module.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step, sum(p.numel() for p in trainable.parameters())


def measure(
    train_step: Callable[[str, int, int], None],
    variants: dict[str, WeightedRewards],
    batches: list[int],
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, dict]:
    """Interleaved rounds per batch size (order rotating); per variant wall/CPU stats and peak memory."""
    from pipeline_cpu import stats

    memory, parked, results = PeakMemory(device), torch.device("cpu"), {}
    if device.type == "cuda":  # reward models wait on the CPU; each variant brings its own
        for objective in variants.values():
            objective.to(parked)
    for batch in batches:
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        peaks: dict[str, list[tuple[int, int]]] = {v: [] for v in VARIANTS}
        for r in range(warmup + repeats):
            for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                variants[variant].to(device)
                base = memory.start()
                wall, cpu = time.perf_counter(), time.process_time()
                train_step(variant, batch, r)
                peak = memory.peak()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if device.type == "cuda":
                    variants[variant].to(parked)
                if r >= warmup:
                    samples[variant].append((wall, cpu))
                    peaks[variant].append((peak, peak - base))
        for variant in VARIANTS:
            entry = stats(samples[variant])
            entry["peak_mib"] = max(p for p, _ in peaks[variant]) / 2**20
            entry["step_growth_mib"] = max(g for _, g in peaks[variant]) / 2**20
            entry["wall_s"], entry["cpu_s"] = ([round(x[k], 4) for x in samples[variant]] for k in (0, 1))
            results[f"{variant}_b{batch}"] = entry
    results["memory"] = memory.label
    return results


def report(results: dict[str, dict], batches: list[int], names: dict[str, str], cpu_side: bool) -> dict:
    """Print the table and the verdicts; → overheads vs (a), judged on median CPU time (CPU) or wall (GPU)."""
    from pipeline_cpu import verdict

    key, unit, scale = ("cpu_median_s", "MiB", 1) if cpu_side else ("median_s", "GiB", 1 / 1024)
    print(f"overhead judged on the median {'process CPU time' if cpu_side else 'wall time'} per step")
    print(f"memory: {results['memory']}; growth = peak − in use before the call\n")
    cpu_col, cpu_align = (" CPU s/step |", "---:|") if cpu_side else ("", "")
    print(f"| variant | batch | s/step (median wall) |{cpu_col} peak {unit} | growth {unit} | vs (a) |")
    print(f"|---|---:|---:|{cpu_align}---:|---:|---:|")
    overheads: dict[str, float] = {}
    for batch in batches:
        base = results[f"no_reward_b{batch}"][key]
        for variant in VARIANTS:
            r = results[f"{variant}_b{batch}"]
            over = r[key] / base - 1
            if variant != "no_reward":
                overheads[f"{variant}_b{batch}"] = over
            cpu_cell = f" {r['cpu_median_s']:.3f} |" if cpu_side else ""
            peak, growth = r["peak_mib"] * scale, r["step_growth_mib"] * scale
            vs = "baseline" if variant == "no_reward" else f"{over:+.1%}"
            print(
                f"| {names[variant]} | {batch} | {r['median_s']:.3f} |{cpu_cell} {peak:.1f} | "
                f"{growth:.1f} | {vs} |"
            )
    print()
    raw = "cpu_s" if cpu_side else "wall_s"
    for batch in batches:
        base = results[f"no_reward_b{batch}"][raw]
        for variant in VARIANTS[1:]:  # same samples, noise and stop step within a round: paired ratios
            ratios = [t / b for t, b in zip(results[f"{variant}_b{batch}"][raw], base, strict=True)]
            overheads[f"{variant}_b{batch}_paired"] = statistics.median(ratios) - 1
        over, paired = overheads[f"all_rewards_b{batch}"], overheads[f"all_rewards_b{batch}_paired"]
        print(
            f"batch {batch}: all rewards {over:+.1%} (median of per-round ratios {paired:+.1%}; target ≤ "
            f"+{TARGET_OVERHEAD:.0%}: {verdict(max(over, paired) <= TARGET_OVERHEAD)}; the paper reports "
            f"+{PAPER_OVERHEAD:.0%}), CLIP reward only {overheads[f'one_reward_b{batch}']:+.1%} "
            f"(per-round {overheads[f'one_reward_b{batch}_paired']:+.1%})"
        )
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD1.5 architecture, real reward architectures")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (smoke run; with --gpu: its code path)"
    )
    parser.add_argument("--device", default=None, help="default: cuda with --gpu, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="--gpu default bf16; else fp32")
    parser.add_argument("--reward-dtype", choices=sorted(DTYPES), default="fp32", help="reward weights")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=15, help="DDIM steps of the rollout")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --tiny 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: $OUT/train_step.json if $OUT is set)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from accelerate import Accelerator
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from pipeline_cpu import machine_line

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    wanted = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    if wanted.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; for a CPU check of the GPU path use --gpu --tiny --device cpu")
    dtype = args.dtype or ("bf16" if args.gpu else "fp32")
    precision = "no" if dtype == "fp32" else dtype
    accelerator = Accelerator(mixed_precision=precision, cpu=wanted.type == "cpu")
    device = accelerator.device
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.tiny else 5)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    machine = f"{machine_line(torch.get_num_threads())} | GPU: {gpu_name}"
    print(machine)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        build = gpu_parts(args.tiny, device, tmp) if args.gpu else cpu_parts(args.tiny, tmp)
        pipe, rewards, data, prompt_tokens, label = build
        config = AdapterTrainConfig(
            num_inference_steps=args.steps, grad_steps=1, mixed_precision=precision,
            max_prompt_tokens=min(77, prompt_tokens), gradient_checkpointing=True,
        )  # fmt: skip
        variants = objectives(rewards, config)
        reward_dtype = DTYPES[args.reward_dtype]
        train_step, n_trainable = prepare(
            pipe, data, variants, config, accelerator, reward_dtype, tmp / "ctx"
        )
        results = measure(train_step, variants, args.batches, args.warmup, repeats, device)

    setup = {
        "mode": label, "device": str(device), "dtype": dtype, "reward_dtype": args.reward_dtype,
        "resolution": pipe.unet.config.sample_size * pipe.vae_scale_factor,
        "ddim_steps": config.num_inference_steps, "grad_steps_K": config.grad_steps,
        "stop_window": config.stop_window, "guidance": config.guidance_scale,
        "gradient_checkpointing": True, "samples": len(data), "repeats": repeats, "warmup": args.warmup,
        "trainable_params_M": n_trainable / 1e6,
        "reward_params_M": {n: sum(p.numel() for p in r.parameters()) / 1e6 for n, r in rewards.items()},
        "load_avg": os.getloadavg()[0],
    }  # fmt: skip
    print("setup:", json.dumps(setup))
    if not args.gpu:
        print(
            "note: the CPU presets have no HPSv2 / PickScore (no honest stand-in): (c) = personalized + CLIP"
        )
    names = {"no_reward": "(a) no reward", "one_reward": "(b) CLIP reward only",
             "all_rewards": f"(c) all: {' + '.join(variants['all_rewards'].rewards)}"}  # fmt: skip
    overheads = report(results, args.batches, names, device.type == "cpu")
    out = args.out or (Path(os.environ["OUT"]) / "train_step.json" if os.environ.get("OUT") else None)
    if out is not None:
        payload = {"machine": machine, "setup": setup, "results": results, "overheads": overheads,
                   "paper_overhead": PAPER_OVERHEAD, "target_overhead": TARGET_OVERHEAD}  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
