"""Benchmark (CPU): CoverPipeline beside diffusers' StableDiffusionPipeline on the same weights, same run.

Both pipelines are loaded from one preset folder (default: the tiny preset, materialized into a temp dir):
the baseline gets the preset's backbone (UNet with diffusers' default attention processors, VAE, CLIP text
encoder, tokenizer, DDIM) loaded by the same `load_backbone`, ours the full preset (dual-path adapter,
projector, context encoder, user encoder). Same steps, guidance, resolution and per-cover seeds; the baseline
is given our explicit prompts as its text prompts.

Reported:
- context (MLLM) time per item: explicit-prompt generation + meta-token pass, run once per item;
- generation only: ours with every item's context already in the `ContextCache` (as a served catalogue has
  it) vs diffusers; the target is "never slower than diffusers";
- end to end: ours with no cache (context computed in the call), for reference (diffusers has no such stage);
- adapter overhead: the same UNet weights with default processors vs dual-path processors + personal tokens
  (UNet forward, and a whole anchor-style generation loop + VAE decode); target ≤ 5 %. `--sd15-latent 32`
  adds the SD1.5-architecture UNet forward (random weights, 256² px), where the widths are the real ones.
A correctness check comes first: ours at adapter_scale=0 must reproduce the diffusers covers exactly.
Repetitions are interleaved (ours, baseline, ours, …) after a warm-up. Each call records wall time and process
CPU time; min and median wall time are printed, and ratios/targets are judged on the minimum CPU time, which
other jobs on a shared machine disturb far less than wall time. One torch thread by default: on a busy 2-core
machine, 2 threads made single calls up to 50× slower (OpenMP threads waiting for a core).

    .venv/bin/python bench/pipeline_cpu.py [--preset-dir DIR] [--threads 1] [--reps 15] [--sd15-latent 32]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icg.adapter.attention import DualPathAttnProcessor, personalized_unet_inputs  # noqa: E402
from icg.context.cache import ContextCache  # noqa: E402
from icg.data.covers import render_cover  # noqa: E402
from icg.loading import load_backbone, load_cover_pipeline  # noqa: E402
from icg.pipeline import CoverItem, CoverPipeline, CoverUser  # noqa: E402
from icg.presets import PresetSpec, load_preset_folder  # noqa: E402

TITLES = (
    "Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Twelve Monkeys", "Babe",
    "Dead Man Walking", "Richard III", "Seven", "Usual Suspects", "Mighty Aphrodite", "Postino",
    "Antonia's Line", "Heat", "Sabrina",
)  # fmt: skip
GENRES = (("Animation",), ("Action",), ("Thriller",), ("Comedy",), ("Crime",), ("Sci-Fi",), ("Drama",))


def machine_line(threads: int) -> str:
    """CPU model, cores visible, torch threads, library versions and the load average right now."""
    import diffusers
    import transformers

    cpu = "?"
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{platform.node()} | {cpu} | {cores} cores visible | torch threads {threads} "
        f"(interop {torch.get_num_interop_threads()}) | Python {platform.python_version()} | "
        f"torch {torch.__version__} diffusers {diffusers.__version__} transformers {transformers.__version__}"
        f" | load avg {load}"
    )


Samples = list[tuple[float, float]]  # (wall s, process CPU s) per call


def clock(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time leaves out the time other jobs hold the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def timed(fns: dict[str, Callable[[], Any]], reps: int, warmup: int) -> dict[str, Samples]:
    """`warmup` untimed rounds, then `reps` timed rounds; the fns interleaved within each round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, Samples] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(clock(fn))
    return times


