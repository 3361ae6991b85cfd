"""Benchmark (GPU): CoverPipeline beside plain diffusers on the SD1.5 architecture, one process, one GPU.

SD1.5-architecture UNet, VAE and CLIP text encoder with random weights (configs of
../shared/anchors/sd15_arch_bench.py), fp16, 512², 15 DDIM steps, CFG 7, batch 1 and 16. Timed in one run:
1. `anchor loop`: the anchor's baseline loop, replicated here (the anchor file runs at import and is not in
   the repo): random text context, CFG pair per step, DDIM step, VAE decode; default attention processors.
2. `anchor loop + dual path`: the same loop and UNet with our dual-path processors and 8 personal tokens.
3. `diffusers SD pipeline`: `StableDiffusionPipeline` on the same modules (text encoding + loop + decode).
4. `ours`: `CoverPipeline` on the same modules + dual-path adapter + projector + a tiny random Qwen2.5-VL
   context encoder and a stand-in user tower (the real Qwen2.5-VL-7B and trained towers are not available).
   Item contexts are precomputed in the `ContextCache` (computed once per item, as in serving), so this is
   generation only. The UNet is shared; processors are swapped between phases.
Both pipelines return tensors (output_type="pt"), so PIL conversion is outside the timing for both.
Prints covers/s, s/cover, peak GPU memory (torch.cuda.max_memory_allocated) per phase; JSON to --out
(default $OUT/pipeline_gpu.json when $OUT is set).

    python bench/pipeline_gpu.py --out result.json        # on an H100/H200
    TINY=1 python bench/pipeline_gpu.py                   # CPU smoke run with tiny configs (seconds)
Imports only torch, diffusers, transformers and icg (src/ is put on sys.path).
"""

from __future__ import annotations

import argparse
import dataclasses
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

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icg.adapter.attention import (  # noqa: E402
    DualPathAttnProcessor,
    install_dual_path_adapter,
    personalized_unet_inputs,
)
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig  # noqa: E402
from icg.modules import DeviceDtypeMixin  # noqa: E402
from icg.pipeline import CoverItem, CoverPipeline, CoverUser  # noqa: E402
from icg.speed import SpeedOptions, apply_speed_options  # noqa: E402
from icg.testing import (  # noqa: E402  (SD1.5's DDIM config, not tiny-specific)
    BOS_TOKEN,
    EOS_TOKEN,
    tiny_clip_tokenizer,
    tiny_clip_vocab,
    tiny_scheduler,
)

TINY = os.environ.get("TINY") == "1"
ANCHOR_PUBLISHED = {
    "source": "../shared/DESIGN.md (anchors/sd15_arch_bench.py on an H200; published, NOT measured here)",
    "b16_covers_per_s": 9.7,
    "b1_s_per_cover": 0.38,
    "floor_ms_per_cover": 34,
}
if TINY:  # the anchor's TINY configs
    UNET = {
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "attention_head_dim": 8,
    }
    VAE = {
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
        "layers_per_block": 1,
    }
    TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
else:  # SD1.5: UNet and VAE as in the anchor, text encoder = CLIP ViT-L/14 text tower
    UNET = {
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    }
    VAE = {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "sample_size": 512,
    }
    TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
TEXT_TOKENS = 77
USER_DIM = 64  # output width of the two-tower user encoder's default config


class StandInUserEncoder(DeviceDtypeMixin, torch.nn.Module):
    """A random user tower with the pipeline's `encode_users` contract: id → U_pre (B, USER_DIM)."""

    def __init__(self, num_users: int = 32, dim: int = USER_DIM) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(num_users, dim)

    def encode_users(self, user_ids: list, profiles: list, strict: bool = True) -> torch.Tensor:
        index = torch.tensor([int(u) % self.table.num_embeddings for u in user_ids], device=self.device)
        return self.table(index)


