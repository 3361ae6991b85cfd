"""Benchmark (GPU): the MLLM stage's prefill, Qwen2.5-VL-7B architecture at random weights, items/s.

Input per item, as in `../shared/anchors/qwen25vl_arch_prefill.py`: one 448² image (32×32 patches of 14 →
256 merged visual tokens) + 64 text tokens, bf16 on a GPU (fp32 on CPU). Rows, same process, same tensors:
  baseline   the anchor's call: `model(**inputs, output_hidden_states=True)` — every layer's hidden states
             and the LM head's logits over every position;
  ours       the call `ContextEncoder.forward` makes for C_ref: `model.model(..., use_cache=False)` →
             the last hidden state only (meta-token rows are gathered from it), no logits;
  ours+compile  the same under `torch.compile` (GPU only; `--no-compile` skips it).
The target of the scale issue is ≥ 100 items/s at batch 16 on an H100/H200 (the anchor: 36.9/s eager).
TINY=1 runs a 2-layer model on CPU to check the script.

    python bench/mllm_gpu.py [--batches 1 16] [--reps 3] [--no-compile] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

TINY = os.environ.get("TINY") == "1"
TEXT_TOKENS, GRID = 64, 32  # 448² image → 32×32 patches → 256 merged tokens


def config() -> Qwen2_5_VLConfig:
    """The anchor's Qwen2.5-VL-7B shapes (or a 2-layer stand-in with TINY=1)."""
    if TINY:
        text = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        }
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "out_hidden_size": 64, "fullatt_block_indexes": [1]}  # fmt: skip
    else:
        text = {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        }
        vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                  "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]}  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text | {"vocab_size": 152064}, vision_config=vision)


def inputs(cfg: Qwen2_5_VLConfig, batch: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    n_image = GRID * GRID // 4
    ids = torch.randint(0, 150000, (batch, TEXT_TOKENS + n_image), device=device)
    ids[:, 8 : 8 + n_image] = cfg.image_token_id
    pixels = torch.randn(batch * GRID * GRID, 3 * 2 * 14 * 14, device=device, dtype=dtype)
    grid = torch.tensor([[1, GRID, GRID]] * batch, device=device)
    return {
        "input_ids": ids,
        "pixel_values": pixels,
        "image_grid_thw": grid,
        "attention_mask": torch.ones_like(ids),
    }


def best_seconds(fn: Callable[[], object], reps: int, device: str) -> float:
    """Minimum wall time of `reps` calls after one warm-up call."""
    times = []
    for i in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def profile(fn: Callable[[], object], device: str, top: int = 15) -> list[dict[str, object]]:
    """Where one call's device time goes: the `top` kernels by total time (torch.profiler), printed."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    total = sum(getattr(e, key) for e in prof.key_averages()) or 1.0
    rows = [{"name": e.key[:90], "ms": round(getattr(e, key) / 1e3, 3),
             "share": round(getattr(e, key) / total, 4), "calls": e.count} for e in events]  # fmt: skip
    print(f"profile ({key}), top {top}:")
    for r in rows:
        print(f"  {r['ms']:>9.3f} ms {r['share']:>7.1%} {r['calls']:>6}×  {r['name']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2] if TINY else [1, 16])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="top kernels of `ours` at the largest batch")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = config()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'CPU'} (CPU)"
    result: dict[str, object] = {
        "machine": machine, "torch": torch.__version__, "dtype": str(dtype), "tiny": TINY,
        "attn_implementation": model.config._attn_implementation,
        "params_B": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), "rows": {},
    }  # fmt: skip
    decoder = model.model
    compiled = None if args.no_compile or device != "cuda" else torch.compile(decoder)
    with torch.inference_mode():
        for batch in args.batches:
            x = inputs(cfg, batch, device, dtype)
            rows = {
                "baseline": lambda x=x: model(**x, output_hidden_states=True),
                "ours": lambda x=x: decoder(**x, use_cache=False).last_hidden_state,
            }
            if compiled is not None:
                rows["ours+compile"] = lambda x=x: compiled(**x, use_cache=False).last_hidden_state
            for name, fn in rows.items():
                seconds = best_seconds(fn, args.reps, device)
                result["rows"][f"{name}/b{batch}"] = {"seconds": round(seconds, 4),
                                                      "items_per_s": round(batch / seconds, 2)}  # fmt: skip
                print(
                    f"{name:>13} batch {batch:>2}: {seconds:.4f} s, {batch / seconds:.2f} items/s", flush=True
                )
            if device == "cuda":
                result[f"peak_memory_GiB/b{batch}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if args.profile and batch == max(args.batches):
                result[f"profile/b{batch}"] = profile(rows["ours"], device)
    print("FINAL", json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
