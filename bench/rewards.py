"""Benchmark: reward scoring throughput (images/s) — ours beside the official-style scoring path, same run.

Ours: `Reward.score` on a (B, 3, H, W) tensor already on the device (as the VAE decoder gives it), batched,
resizing/normalisation as tensor ops; timed without a graph (`grad=False`) and as forward + backward to the
images (what reward-feedback training pays). Baseline, the same weights and dtype, the way each official
script scores: tensor → PIL images, the library's PIL preprocessing, then
- HPSv2 (`hpsv2.score`): reload the checkpoint file once per call (torch.load + load_state_dict), then one
  image at a time;
- PickScore (its README) and CLIP similarity: CLIPProcessor on the PIL list, one batched forward;
- aesthetic (`simple_inference.py`): one image at a time.
Models are random, built in memory (throughput does not depend on the weights). Sizes:
- default (CPU): the tiny test models — 32² input, width 32, 1 layer; resize from 64² images;
- `--gpu`: the real architectures at 224², fp16 on CUDA: HPSv2 = open_clip ViT-H-14, PickScore = transformers
  CLIP ViT-H/14, CLIP and aesthetic = CLIP ViT-L/14; input images 512² (SD1.5 output) resized inside.
  `--gpu --tiny --device cpu` runs that code path (fp16, same steps) on CPU with the tiny models;
  `--gpu --device cpu --dtype fp32 --batches 1` the real sizes on CPU (slow, ~10 GB RAM).
CPU timings use 1 torch thread by default (`--threads`): on a small shared VM, multi-threaded timings of
tiny ops are dominated by other processes.

    .venv/bin/python bench/rewards.py [--gpu] [--tiny] [--device cpu|cuda] [--dtype fp16|bf16|fp32]
                                      [--batches 1 32] [--min-time 2] [--threads 1] [--no-baseline]
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

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icg.rewards import (  # noqa: E402
    AestheticHead,
    AestheticReward,
    CLIPSimilarityReward,
    HPSv2Reward,
    PickScoreReward,
    Reward,
)
from icg.rewards.clip_score import CLIPEncoder, image_spec_from_processor  # noqa: E402
from icg.testing import BOS_TOKEN, EOS_TOKEN, tiny_clip_tokenizer, tiny_clip_vocab  # noqa: E402

PROMPT = "a movie poster of a cartoon cat in a city at night, bright neon colors"
# (vision width, layers, heads, mlp), (text width, layers, heads, mlp), projection, quick_gelu
VIT_L = ((1024, 24, 16, 4096), (768, 12, 12, 3072), 768, "quick_gelu")
VIT_H = ((1280, 32, 16, 5120), (1024, 24, 16, 4096), 1024, "gelu")
TINY = ((32, 1, 2, 64), (32, 1, 2, 64), 24, "quick_gelu")
TINY_OPEN_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def machine_line(device: torch.device) -> str:
    info = Path("/proc/cpuinfo")
    cpu = "?"
    if info.is_file():
        lines = info.read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return (
        f"{platform.node()} | {cpu} | {cores} cores visible | torch threads {torch.get_num_threads()} | "
        f"GPU: {gpu} | torch {torch.__version__} open_clip {open_clip.__version__} | Python "
        f"{platform.python_version()}"
    )


def hf_clip(arch: tuple, size: int, patch: int, seed: int) -> tuple[CLIPModel, CLIPProcessor]:
    """A random transformers CLIPModel of the given size and a processor (tiny BPE tokenizer, 77 tokens)."""
    (vw, vl, vh, vm), (tw, tl, th, tm), proj, act = arch
    vocab, _ = tiny_clip_vocab()
    ids = dict(bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN])
    text = dict(vocab_size=49408, hidden_size=tw, num_hidden_layers=tl, num_attention_heads=th)
    text |= dict(intermediate_size=tm, max_position_embeddings=77, hidden_act=act, **ids)
    vision = dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh, intermediate_size=vm)
    vision |= dict(image_size=size, patch_size=patch, hidden_act=act)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_clip_tokenizer(tmp, max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return model, CLIPProcessor(image_processor, tokenizer)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def build(
    tiny: bool, device: torch.device, dtype: torch.dtype, tmp: Path
) -> dict[str, tuple[Reward, Callable]]:
    """name → (our reward, official-style baseline(images, texts) → scores)."""
    out: dict[str, tuple[Reward, Callable]] = {}
    # HPSv2: open_clip, checkpoint file reloaded per call in the baseline (as hpsv2.score does).
    if tiny:
        (tmp / "bench-tiny-hps.json").write_text(json.dumps(TINY_OPEN_CLIP))
        open_clip.add_model_config(tmp / "bench-tiny-hps.json")
    name = "bench-tiny-hps" if tiny else "ViT-H-14"
    hps = open_clip.create_model(name, pretrained=None).eval().to(device, dtype)
    ckpt = tmp / "hps.pt"
    torch.save({"state_dict": hps.state_dict()}, ckpt)
    hps_reward = HPSv2Reward(hps, open_clip.get_tokenizer(name))
    transform = open_clip.image_transform(hps.visual.image_size, is_train=False, resize_mode="longest")

    @torch.no_grad()
    def hps_official(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        hps.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True)["state_dict"])
        tokenizer = open_clip.get_tokenizer(name)
        scores = []
        for pil, text in zip(to_pil(images), texts, strict=True):
            image = transform(pil).unsqueeze(0).to(device, dtype)
            img = hps.encode_image(image, normalize=True)
            txt = hps.encode_text(tokenizer([text]).to(device), normalize=True)
            scores.append(torch.diagonal(img @ txt.T))
        return torch.cat(scores)

    out["hpsv2"] = (hps_reward, hps_official)
    size, patch = (32, 8) if tiny else (224, 14)
    for key, arch, seed in (("pickscore", TINY if tiny else VIT_H, 1), ("clip", TINY if tiny else VIT_L, 2)):
        model, processor = hf_clip(arch, size, patch, seed)
        model.to(device, dtype)
        encoder = CLIPEncoder(
            model, image_spec_from_processor(processor.image_processor), processor.tokenizer
        )
        reward = PickScoreReward(encoder) if key == "pickscore" else CLIPSimilarityReward(encoder)

        @torch.no_grad()
        def batched(images: torch.Tensor, texts: list[str], m=model, p=processor, k=key) -> torch.Tensor:
            inputs = p(text=texts, images=to_pil(images), padding=True, truncation=True, max_length=77)
            pix = torch.as_tensor(np.asarray(inputs["pixel_values"])).to(device, dtype)
            ids = torch.as_tensor(inputs["input_ids"]).to(device)
            mask = torch.as_tensor(inputs["attention_mask"]).to(device)
            img = F.normalize(m.get_image_features(pixel_values=pix).pooler_output, dim=-1)
            txt = F.normalize(m.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
            scale = m.logit_scale.exp() if k == "pickscore" else 1.0
            return scale * (img * txt).sum(-1)

        out[key] = (reward, batched)
    model, processor = hf_clip(TINY if tiny else VIT_L, size, patch, 3)
    model.to(device, dtype)
    encoder = CLIPEncoder(model, image_spec_from_processor(processor.image_processor), None)
    proj = model.config.projection_dim
    head = AestheticHead((proj, 1024, 128, 64, 16, 1) if not tiny else (proj, 64, 32, 16, 8, 1)).to(device)
    aesthetic = AestheticReward(encoder, head)

    @torch.no_grad()
    def aesthetic_official(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        scores = []
        for pil in to_pil(images):
            pix = processor.image_processor(pil, return_tensors="pt").pixel_values.to(device, dtype)
            emb = F.normalize(model.get_image_features(pixel_values=pix).pooler_output.float(), dim=-1)
            scores.append(head(emb))
        return torch.cat(scores)

    out["aesthetic"] = (aesthetic, aesthetic_official)
    return out


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, min_time: float) -> dict:
    """Seconds per call of each fn: a warm-up round, then rounds (each fn once, interleaved, so load from
    other processes hits all alike) until `min_time` s and at least 3 rounds; min and median per fn."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while len(times["nograd"]) < 3 or time.perf_counter() - start < min_time:
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v), len(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="real architectures, fp16, CUDA")
    parser.add_argument("--tiny", action="store_true", help="tiny models even with --gpu (code-path check)")
    parser.add_argument("--device", default=None, help="override the device (default: cuda with --gpu)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image-size", type=int, default=None, help="input images (default 64, --gpu 512)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per (reward, batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 with --gpu"
    )
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--gpu needs CUDA; for a CPU check of that code path use --gpu --tiny --device cpu")
    tiny = args.tiny or not args.gpu
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("fp16" if args.gpu else "fp32")]
    image_size = args.image_size or (512 if args.gpu and not args.tiny else 64)
    print(machine_line(device))
    arch = (
        "tiny test-sized models (32² tower input, width 32, 1 layer)" if tiny else "real architectures, 224²"
    )
    print(f"models: {arch}, random weights, {str(dtype).removeprefix('torch.')}, {device}")
    print(f"inputs: {image_size}² float images, one prompt per image; load avg {os.getloadavg()[0]:.1f}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rewards = build(tiny, device, dtype, Path(tmp))
        for name, (reward, official) in rewards.items():
            for b in args.batches:
                gen = torch.Generator().manual_seed(b)
                images = torch.rand(b, 3, image_size, image_size, generator=gen).to(device, dtype)
                texts = [PROMPT] * b
                gap = float("nan")
                if not args.no_baseline:  # the two paths must agree before their speed means anything
                    ours_s, base_s = reward.score(images, texts, grad=False), official(images, texts).float()
                    gap = (ours_s - base_s).abs().max().item()

                def train_step(r: Reward = reward, x: torch.Tensor = images, t: list[str] = texts) -> None:
                    r.score(x.detach().requires_grad_(True), t).sum().backward()

                fns: dict[str, Callable[[], object]] = {
                    "nograd": lambda r=reward, x=images, t=texts: r.score(x, t, grad=False),
                    "fwd_bwd": train_step,
                }
                if not args.no_baseline:
                    fns["official"] = lambda f=official, x=images, t=texts: f(x, t)
                rows.append((name, b, interleaved(fns, device, args.min_time), gap))
    print(
        "| reward | batch | ours no-grad img/s | ours fwd+bwd img/s | official-style img/s | "
        "ours / official | max abs Δscore | rounds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    nan = (float("nan"),) * 3
    for name, b, secs, gap in rows:
        ours, train, base = (b / secs.get(k, nan)[0] for k in ("nograd", "fwd_bwd", "official"))
        n = secs["nograd"][2]
        print(
            f"| {name} | {b} | {ours:.1f} | {train:.1f} | {base:.1f} | {ours / base:.1f}× | {gap:.2g} | {n} |"
        )
    medians = {f"{n}@{b}": {k: round(v[1] * 1e3, 2) for k, v in s.items()} for n, b, s, _ in rows}
    print(f"\nimg/s = batch / fastest call of the rounds; median ms per call: {json.dumps(medians)}")


if __name__ == "__main__":
    main()