class StandInContextEncoder(DeviceDtypeMixin, torch.nn.Module):
    """Used only when icg.context cannot be imported (it needs torchvision): fixed prompts, random C_ref."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.hidden_size = dim
        self.meta = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.cache = None

    def encode_items(self, images: list, titles: list[str]) -> tuple[list[str], torch.Tensor]:
        prompts = [f"a cinematic movie poster for {t}, dramatic lighting" for t in titles]
        return prompts, self.meta.detach().expand(len(titles), 1, -1).float()


def context_encoder(
    folder: Path, device: torch.device, items: list[CoverItem]
) -> tuple[torch.nn.Module, str, list[str], float]:
    """The real ContextEncoder on a tiny random Qwen2.5-VL with its ContextCache filled for `items`.

    Falls back to the stand-in when that cannot run here (e.g. no torchvision, an older transformers): the
    timed phases read cached contexts either way. Returns (encoder, label, explicit prompts, s per item).
    """
    images, titles = [i.image for i in items], [i.title for i in items]
    try:
        from icg.context import ContextCache, ContextEncoder, build_tiny_context_encoder

        build_tiny_context_encoder(folder, seed=0)
        encoder = ContextEncoder.from_pretrained(folder, num_meta_tokens=1, local_files_only=True).to(device)
        encoder.cache = ContextCache()
        n = sum(p.numel() for p in encoder.parameters()) / 1e6
        label = f"ContextEncoder, tiny random Qwen2.5-VL ({n:.2f} M params) + ContextCache"
    except Exception as err:  # any failure here only changes the (untimed) context source
        encoder, label = StandInContextEncoder().to(device), f"stand-in ({type(err).__name__}: {err})"
    start = time.perf_counter()
    prompts, _ = encoder.encode_items(images, titles)  # fills the cache; not part of the timed phases
    return encoder, label, prompts, (time.perf_counter() - start) / len(items)


def text_encoder(vocab_size: int, bos: int, eos: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408 if not TINY else vocab_size,
        max_position_embeddings=TEXT_TOKENS,
        hidden_act="quick_gelu",
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        **TEXT,
    )
    return CLIPTextModel(config)


def reference_images(n: int) -> list:
    """Random 64² RGB reference covers (the tiny Qwen2.5-VL turns each into 4 image tokens)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def image_agreement(fast: torch.Tensor, eager: torch.Tensor) -> dict[str, float]:
    """max |Δ| on the 0–255 scale and SSIM (torchmetrics) of two (B, 3, H, W) batches in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    fast, eager = fast.nan_to_num(0.0).clamp(0, 1), eager.nan_to_num(0.0).clamp(0, 1)
    diff = float((fast - eager).abs().max()) * 255
    return {"max_abs_diff_255": diff, "ssim": float(ssim(fast, eager, data_range=1.0))}


def time_after_compile(
    timer: Timer,
    generate: Callable[[], torch.Tensor],
    eager: torch.Tensor,
    batch: int,
    warmup: int,
    reps: int,
) -> dict[str, float]:
    """Time `generate` (→ covers (B, 3, H, W)) whose first call compiles: that call's seconds, the timed
    calls, and the covers' agreement with the `eager` ones."""
    start = time.perf_counter()
    fast = generate().float()
    timer.sync()
    first = time.perf_counter() - start  # compile + CUDA-graph capture of this shape
    r = timer.run(generate, warmup, reps)
    r |= {"covers_per_s": batch / r["min_s"], "s_per_cover": r["min_s"] / batch, "first_call_s": first}
    return r | image_agreement(fast, eager)