def stats(samples: Samples) -> dict[str, float]:
    wall, cpu = [w for w, _ in samples], [c for _, c in samples]
    return {
        "min_s": min(wall),
        "median_s": statistics.median(wall),
        "cpu_min_s": min(cpu),
        "cpu_median_s": statistics.median(cpu),
        "n": len(samples),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- setup --------------------------------------------------------------------------------------------------
def build(spec: PresetSpec) -> tuple[CoverPipeline, StableDiffusionPipeline]:
    """Ours through `load_cover_pipeline`; diffusers from the same backbone files with default processors."""
    ours = load_cover_pipeline(spec)
    unet, vae, text_encoder, tokenizer, scheduler = load_backbone(spec.base_model, spec.base_config)
    baseline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (ours, baseline):
        pipe.set_progress_bar_config(disable=True)
    return ours, baseline


def make_items(n: int, size: int) -> list[CoverItem]:
    return [
        CoverItem(
            TITLES[k % len(TITLES)],
            render_cover(str(k + 1), TITLES[k % len(TITLES)], GENRES[k % 7], size=size),
        )
        for k in range(n)
    ]


def describe(ours: CoverPipeline, baseline: StableDiffusionPipeline) -> dict[str, Any]:
    """Sizes of what is compared: UNet (without adapter), adapter, token counts, context encoder."""
    dual = [p for p in ours.unet.attn_processors.values() if isinstance(p, DualPathAttnProcessor)]
    return {
        "unet_params_M": sum(p.numel() for p in baseline.unet.parameters()) / 1e6,
        "adapter_params_M": sum(p.numel() for proc in dual for p in proc.parameters()) / 1e6,
        "cross_attention_layers": len(dual),
        "baseline_processors": sorted({type(p).__name__ for p in baseline.unet.attn_processors.values()}),
        "personal_tokens_with_user": ours.projector.config.num_tokens,
        "text_tokens": ours.tokenizer.model_max_length,
        "context_encoder_params_M": sum(p.numel() for p in ours.context_encoder.parameters()) / 1e6,
    }


# --- measurements -------------------------------------------------------------------------------------------
def check_equivalence(
    ours: CoverPipeline,
    baseline: StableDiffusionPipeline,
    items: list[CoverItem],
    users: list[CoverUser],
    prompts: list[str],
    common: dict[str, Any],
) -> float:
    """Max |Δ| between ours at adapter_scale=0 and diffusers (same prompts and seeds); 0.0 means identical."""
    mine = ours(items, users, adapter_scale=0.0, output_type="pt", **common).images
    generators = [torch.Generator("cpu").manual_seed(k) for k in range(len(items))]
    theirs = baseline(prompts, generator=generators, output_type="pt", **common).images
    return float((mine - theirs).abs().max())


def bench_context(ours: CoverPipeline, items: list[CoverItem], batches: list[int], reps: int) -> dict:
    """Seconds per item of `encode_items` (no cache): explicit prompt + meta-token pass."""
    encoder = ours.context_encoder
    out = {}
    for b in batches:
        images, titles = [i.image for i in items[:b]], [i.title for i in items[:b]]
        times = timed({"ctx": lambda i=images, t=titles: encoder.encode_items(i, t, cache=None)}, reps, 1)
        s = stats(times["ctx"])
        out[f"b{b}"] = {**s, "s_per_item_min": s["min_s"] / b, "s_per_item_median": s["median_s"] / b}
    return out


def bench_generation(
    ours: CoverPipeline,
    baseline: StableDiffusionPipeline,
    items: list[CoverItem],
    users: list[CoverUser],
    prompts: list[str],
    batch: int,
    common: dict[str, Any],
    reps: int,
    warmup: int,
) -> dict[str, Any]:
    """Generation only: ours with cached contexts vs diffusers; PIL output for both."""

    def run_ours() -> None:
        ours(items[:batch], users, **common)

    def run_ours_scale0() -> None:  # the personal path skipped: what our pipeline costs around the UNet
        ours(items[:batch], users, adapter_scale=0.0, **common)

    def run_baseline() -> None:
        generators = [torch.Generator("cpu").manual_seed(k) for k in range(batch)]
        baseline(prompts[:batch], generator=generators, **common)

    times = timed({"ours": run_ours, "ours_scale0": run_ours_scale0, "diffusers": run_baseline}, reps, warmup)
    return {name: stats(t) for name, t in times.items()}


def bench_end_to_end(
    ours: CoverPipeline, items: list[CoverItem], users: list[CoverUser], batch: int, common: dict, reps: int
) -> dict[str, float]:
    """Ours with the context encoder in the call (cache off)."""
    cache, ours.context_encoder.cache = ours.context_encoder.cache, None
    try:
        times = timed({"ours": lambda: ours(items[:batch], users, **common)}, reps, 1)
    finally:
        ours.context_encoder.cache = cache
    return stats(times["ours"])


def denoise_loop(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    scheduler_config: Any,
    noise: torch.Tensor,
    inputs: dict[str, Any],
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """The anchor's generation loop: a CFG pair per step, DDIM step, then VAE decode."""
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    lat = noise.clone()
    for t in sched.timesteps:
        eps = unet(torch.cat([lat, lat]), t, **inputs).sample
        uncond, cond = eps.chunk(2)
        lat = sched.step(uncond + guidance * (cond - uncond), t, lat).prev_sample
    return vae.decode(lat / vae.config.scaling_factor).sample


def bench_adapter(
    ours: CoverPipeline,
    baseline: StableDiffusionPipeline,
    batch: int,
    steps: int,
    guidance: float,
    reps: int,
    warmup: int,
) -> dict[str, Any]:
    """Same UNet weights: default processors (baseline's UNet) vs dual path + c_p (ours), forward and loop."""
    plain, dual = baseline.unet, ours.unet
    if not all(isinstance(p, AttnProcessor2_0) for p in plain.attn_processors.values()):
        raise SystemExit("baseline UNet does not use AttnProcessor2_0 everywhere; comparison would be unfair")
    cfg = plain.config
    width, tokens, latent = cfg.cross_attention_dim, ours.projector.config.num_tokens, cfg.sample_size
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(2 * batch, ours.tokenizer.model_max_length, width, generator=gen)
    personal = torch.randn(2 * batch, tokens, width, generator=gen)
    sample = torch.randn(2 * batch, cfg.in_channels, latent, latent, generator=gen)
    runs = {
        "plain": (plain, {"encoder_hidden_states": text}),
        "dual": (dual, personalized_unet_inputs(text, personal)),
    }
    sched = ours.scheduler.config
    with torch.inference_mode():
        fwd = timed(
            {k: lambda u=u, i=i: u(sample, 500, **i) for k, (u, i) in runs.items()}, reps * 4, warmup + 2
        )
        loop = timed(
            {
                k: lambda u=u, i=i: denoise_loop(u, ours.vae, sched, sample[:batch], i, steps, guidance)
                for k, (u, i) in runs.items()
            },
            reps,
            warmup,
        )
    return {
        "unet_forward": {k: stats(v) for k, v in fwd.items()},
        "generation_loop": {k: stats(v) for k, v in loop.items()},
    }


SD15_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}  # the SD1.5 UNet architecture, as in ../shared/anchors/sd15_arch_bench.py


def bench_sd15_adapter(latent: int, tokens: int, reps: int) -> dict[str, Any]:
    """UNet forward of the SD1.5 architecture (random weights, fp32) with default vs dual-path processors.

    One UNet, processors swapped between runs (not timed), so both paths use the very same weights; CFG pair
    (batch 2), 77 text tokens, `tokens` personal tokens, `latent`² latents.
    """
    from diffusers import UNet2DConditionModel

    from icg.adapter.attention import install_dual_path_adapter

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=latent, **SD15_UNET).eval()
    params = sum(p.numel() for p in unet.parameters()) / 1e6  # without the adapter
    plain_procs = dict(unet.attn_processors)
    install_dual_path_adapter(unet, init="text")
    dual_procs = dict(unet.attn_processors)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, latent, latent, generator=gen)
    text = torch.randn(2, 77, 768, generator=gen)
    inputs = {
        "plain": (plain_procs, {"encoder_hidden_states": text}),
        "dual": (dual_procs, personalized_unet_inputs(text, torch.randn(2, tokens, 768, generator=gen))),
    }
    times: dict[str, Samples] = {"plain": [], "dual": []}
    with torch.inference_mode():
        for rep in range(reps + 1):  # round 0 is the warm-up
            for name, (procs, kwargs) in inputs.items():
                unet.set_attn_processor(dict(procs))  # diffusers pops from the dict it is given
                took = clock(lambda k=kwargs: unet(sample, 500, **k))
                if rep:
                    times[name].append(took)
    entry: dict[str, Any] = {k: stats(v) for k, v in times.items()}
    entry["params_M"] = params
    return entry


