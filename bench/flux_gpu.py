"""Benchmark (GPU): FluxCoverPipeline beside diffusers' FluxPipeline on the FLUX.1-dev architecture, one run.

FLUX.1-dev-architecture transformer (19 double + 38 single blocks, 3072 wide, guidance embedding), its VAE,
CLIP ViT-L/14 text tower and T5-XXL encoder, all with random weights (no checkpoint is loaded), bf16, 512² and
1024², `--steps` flow-matching steps (default 28), embedded guidance 3.5, batch sizes `--batches`. Timed, on
the same modules in the same process:
1. `diffusers_flux_pipeline`: `FluxPipeline` (prompt encoding + loop + decode), default processors.
2. `ours`: `FluxCoverPipeline` with the Flux dual path on every double-stream block (c_p of 8 tokens), the
   projector, a tiny random Qwen2.5-VL context encoder (its ContextCache pre-filled, so generation only) and a
   stand-in user tower (see bench/pipeline_gpu.py, whose helpers are reused here).
Both return tensors (output_type="pt"). Before timing, ours at adapter_scale=0 is compared with FluxPipeline
for the same prompt and seed. Prints covers/s, s/cover and peak GPU memory per phase; JSON to --out.

    python bench/flux_gpu.py --out flux_gpu.json           # on an H100/H200 (~36 GB of bf16 weights)
    TINY=1 python bench/flux_gpu.py --out /tmp/flux.json   # CPU smoke run with tiny configs (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from icg.adapter.flux import FluxDualPathAttnProcessor, install_flux_dual_path_adapter  # noqa: E402
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig  # noqa: E402
from icg.pipeline import CoverItem, CoverUser  # noqa: E402
from icg.pipeline_flux import FluxCoverPipeline, flux_pipeline_kwargs  # noqa: E402
from icg.speed import SpeedOptions, apply_speed_options  # noqa: E402
from icg.testing import BOS_TOKEN, EOS_TOKEN, tiny_clip_tokenizer, tiny_clip_vocab  # noqa: E402
from icg.testing_flux import tiny_flux_scheduler, tiny_t5_tokenizer  # noqa: E402
from pipeline_gpu import (  # noqa: E402
    StandInUserEncoder,
    Timer,
    context_encoder,
    reference_images,
    time_after_compile,
)

TINY = os.environ.get("TINY") == "1"
if TINY:
    TRANSFORMER = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                   "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                   "in_channels": 16, "axes_dims_rope": (4, 6, 6)}  # fmt: skip
    VAE = {
        "block_out_channels": (8, 16, 16, 16),
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
    }
    CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 512}
    SIZES, T5_TOKENS = (32, 64), 16
else:  # FLUX.1-dev's configs (transformer, vae, text_encoder, text_encoder_2)
    TRANSFORMER = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                   "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                   "in_channels": 64, "axes_dims_rope": (16, 56, 56)}  # fmt: skip
    VAE = {"block_out_channels": (128, 256, 512, 512), "latent_channels": 16, "layers_per_block": 2}
    CLIP = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
    T5 = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu"}  # fmt: skip
    SIZES, T5_TOKENS = (512, 1024), 512
CLIP_TOKENS = 77
USER_DIM = 64


def build_backbone(device: torch.device, dtype: torch.dtype, tmp: Path) -> dict[str, Any]:
    """FluxPipeline's components with random weights, created directly in `dtype` on `device`."""
    vocab, _ = tiny_clip_vocab()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # 12 B transformer parameters: never materialised in fp32
    try:
        torch.manual_seed(0)
        with torch.device(device):
            transformer = FluxTransformer2DModel(patch_size=1, guidance_embeds=True, **TRANSFORMER)
            vae = AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
                sample_size=SIZES[0], **VAE,
            )  # fmt: skip
            clip = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=len(vocab),
                    max_position_embeddings=CLIP_TOKENS,
                    bos_token_id=vocab[BOS_TOKEN],
                    eos_token_id=vocab[EOS_TOKEN],
                    pad_token_id=vocab[EOS_TOKEN],
                    hidden_act="quick_gelu",
                    **CLIP,
                )  # fmt: skip
            )
            t5 = T5EncoderModel(T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **T5))
    finally:
        torch.set_default_dtype(previous)
    parts = {
        "transformer": transformer, "vae": vae, "text_encoder": clip, "text_encoder_2": t5,
        "tokenizer": tiny_clip_tokenizer(tmp / "tokenizer", max_length=CLIP_TOKENS),
        "tokenizer_2": tiny_t5_tokenizer(tmp / "tokenizer_2", max_length=T5_TOKENS),
        "scheduler": tiny_flux_scheduler(),  # FLUX.1-dev's scheduler config
    }  # fmt: skip
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[name].to(device, dtype).requires_grad_(False).eval()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON results (default: $OUT/flux_gpu.json if $OUT is set)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4] if not TINY else [1, 2])
    parser.add_argument("--steps", type=int, default=28 if not TINY else 2)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads when there is no GPU")
    parser.add_argument("--no-speed", action="store_true", help="skip the row with icg.speed options")
    parser.add_argument("--compile-mode", default=SpeedOptions().compile_mode, help="torch.compile mode")
    parser.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (CPU checks)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    import diffusers
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.cpu_threads)
    machine = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "host": platform.node(), "tiny": TINY, "dtype": str(dtype), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    print("machine:", json.dumps(machine))

    items = [
        CoverItem(f"Movie {k}", im, item_id=str(k))
        for k, im in enumerate(reference_images(max(args.batches)))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_backbone(device, dtype, Path(tmp))
        contexts, context_label, prompts, context_s = context_encoder(Path(tmp) / "context", device, items)
    transformer = parts["transformer"]
    transformer_params = sum(p.numel() for p in transformer.parameters()) / 1e9
    plain_procs = dict(transformer.attn_processors)
    adapter = install_flux_dual_path_adapter(transformer, init=None)
    dual_procs = dict(transformer.attn_processors)
    projector = PersonalizedProjector(
        ProjectorConfig(context_dim=contexts.hidden_size, num_meta_tokens=1,
                        cross_attention_dim=TRANSFORMER["joint_attention_dim"], user_dim=USER_DIM)
    ).to(device, dtype)  # fmt: skip
    ours = FluxCoverPipeline(**parts, context_encoder=contexts, projector=projector.eval(),
                             user_encoder=StandInUserEncoder().to(device))  # fmt: skip
    baseline = FluxPipeline(**flux_pipeline_kwargs(ours))
    for pipe in (ours, baseline):
        pipe.set_progress_bar_config(disable=True)
    info = {
        "transformer_params_B": transformer_params,
        "adapter_params_M": sum(p.numel() for p in adapter.parameters()) / 1e6,
        "adapter_layers": sum(isinstance(p, FluxDualPathAttnProcessor) for p in dual_procs.values()),
        "t5_params_B": sum(p.numel() for p in parts["text_encoder_2"].parameters()) / 1e9,
        "context_encoder": context_label, "context_precompute_s_per_item": context_s,
        "user_encoder": "stand-in random user tower (embedding table, 64-d U_pre)",
        "personal_tokens": projector.config.num_tokens, "t5_tokens": T5_TOKENS, "steps": args.steps,
        "guidance": args.guidance, "output_type": "pt",
    }  # fmt: skip
    print("setup:", json.dumps(info))

    user = [CoverUser(user_id="3")]

    def gens(b: int) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(k) for k in range(b)]

    def common(size: int) -> dict[str, Any]:
        return {
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance,
            "height": size,
            "width": size,
        }

    # --- same covers check: ours at adapter_scale=0 vs diffusers, same prompt and seed ----------------------
    size0 = min(args.sizes)
    with torch.inference_mode():
        transformer.set_attn_processor(dict(dual_procs))
        mine = ours(items[:1], user, adapter_scale=0.0, output_type="pt", **common(size0)).images
        transformer.set_attn_processor(dict(plain_procs))
        theirs = baseline(
            prompts[:1], generator=gens(1), max_sequence_length=T5_TOKENS, output_type="pt", **common(size0)
        ).images
    diff = float((mine.float() - theirs.float()).abs().nan_to_num(0.0).max())
    info["max_abs_diff_vs_diffusers_at_scale0"] = diff
    print(f"ours(adapter_scale=0) vs FluxPipeline at {size0}², same prompt/seed: max |Δ| = {diff:.2e}")

    timer, results = Timer(device), {}
    print(f"\n{'phase':<26}{'size':>6}{'batch':>6}{'min s':>9}{'med s':>9}{'covers/s':>10}{'peak GiB':>10}")
    with torch.inference_mode():
        for size in sorted(args.sizes):
            for b in sorted(args.batches):
                phases = [
                    ("diffusers_flux_pipeline", plain_procs, lambda b=b, s=size: baseline(
                        prompts[:b], generator=gens(b), max_sequence_length=T5_TOKENS, output_type="pt",
                        **common(s),
                    )),
                    ("ours_generation_only", dual_procs,
                     lambda b=b, s=size: ours(items[:b], user, output_type="pt", **common(s))),
                ]  # fmt: skip
                for name, procs, fn in phases:
                    transformer.set_attn_processor(dict(procs))  # diffusers pops from the dict it is given
                    r = timer.run(fn, args.warmup, args.reps)
                    r["covers_per_s"], r["s_per_cover"] = b / r["min_s"], r["min_s"] / b
                    results[f"{name}_{size}_b{b}"] = r
                    print(
                        f"{name:<26}{size:>6}{b:>6}{r['min_s']:>9.3f}{r['median_s']:>9.3f}"
                        f"{r['covers_per_s']:>10.3f}{r['peak_gib']:>10.2f}"
                    )
                ratio = (
                    results[f"ours_generation_only_{size}_b{b}"]["min_s"]
                    / (results[f"diffusers_flux_pipeline_{size}_b{b}"]["min_s"])
                )
                results[f"ours_vs_diffusers_{size}_b{b}"] = ratio
                print(f"{'':<26}{size:>6}{b:>6}  ours / FluxPipeline time = {ratio:.3f}")
        if not args.no_speed:  # ours with icg.speed (what `icg generate/serve/batch` apply on CUDA), last
            transformer.set_attn_processor(dict(dual_procs))
            size, b = min(args.sizes), min(args.batches)
            eager = ours(items[:b], user, output_type="pt", **common(size)).images.float()
            speed = SpeedOptions(compile_mode=args.compile_mode, compile_backend=args.compile_backend)
            apply_speed_options(ours, speed)
            try:
                generate = lambda: ours(items[:b], user, output_type="pt", **common(size)).images  # noqa: E731
                r = time_after_compile(timer, generate, eager, b, 0, args.reps)
                first = r["first_call_s"]
                base = results[f"diffusers_flux_pipeline_{size}_b{b}"]["min_s"]
                r["vs_diffusers"] = r["min_s"] / base
                results[f"ours_fast_{size}_b{b}"] = r
                print(
                    f"{'ours_fast':<26}{size:>6}{b:>6}{r['min_s']:>9.3f}{r['median_s']:>9.3f}"
                    f"{r['covers_per_s']:>10.3f}{r['peak_gib']:>10.2f}  first call {first:.1f} s, "
                    f"max|Δ| {r['max_abs_diff_255']:.1f}/255, SSIM {r['ssim']:.4f} vs eager; "
                    f"ours fast / FluxPipeline time = {r['vs_diffusers']:.3f}"
                )
            except Exception as err:  # the benchmark reports and goes on
                results[f"ours_fast_{size}_b{b}"] = {"error": f"{type(err).__name__}: {err}"[:500]}
                print(f"ours_fast {size} b{b} FAILED {type(err).__name__}: {str(err)[:300]}")

    out = args.out or (Path(os.environ["OUT"]) / "flux_gpu.json" if os.environ.get("OUT") else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "setup": info, "results": results}
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
