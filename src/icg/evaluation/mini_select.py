"""Choose a mini backbone recipe on the validation items: generated covers' zero-shot genre accuracy.

`icg evaluate mini` reports on the held-out items (validation + test); a recipe choice (which UNet, which
guidance scale) must not look at them all, so this measures the validation items of the same split only
(168 of ml-100k's 1682), each candidate against the first with an exact McNemar test on the same seeds.

    python -m icg.evaluation.mini_select --candidate shipped=src/icg/assets/mini/backbone \
        --candidate snr=runs/unet_snr/unet --guidance 7 --guidance 10 --md results/mini_select.md

A candidate is a backbone folder (model_index.json: its UNet and VAE) or a UNet folder (config.json), which
replaces the base backbone's UNet.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPModel, CLIPProcessor

from icg.data.captions import item_text
from icg.data.covers.render import items_genres
from icg.data.splits import split_items
from icg.evaluation.mini import (
    SEED_STRIDE,
    SPLIT,
    build_pipeline,
    exact_mcnemar,
    generate_covers,
    genre_candidates,
    vae_scale_factor,
    zero_shot_genres,
)
from icg.loading import load_backbone
from icg.machine import machine

logger = logging.getLogger(__name__)


def validation_rows(n_items: int) -> np.ndarray:
    """Sorted row positions of the validation items of the shared mini split (never the test items)."""
    return np.sort(split_items(n_items, SPLIT["seed"], SPLIT["val_fraction"], SPLIT["test_fraction"]).val)


def _components(base: Path, candidate: Path):
    """(unet, vae, text_encoder, tokenizer, scheduler) of `base` with the candidate's UNet (and VAE when the
    candidate is a whole backbone folder)."""
    if (candidate / "model_index.json").is_file():
        return load_backbone(str(candidate))
    if not (candidate / "config.json").is_file():
        raise FileNotFoundError(
            f"{candidate}: neither a backbone (model_index.json) nor a UNet (config.json)"
        )
    _, vae, text_encoder, tokenizer, scheduler = load_backbone(str(base))
    unet = UNet2DConditionModel.from_pretrained(candidate, torch_dtype=torch.float32).eval()
    return unet, vae, text_encoder, tokenizer, scheduler


def select(
    candidates: dict[str, Path],
    items: pd.DataFrame,
    *,
    base: Path,
    clip_dir: Path,
    guidances: list[float],
    num_inference_steps: int = 15,
    max_items: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, object]:
    """Validation genre accuracy of every (candidate, guidance); McNemar of each against the first."""
    started = time.perf_counter()
    items = items.reset_index(drop=True)
    rows = validation_rows(len(items))[:max_items]
    held = items.iloc[rows].reset_index(drop=True)
    tuples = items_genres(held)
    primary = np.array([g[0] for g in tuples])
    genres = genre_candidates(items_genres(items))
    prompts = [item_text(str(t), g, 0) for t, g in zip(held["title"], tuples, strict=True)]
    seeds = [seed * SEED_STRIDE + int(r) for r in rows]
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    results: list[dict[str, object]] = []
    first: np.ndarray | None = None
    for name, folder in candidates.items():
        unet, vae, text_encoder, tokenizer, scheduler = _components(base, Path(folder))
        pipe = build_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
        size = int(unet.config.sample_size) * vae_scale_factor(vae)
        for guidance in guidances:
            covers = generate_covers(
                pipe, prompts, seeds, size=size, num_inference_steps=num_inference_steps,
                guidance_scale=guidance, batch_size=batch_size, progress=progress, desc=f"{name} g{guidance}",
            )  # fmt: skip
            correct = np.array(zero_shot_genres(clip, processor, covers, genres)) == primary
            row: dict[str, object] = {
                "candidate": name, "folder": str(folder), "guidance": guidance,
                "genre_accuracy": round(float(correct.mean()), 4),
            }  # fmt: skip
            if first is None:
                first = correct
            else:
                row["vs_first"] = exact_mcnemar(correct, first)
            results.append(row)
            logger.info("%s guidance %s: validation genre accuracy %.3f", name, guidance, correct.mean())
    return {
        "results": results,
        "n_items": len(rows),
        "chance_majority": round(float(pd.Series(primary).value_counts(normalize=True).iloc[0]), 4),
        "settings": {"num_inference_steps": num_inference_steps, "seed": seed, "split": SPLIT},
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def select_markdown(result: dict, command: str) -> str:
    lines = [
        "# Mini backbone recipe choice (validation items only)",
        "",
        f"{result['n_items']} validation items of split_items(n, {SPLIT['seed']}, {SPLIT['val_fraction']}, "
        f"{SPLIT['test_fraction']}) (never the test items), DDIM {result['settings']['num_inference_steps']} "
        f"steps, prompt 'title, genres movie'; majority-genre chance {result['chance_majority']:.3f}.",
        "",
        "| candidate | guidance | zero-shot primary-genre accuracy | vs first row (exact McNemar p) |",
        "|---|---|---|---|",
    ]
    for row in result["results"]:
        versus = row.get("vs_first")
        p = f"{versus['p_value']:.2g}" if versus else "–"
        lines.append(f"| {row['candidate']} | {row['guidance']} | {row['genre_accuracy']:.3f} | {p} |")
    lines += ["", f"- machine: {result['machine']}; {result['seconds']} s", f"- command: `{command}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    from icg.cli_options import load_data
    from icg.presets import mini_assets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", required=True, help="NAME=FOLDER (repeatable)")
    parser.add_argument("--guidance", action="append", type=float, help="guidance scale (repeatable)")
    parser.add_argument("--base", type=Path, default=mini_assets_dir() / "backbone")
    parser.add_argument("--clip", type=Path, default=mini_assets_dir() / "clip")
    parser.add_argument("--max-items", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON results")
    parser.add_argument("--md", type=Path, help="markdown table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    candidates = {}
    for spec in args.candidate:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--candidate takes NAME=FOLDER, got {spec!r}")
        candidates[name] = Path(folder)
    result = select(
        candidates, load_data("ml-100k", None).items, base=args.base, clip_dir=args.clip,
        guidances=args.guidance or [7.0], max_items=args.max_items,
    )  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    text = select_markdown(result, "python -m icg.evaluation.mini_select " + " ".join(argv or sys.argv[1:]))
    if args.md:
        args.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