def overhead(entry: dict[str, dict[str, float]], key: str = "cpu_min_s") -> float:
    return entry["dual"][key] / entry["plain"][key] - 1.0


# --- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset-dir", type=Path, help="preset folder with preset.json (default: tiny)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared machine)"
    )
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--e2e-reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--sd15-latent",
        type=int,
        default=0,
        help="also time the SD1.5-architecture UNet forward (random weights) at this latent size, e.g. 32",
    )
    parser.add_argument("--sd15-reps", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    diffusers_logging.set_verbosity_error()  # the CLIP truncation notice for the tiny model's long prompts
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        if args.preset_dir is None:
            from icg.testing import materialize_tiny_preset

            folder = materialize_tiny_preset(Path(tmp) / "tiny")
        else:
            folder = args.preset_dir
        spec = load_preset_folder(folder)
        ours, baseline = build(spec)

    machine = machine_line(torch.get_num_threads())
    print(f"machine: {machine}")
    info = describe(ours, baseline)
    size = ours.unet.config.sample_size * ours.vae_scale_factor
    print(
        f"preset: {spec.name} ({folder if args.preset_dir else 'tiny, temp dir'}) | {size}x{size} px | "
        f"{args.steps} DDIM steps | CFG {args.guidance} | {json.dumps(info)}"
    )
    batches = sorted(args.batches)
    items = make_items(max(batches), size=64)
    users = [CoverUser(user_id="1")] if ours.user_encoder is not None else None
    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": size,
        "width": size,
    }
    result: dict[str, Any] = {"machine": machine, "preset": spec.name, "threads": torch.get_num_threads()}
    result.update(steps=args.steps, guidance=args.guidance, resolution=size, info=info)

    # context once per item (also fills the cache used by "generation only")
    result["context"] = bench_context(ours, items, batches, reps=max(1, args.e2e_reps))
    ours.context_encoder.cache = ContextCache()
    prompts, _ = ours.context_encoder.encode_items([i.image for i in items], [i.title for i in items])
    for b, entry in result["context"].items():
        print(
            f"context encoder {b}: {entry['s_per_item_min']:.3f} s/item (wall min), "
            f"{entry['s_per_item_median']:.3f} (median), {entry['cpu_min_s'] / int(b[1:]):.3f} (CPU min)"
        )

    diff = check_equivalence(ours, baseline, items[:2], users, prompts[:2], common)
    result["max_abs_diff_vs_diffusers_at_scale0"] = diff
    print(f"ours(adapter_scale=0) vs diffusers, same prompts and seeds: max |Δ| = {diff:.2e}")

    print(
        f"\n{'s per call (wall, CPU)':<28}{'batch':>6}{'min':>8}{'median':>8}{'CPU min':>9}"
        f"{'covers/s':>10}{'(CPU)':>8}"
    )
    result["generation"] = {}
    for b in batches:
        gen = bench_generation(ours, baseline, items, users, prompts, b, common, args.reps, args.warmup)
        gen["ours_end_to_end"] = bench_end_to_end(ours, items, users, b, common, args.e2e_reps)
        for name, label in (
            ("diffusers", "diffusers SD pipeline"),
            ("ours", "ours, generation only"),
            ("ours_scale0", "  same, adapter_scale=0"),
            ("ours_end_to_end", "ours, end to end (+MLLM)"),
        ):
            s = gen[name]
            s["covers_per_s"], s["s_per_cover"] = b / s["min_s"], s["min_s"] / b
            s["covers_per_cpu_s"] = b / s["cpu_min_s"]
            print(
                f"{label:<28}{b:>6}{s['min_s']:>8.3f}{s['median_s']:>8.3f}{s['cpu_min_s']:>9.3f}"
                f"{s['covers_per_s']:>10.2f}{s['covers_per_cpu_s']:>8.2f}"
            )
        for key in ("cpu_min_s", "min_s", "median_s"):
            gen[f"ratio_{key}"] = gen["ours"][key] / gen["diffusers"][key]
        gen["ratio_scale0_cpu_min_s"] = gen["ours_scale0"]["cpu_min_s"] / gen["diffusers"]["cpu_min_s"]
        result["generation"][f"b{b}"] = gen

    result["adapter"] = {
        f"b{b}": bench_adapter(ours, baseline, b, args.steps, args.guidance, args.reps, args.warmup)
        for b in batches
    }
    print(
        f"\nadapter overhead, same UNet weights, {info['personal_tokens_with_user']} personal tokens, "
        "CFG pairs"
    )
    print(f"{'CPU s':<22}{'batch':>6}{'plain min':>11}{'dual min':>10}{'overhead':>10}{'wall min':>10}")
    for b in batches:
        entry = result["adapter"][f"b{b}"]
        for key, label in (("unet_forward", "UNet forward"), ("generation_loop", "loop + VAE decode")):
            e = entry[key]
            e["overhead_cpu_min"], e["overhead_wall_min"] = overhead(e), overhead(e, "min_s")
            print(
                f"{label:<22}{b:>6}{e['plain']['cpu_min_s']:>11.4f}{e['dual']['cpu_min_s']:>10.4f}"
                f"{e['overhead_cpu_min']:>10.1%}{e['overhead_wall_min']:>10.1%}"
            )

    if args.sd15_latent:
        tokens = info["personal_tokens_with_user"]
        e = bench_sd15_adapter(args.sd15_latent, tokens, args.sd15_reps)
        e["overhead_cpu_min"], e["overhead_wall_min"] = overhead(e), overhead(e, "min_s")
        result["adapter_sd15_arch"] = {**e, "latent": args.sd15_latent, "personal_tokens": tokens}
        px = args.sd15_latent * 8
        print(
            f"{'UNet fwd, SD1.5 arch':<22}{1:>6}"
            f"{e['plain']['cpu_min_s']:>11.4f}{e['dual']['cpu_min_s']:>10.4f}"
            f"{e['overhead_cpu_min']:>10.1%}{e['overhead_wall_min']:>10.1%}   ({e['params_M']:.0f} M params, "
            f"{px}x{px} px, 77 text tokens)"
        )

    print("\ntargets (judged on the minimum process CPU time; wall-clock min in brackets):")
    targets = {}
    for b in batches:
        g = result["generation"][f"b{b}"]
        ratio = g["ratio_cpu_min_s"]
        targets[f"not_slower_b{b}"] = ratio <= 1.0
        print(
            f"  never slower than diffusers (generation only), batch {b}: ours/diffusers = {ratio:.3f} "
            f"[{g['ratio_min_s']:.3f}]; at adapter_scale=0 {g['ratio_scale0_cpu_min_s']:.3f} → "
            f"{verdict(ratio <= 1.0)}"
        )
    for b in batches:
        e = result["adapter"][f"b{b}"]["generation_loop"]
        ok = e["overhead_cpu_min"] <= 0.05
        targets[f"adapter_overhead_b{b}"] = ok
        print(
            f"  adapter overhead ≤ 5 % (whole generation), batch {b}: {e['overhead_cpu_min']:+.1%} "
            f"[{e['overhead_wall_min']:+.1%}] → {verdict(ok)}"
        )
    if "adapter_sd15_arch" in result:
        e = result["adapter_sd15_arch"]
        ok = e["overhead_cpu_min"] <= 0.05
        targets["adapter_overhead_sd15_unet_forward"] = ok
        print(
            f"  adapter overhead ≤ 5 % (SD1.5-arch UNet forward, {e['latent'] * 8}² px): "
            f"{e['overhead_cpu_min']:+.1%} [{e['overhead_wall_min']:+.1%}] → {verdict(ok)}"
        )
    result["targets"] = targets
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load avg at the end: {load} (other jobs on this machine disturb the medians)")
    result["load_avg_end"] = load
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()