class Timer:
    """Wall time per call with device synchronisation; peak allocated memory per phase."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, fn: Callable[[], Any], warmup: int, reps: int) -> dict[str, float]:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        return {"min_s": min(times), "median_s": statistics.median(times), "n": reps, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: $OUT/pipeline_gpu.json if $OUT is set)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2 if TINY else 3)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads when there is no GPU")
    parser.add_argument("--compile-mode", default=SpeedOptions().compile_mode, help="torch.compile mode")
    parser.add_argument("--no-compile", action="store_true", help="speed options without torch.compile")
    parser.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (CPU checks)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    import diffusers
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.cpu_threads)  # the smoke run: one thread is steadier on a shared machine
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)"
    machine = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "tiny": TINY,
        "dtype": str(dtype),
        "torch_threads": torch.get_num_threads(),
    }
    print("machine:", json.dumps(machine))
    print("anchor, published (NOT measured in this run):", json.dumps(ANCHOR_PUBLISHED))

    # --- components: one UNet / VAE / text encoder shared by every phase ---------------------------------
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET).to(dtype).eval()
        vae = AutoencoderKL(**VAE).to(dtype).eval()
    vocab, _ = tiny_clip_vocab()
    images = reference_images(max(args.batches))
    items = [CoverItem(f"Movie {k}", im, item_id=str(k)) for k, im in enumerate(images)]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_clip_tokenizer(Path(tmp) / "tokenizer", max_length=TEXT_TOKENS)
        contexts, context_label, prompts, context_s = context_encoder(Path(tmp) / "context", device, items)
    text = text_encoder(len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN]).to(device, dtype).eval()
    unet_params = sum(p.numel() for p in unet.parameters()) / 1e6  # before the adapter is added
    plain_procs = dict(unet.attn_processors)
    install_dual_path_adapter(unet, init="text")
    dual_procs = dict(unet.attn_processors)
    projector = PersonalizedProjector(
        ProjectorConfig(
            context_dim=contexts.hidden_size,
            num_meta_tokens=1,
            cross_attention_dim=UNET["cross_attention_dim"],
            user_dim=USER_DIM,
        )
    ).to(device, dtype)
    users = StandInUserEncoder().to(device)
    n_tokens = projector.config.num_tokens
    ours = CoverPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        context_encoder=contexts,
        projector=projector.eval(),
        user_encoder=users,
    )
    baseline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (ours, baseline):
        pipe.set_progress_bar_config(disable=True)
    size = UNET["sample_size"] * ours.vae_scale_factor
    info = {
        "unet_params_M": unet_params,
        "adapter_params_M": sum(
            p.numel()
            for m in dual_procs.values()
            if isinstance(m, DualPathAttnProcessor)
            for p in m.parameters()
        )
        / 1e6,
        "vae_params_M": sum(p.numel() for p in vae.parameters()) / 1e6,
        "text_encoder_params_M": sum(p.numel() for p in text.parameters()) / 1e6,
        "context_encoder": context_label,
        "context_precompute_s_per_item": context_s,
        "user_encoder": "stand-in random user tower (embedding table, 64-d U_pre)",
        "personal_tokens": n_tokens,
        "resolution": size,
        "steps": args.steps,
        "guidance": args.guidance,
        "output_type": "pt",
    }
    print("setup:", json.dumps(info))

    user = [CoverUser(user_id="3")]
    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": size,
        "width": size,
    }

    def gens(b: int) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(k) for k in range(b)]

    # --- same covers check: ours at adapter_scale=0 vs diffusers, same prompts and seeds -----------------
    with torch.inference_mode():
        unet.set_attn_processor(dict(dual_procs))
        mine = ours(items[:1], user, adapter_scale=0.0, output_type="pt", **common).images
        unet.set_attn_processor(dict(plain_procs))
        theirs = baseline(prompts[:1], generator=gens(1), output_type="pt", **common).images
    same = bool(torch.isclose(mine, theirs, rtol=0, atol=0, equal_nan=True).all())  # random fp16 VAE: NaN ok
    diff = float((mine.float() - theirs.float()).abs().nan_to_num(0.0).max())
    info["identical_to_diffusers_at_scale0"], info["max_abs_diff_vs_diffusers_at_scale0"] = same, diff
    print(f"ours(adapter_scale=0) vs diffusers, same prompts/seeds: identical={same}, max |Δ| = {diff:.2e}")

    # --- phases --------------------------------------------------------------------------------------------
    anchor_sched = DDIMScheduler(  # the anchor's own scheduler construction
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    timer = Timer(device)
    width = UNET["cross_attention_dim"]
    latent = UNET["sample_size"]
    results: dict[str, Any] = {}

    def anchor_loop(b: int, personal: bool) -> Callable[[], Any]:
        ctx = torch.randn(2 * b, TEXT_TOKENS, width, device=device, dtype=dtype)
        tokens = torch.randn(2 * b, n_tokens, width, device=device, dtype=dtype) if personal else None
        inputs = personalized_unet_inputs(ctx, tokens)

        def once() -> torch.Tensor:
            anchor_sched.set_timesteps(args.steps)
            lat = torch.randn(b, 4, latent, latent, device=device, dtype=dtype)
            for t in anchor_sched.timesteps:
                eps = unet(torch.cat([lat, lat]), t, **inputs).sample
                u, c = eps.chunk(2)
                lat = anchor_sched.step(u + args.guidance * (c - u), t, lat).prev_sample
            return vae.decode(lat / vae.config.scaling_factor).sample

        return once

    phases: list[tuple[str, dict, Callable[[int], Callable[[], Any]]]] = [
        ("anchor_loop", plain_procs, lambda b: anchor_loop(b, False)),
        ("anchor_loop_dual_path", dual_procs, lambda b: anchor_loop(b, True)),
        (
            "diffusers_sd_pipeline",
            plain_procs,
            lambda b: lambda: baseline(prompts[:b], generator=gens(b), output_type="pt", **common),
        ),
        (
            "ours_generation_only",
            dual_procs,
            lambda b: lambda: ours(items[:b], user, output_type="pt", **common),
        ),
    ]
    print(
        f"\n{'phase':<26}{'batch':>6}{'min s':>9}{'med s':>9}{'covers/s':>10}{'s/cover':>9}{'peak GiB':>10}"
    )
    with torch.inference_mode():
        for b in sorted(args.batches):
            for name, procs, make in phases:
                unet.set_attn_processor(dict(procs))  # diffusers pops from the dict it is given
                r = timer.run(make(b), args.warmup, args.reps)
                r["covers_per_s"], r["s_per_cover"] = b / r["min_s"], r["min_s"] / b
                results[f"{name}_b{b}"] = r
                print(
                    f"{name:<26}{b:>6}{r['min_s']:>9.3f}{r['median_s']:>9.3f}{r['covers_per_s']:>10.2f}"
                    f"{r['s_per_cover']:>9.3f}{r['peak_gib']:>10.2f}"
                )
        # --- ours with the speed options (icg.speed: what `icg generate/serve/batch` apply on CUDA) -------
        unet.set_attn_processor(dict(dual_procs))
        reference = {
            b: ours(items[:b], user, output_type="pt", **common).images.float() for b in args.batches
        }
        speed = (
            SpeedOptions(compile_mode=args.compile_mode, compile_backend=args.compile_backend)
            if not args.no_compile
            else SpeedOptions(compile=False)
        )
        apply_speed_options(ours, speed)
        for b in sorted(args.batches):
            name = "ours_fast"
            try:
                generate = lambda b=b: ours(items[:b], user, output_type="pt", **common).images  # noqa: E731
                r = time_after_compile(timer, generate, reference[b], b, 1, args.reps)
                first = r["first_call_s"]
                results[f"{name}_b{b}"] = r
                print(
                    f"{name:<26}{b:>6}{r['min_s']:>9.3f}{r['median_s']:>9.3f}{r['covers_per_s']:>10.2f}"
                    f"{r['s_per_cover']:>9.3f}{r['peak_gib']:>10.2f}   first call {first:.1f} s, "
                    f"max|Δ| {r['max_abs_diff_255']:.1f}/255, SSIM {r['ssim']:.4f} vs eager"
                )
            except Exception as err:  # the benchmark reports and goes on
                results[f"{name}_b{b}"] = {"error": f"{type(err).__name__}: {err}"[:500]}
                print(f"{name:<26}{b:>6}  FAILED {type(err).__name__}: {str(err)[:300]}")
        results["speed_options"] = dataclasses.asdict(speed)
    print()
    for b in sorted(args.batches):
        fast_s = results.get(f"ours_fast_b{b}", {}).get("min_s")
        if fast_s is not None:
            sd = results[f"diffusers_sd_pipeline_b{b}"]["min_s"]
            print(f"batch {b}: ours with speed options / diffusers pipeline = {fast_s / sd:.3f} "
                  f"({sd / fast_s:.2f}× faster)")  # fmt: skip
        ours_s = results[f"ours_generation_only_b{b}"]["min_s"]
        sd = results[f"diffusers_sd_pipeline_b{b}"]["min_s"]
        loop = results[f"anchor_loop_b{b}"]["min_s"]
        dual = results[f"anchor_loop_dual_path_b{b}"]["min_s"]
        ratios = {
            "ours_vs_diffusers": ours_s / sd,
            "ours_vs_anchor_loop": ours_s / loop,
            "adapter_overhead": dual / loop - 1,
        }
        results[f"ratios_b{b}"] = ratios
        print(
            f"batch {b}: ours/diffusers pipeline = {ratios['ours_vs_diffusers']:.3f}, ours/anchor loop = "
            f"{ratios['ours_vs_anchor_loop']:.3f}, "
            f"dual-path overhead in the anchor loop = {ratios['adapter_overhead']:+.1%}"
        )
    print(
        "anchor's published figures (H200, not measured here): "
        f"{ANCHOR_PUBLISHED['b16_covers_per_s']} covers/s at batch 16, "
        f"{ANCHOR_PUBLISHED['b1_s_per_cover']} s at batch 1"
    )

    out = args.out or (Path(os.environ["OUT"]) / "pipeline_gpu.json" if os.environ.get("OUT") else None)
    if out is not None:
        payload = {
            "machine": machine,
            "setup": info,
            "anchor_published": ANCHOR_PUBLISHED,
            "results": results,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
