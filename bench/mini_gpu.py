"""Train the mini backbone on one GPU inside a time budget (issue 17, item 1): the VAE, then the UNet
candidates of `src/icg/training/recipes/mini_gpu.json` side by side on the same GPU, each fitted to its
minutes by a timing probe; pack the weights (fp16) and metrics for the trip back.

    python bench/mini_gpu.py --out $OUT                  # on the device (cuda)
    python bench/mini_gpu.py --out /tmp/x --tiny         # the same code at toy sizes on the CPU, first

The candidate that ships is chosen afterwards on the validation items (generated covers' zero-shot genre
accuracy, `python -m icg.evaluation.mini_select`), never on the held-out evaluation items.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from icg.cli_options import load_data  # noqa: E402
from icg.data.covers.cache import render_cover_cache  # noqa: E402
from icg.presets import mini_assets_dir  # noqa: E402
from icg.training.mini_unet import (  # noqa: E402
    MiniUnetConfig,
    build_unet,
    frozen_features,
    train_mini_unet,
)
from icg.training.mini_vae import MiniVaeConfig, build_vae, train_mini_vae, vae_loss  # noqa: E402

RECIPE = ROOT / "src" / "icg" / "training" / "recipes" / "mini_gpu.json"
TINY_ITEMS = 60
TINY_VAE = {"block_out_channels": [16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "batch_size": 16}
TINY_UNET = {"block_out_channels": [32, 32, 32], "attention_head_dim": [1, 1, 1], "batch_size": 16}
logger = logging.getLogger("mini_gpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step, device: torch.device, warmup: int = 5, steps: int = 20) -> float:
    """Mean wall seconds of `step()` after `warmup` calls (the allocator and kernels warmed up)."""
    for _ in range(warmup):
        step()
    _sync(device)
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - tick) / steps


def fit(config, steps_per_pass: int, step_seconds: float, minutes: float):
    """`config` with epochs × passes_per_epoch filling 85 % of `minutes` (the rest: validation, checkpoints,
    the last evaluation); at least one pass."""
    passes = max(1, int(minutes * 60 * 0.85 / (step_seconds * steps_per_pass)))
    epochs = min(config.epochs, passes)
    return dataclasses.replace(config, epochs=epochs, passes_per_epoch=max(1, passes // epochs))


def probe_vae(config: MiniVaeConfig, device: torch.device) -> float:
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    pixels = torch.rand(config.batch_size, 3, config.image_size, config.image_size).to(device) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        vae_loss(vae, pixels, config)["loss"].backward()
        optimizer.step()

    return seconds_per_step(step, device)


def probe_unet(config: MiniUnetConfig, width: int, length: int, device: torch.device) -> float:
    from diffusers.training_utils import EMAModel

    unet = build_unet(config, width).to(device)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, foreach=device.type == "cuda")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    side = config.sample_size
    x = torch.randn(config.batch_size, config.in_channels, side, side).to(device)
    cond = torch.randn(config.batch_size, length, width).to(device)
    t = torch.randint(0, 1000, (config.batch_size,)).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = unet(x, t, encoder_hidden_states=cond).sample
        torch.nn.functional.mse_loss(pred.float(), x).backward()
        optimizer.step()
        ema.step(unet.parameters())

    return seconds_per_step(step, device)


def unet_config(recipe: dict, name: str, tiny: bool) -> MiniUnetConfig:
    values = {**recipe["unet"]["config"], **recipe["unet"]["candidates"][name]}
    if tiny:
        values |= TINY_UNET | {"max_items": TINY_ITEMS, "epochs": 2}
    return MiniUnetConfig.from_json(json.dumps(values))


def vae_config(recipe: dict, tiny: bool) -> MiniVaeConfig:
    values = dict(recipe["vae"]["config"])
    if tiny:
        values |= TINY_VAE | {"max_items": TINY_ITEMS, "epochs": 2}
    return MiniVaeConfig.from_json(json.dumps(values))


def train_unet(args: argparse.Namespace, recipe: dict, items, device: torch.device) -> None:
    """One candidate (a child process): probe, fit, train into work/unet_<name>."""
    config = unet_config(recipe, args.unet, args.tiny)
    minutes = args.minutes or recipe["unet"]["minutes"]
    step = probe_unet(config, 128, 32, device)
    pairs = (
        round(len(items if config.max_items is None else items.head(config.max_items)) * 0.8)
        * config.variants
    )
    config = fit(config, -(-pairs // config.batch_size), step, minutes)
    logger.info(
        "unet %s: %.4f s/step → %s epochs × %s passes",
        args.unet,
        step,
        config.epochs,
        config.passes_per_epoch,
    )
    work = Path(args.work)
    train_mini_unet(
        items, work / f"unet_{args.unet}", config, vae_dir=work / "vae", clip_dir=mini_assets_dir() / "clip",
        cache_dir=work / "cache", device=device, max_minutes=minutes * 1.15, progress=False,
    )  # fmt: skip
    (work / f"unet_{args.unet}" / "probe.json").write_text(json.dumps({"seconds_per_step": step}))


def pack(work: Path, out: Path, names: list[str]) -> list[str]:
    """fp16 copies of the VAE and each UNet (+ their json files) as one tar each in `out`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    packed = []
    for name, folder, weights in [("vae", work / "vae", work / "vae")] + [
        (f"unet_{n}", work / f"unet_{n}", work / f"unet_{n}" / "unet") for n in names
    ]:
        if not (weights / "config.json").is_file():
            logger.warning("%s: no weights; not packed", folder)
            continue
        cls = AutoencoderKL if name == "vae" else UNet2DConditionModel
        staging = work / "pack" / name
        cls.from_pretrained(weights).half().save_pretrained(staging / "weights")
        for extra in ("scheduler",):
            if (folder / extra).is_dir():
                tree = staging / extra
                tree.mkdir(parents=True, exist_ok=True)
                for file in (folder / extra).iterdir():
                    (tree / file.name).write_bytes(file.read_bytes())
        for file in folder.glob("*.json"):
            (staging / file.name).write_bytes(file.read_bytes())
        with tarfile.open(out / f"{name}.tar", "w") as tar:
            tar.add(staging, arcname=name)
        packed.append(f"{name}.tar")
    return packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the packed results go ($OUT on the device)")
    parser.add_argument("--work", default="/tmp/mini_gpu", help="training folders (not returned)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU check of this script")
    parser.add_argument("--unet", help="(internal) train this UNet candidate only")
    parser.add_argument("--minutes", type=float, help="override the recipe's minutes per step")
    args = parser.parse_args()
    from icg.modules import resolve_device

    device = resolve_device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    recipe = json.loads(RECIPE.read_text())
    items = load_data("ml-100k", None).items
    if args.unet:  # side by side with the other candidates: a share of the cores each
        torch.set_num_threads(4 if device.type == "cuda" else 1)
        train_unet(args, recipe, items, device)
        return

    started = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny, "seconds": {},
    }  # fmt: skip

    tick = time.perf_counter()
    config = vae_config(recipe, args.tiny)
    minutes = args.minutes or recipe["vae"]["minutes"]
    step = probe_vae(config, device)
    n_train = round(len(items if config.max_items is None else items.head(config.max_items)) * 0.8)
    config = fit(config, -(-n_train // config.batch_size), step, minutes)
    logger.info("vae: %.4f s/step → %s epochs × %s passes", step, config.epochs, config.passes_per_epoch)
    vae_metrics = train_mini_vae(
        items, work / "vae", config, cache_dir=work / "cache", device=device, max_minutes=minutes * 1.15,
        progress=False,
    )  # fmt: skip
    summary["vae"] = {
        k: vae_metrics[k]
        for k in ("val", "test", "parameters", "epochs", "epochs_completed", "passes_per_epoch", "seconds")
        if k in vae_metrics
    }
    summary["vae"]["seconds_per_step"] = step
    summary["seconds"]["vae"] = round(time.perf_counter() - tick, 1)

    # latents and caption states once, before the candidates start (they read the cache)
    tick = time.perf_counter()
    names = list(recipe["unet"]["candidates"])
    frozen_features(
        items if not args.tiny else items.head(TINY_ITEMS), unet_config(recipe, names[0], args.tiny),
        work / "vae", mini_assets_dir() / "clip", work / "cache", progress=False,
    )  # fmt: skip
    summary["seconds"]["features"] = round(time.perf_counter() - tick, 1)
    # the covers the models saw: compare with a local render (fonts differ between machines if any cover does)
    covers = render_cover_cache(items.head(TINY_ITEMS) if args.tiny else items, work / "cache", 64, 4, False)
    summary["covers_sha256"] = hashlib.sha256(covers.numpy().tobytes()).hexdigest()

    tick = time.perf_counter()
    command = [sys.executable, __file__, "--work", str(work), "--device", str(device)]
    command += ["--tiny"] if args.tiny else []
    command += ["--minutes", str(args.minutes)] if args.minutes else []
    children = {}
    for name in names:
        log = open(out / f"unet_{name}.log", "w")  # noqa: SIM115 (closed when the child ends)
        children[name] = (subprocess.Popen([*command, "--unet", name], stdout=log, stderr=log), log)
    for name, (child, log) in children.items():
        child.wait()
        log.close()
        metrics_file = work / f"unet_{name}" / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            keep = (
                "val_eps_mse",
                "val_eps_mse_empty_caption",
                "test_eps_mse",
                "parameters",
                "epochs",
                "epochs_completed",
                "passes_per_epoch",
                "seconds",
            )
            summary[f"unet_{name}"] = {k: metrics.get(k) for k in keep} | {
                "returncode": child.returncode, "passes_per_epoch": metrics["config"]["passes_per_epoch"],
            }  # fmt: skip
        else:
            summary[f"unet_{name}"] = {"returncode": child.returncode}
    summary["seconds"]["unets"] = round(time.perf_counter() - tick, 1)

    summary["packed"] = pack(work, out, names)
    summary["seconds"]["total"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
