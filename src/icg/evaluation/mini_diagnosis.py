"""Does the shipped mini UNet use its caption at all? A measurement with the shipped weights, no training.

On held-out items (the first `max_items` of `held_out_rows`, the items `icg evaluate mini` measures), the
reference cover's VAE latent (posterior mean × scaling_factor) is noised at fixed timesteps with fixed noise,
and the UNet predicts ε under four captions that the pipeline encodes exactly as at generation time:

- `caption`: the item's caption (`item_text(title, genres, 0)`, the evaluation prompt);
- `empty`: "" (the unconditional caption of classifier-free guidance);
- `swapped`: the same title with one other genre (`swap_targets`, the prompt-swap test's draw);
- `other`: the caption of another held-out item whose primary genre differs (a fixed derangement);
- `teacher`: the item's explicit-prompt teacher caption (what the context encoder writes at generation
  time, half of the UNet's training captions).

Figures per timestep and averaged: the relative change ‖ε(c) − ε(c')‖ / ‖ε(c)‖ for c' = empty, swapped,
other; the ε-MSE against the true noise under each caption (a caption the UNet uses predicts its own noise
better than a wrong one); the text encoder's cosine between captions (flattened last hidden states, the
issue's measure, and restricted to the caption's own tokens); and, in every cross-attention layer, the
attention entropy over the key tokens and the attention mass on the caption's own tokens (BOS..EOS) vs the
padding that follows (diffusers' pipeline passes no padding mask).

Command: `python -m icg.evaluation.mini_diagnosis --out results/mini_conditioning.json` (see `main`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor

from icg.atomic import write_text_atomic
from icg.context.teacher import explicit_prompt_teacher
from icg.data.captions import item_text
from icg.data.covers.cache import render_cover_cache
from icg.data.covers.render import items_genres
from icg.evaluation.mini import (
    COVER_VARIANTS,
    genre_candidates,
    held_out_rows,
    swap_targets,
    vae_scale_factor,
)
from icg.loading import load_backbone

TIMESTEPS = (50, 200, 400, 600, 800, 950)  # the mini UNet trainer's validation timesteps
CAPTIONS = ("caption", "empty", "swapped", "other", "teacher")
ALTERNATIVES = ("empty", "swapped", "other", "teacher")


class RecordingAttnProcessor(AttnProcessor):
    """diffusers' plain attention processor that also records, for cross-attention calls, the entropy of the
    attention over key tokens and the attention mass on `token_mask`'s tokens (per batch row, mean over
    heads and queries), plus ‖output‖ / ‖input‖ of the layer."""

    def __init__(self, name: str, store: dict[str, list], token_mask: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.name, self.store, self.token_mask = name, store, token_mask

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        if encoder_hidden_states is None:
            return out
        x = hidden_states
        batch = x.shape[0]
        flat = x.view(batch, x.shape[1], -1).transpose(1, 2) if x.ndim == 4 else x  # (B, Q, C)
        q = attn.head_to_batch_dim(attn.to_q(flat))  # (B·H, Q, d)
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B·H, L, d)
        probs = attn.get_attention_scores(q, k, None).view(batch, attn.heads, q.shape[1], -1)  # (B, H, Q, L)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(dim=(1, 2))  # (B,)
        mask = self.token_mask["mask"].to(probs.dtype)  # (B, L) 1 on the caption's own tokens
        on_caption = (probs * mask[:, None, None, :]).sum(-1).mean(dim=(1, 2))  # (B,)
        ratio = out.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        self.store.setdefault(self.name, []).append(torch.stack([entropy, on_caption, ratio], dim=1))
        return out


def _derangement_other_genre(primary: list[str], seed: int) -> list[int]:
    """For each item, the index of another item with a different primary genre (seeded)."""
    rng = np.random.default_rng([seed, 31337])
    out = []
    for p in primary:
        options = [j for j, q in enumerate(primary) if q != p]
        if not options:
            raise ValueError("every item has the same primary genre: no 'other' caption")
        out.append(options[int(rng.integers(len(options)))])
    return out


@torch.no_grad()
def encode(pipe_tokenizer, text_encoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, W) last hidden states as the pipeline encodes them, and (N, L) the BOS..EOS token mask."""
    tokens = pipe_tokenizer(
        captions,
        padding="max_length",
        max_length=pipe_tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    hidden = text_encoder(tokens.input_ids)[0]
    return hidden, tokens.attention_mask.bool()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


@torch.no_grad()
def diagnose_conditioning(
    backbone_dir: Path,
    items: pd.DataFrame,
    *,
    cache_dir: Path,
    max_items: int | None = 64,
    timesteps: tuple[int, ...] = TIMESTEPS,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, object]:
    t0 = time.perf_counter()
    items = items.reset_index(drop=True)
    rows = held_out_rows(len(items))[:max_items]
    held = items.iloc[rows].reset_index(drop=True)
    unet, vae, text_encoder, tokenizer, scheduler = load_backbone(str(backbone_dir))
    unet.eval()
    size = int(unet.config.sample_size) * vae_scale_factor(vae)
    covers = render_cover_cache(items, Path(cache_dir), size, COVER_VARIANTS, progress=False)
    covers = covers[torch.from_numpy(rows), 0].float() / 127.5 - 1.0  # (N, 3, S, S) in [-1, 1]
    latents = torch.cat(
        [vae.encode(covers[s : s + batch_size]).latent_dist.mean for s in range(0, len(covers), batch_size)]
    ) * float(vae.config.scaling_factor)  # (N, 4, s, s)

    tuples = items_genres(held)
    primary = [t[0] for t in tuples]
    new = swap_targets(tuples, genre_candidates(tuples), seed)
    other = _derangement_other_genre(primary, seed)
    texts = {
        "caption": [item_text(str(t), g, 0) for t, g in zip(held["title"], tuples, strict=True)],
        "empty": [""] * len(held),
        "swapped": [item_text(str(t), (g,), 0) for t, g in zip(held["title"], new, strict=True)],
    }
    texts["other"] = [texts["caption"][j] for j in other]
    texts["teacher"] = [
        explicit_prompt_teacher(str(t), g) for t, g in zip(held["title"], tuples, strict=True)
    ]
    encoded = {k: encode(tokenizer, text_encoder, v) for k, v in texts.items()}

    text_figures = {}
    for name in ALTERNATIVES:
        a, b = encoded["caption"][0], encoded[name][0]
        mask = encoded["caption"][1]  # (N, L)
        own = F.cosine_similarity(a, b, dim=-1)  # (N, L) per position
        own_mean = ((own * mask).sum(1) / mask.sum(1)).mean()
        text_figures[f"cos_caption_vs_{name}_flat"] = round(float(_cos(a, b).mean()), 4)
        text_figures[f"cos_caption_vs_{name}_caption_tokens"] = round(float(own_mean), 4)
    teacher, empty = encoded["teacher"][0], encoded["empty"][0]
    text_figures["cos_teacher_vs_empty_flat"] = round(float(_cos(teacher, empty).mean()), 4)
    text_figures["teacher_tokens_mean"] = round(float(encoded["teacher"][1].sum(1).float().mean()), 2)
    text_figures["examples"] = {k: v[0] for k, v in texts.items()}
    n_tokens = encoded["caption"][1].sum(1).float()
    text_figures["caption_tokens_mean"] = round(float(n_tokens.mean()), 2)
    text_figures["max_length"] = int(tokenizer.model_max_length)
    text_figures["truncated"] = int((n_tokens >= tokenizer.model_max_length).sum())

    store: dict[str, list] = {}
    token_mask: dict[str, torch.Tensor] = {}
    processors = {}
    for name in unet.attn_processors:
        processors[name] = (
            RecordingAttnProcessor(name, store, token_mask)
            if name.endswith("attn2.processor")
            else AttnProcessor()
        )
    unet.set_attn_processor(processors)

    generator = torch.Generator().manual_seed(seed)
    by_t: dict[str, dict[str, float]] = {}
    attention: dict[str, dict[str, list[float]]] = {k: {} for k in CAPTIONS}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)  # (N, 4, s, s)
        step = torch.full((len(latents),), t, dtype=torch.long)
        x_t = scheduler.add_noise(latents, noise, step)
        eps = {}
        for name in CAPTIONS:
            store.clear()
            hidden, mask = encoded[name]
            preds = []
            for s in range(0, len(x_t), batch_size):
                token_mask["mask"] = mask[s : s + batch_size]
                preds.append(
                    unet(x_t[s : s + batch_size], step[s : s + batch_size], hidden[s : s + batch_size]).sample
                )
            eps[name] = torch.cat(preds)
            for layer, chunks in store.items():
                stats = torch.cat(chunks).mean(0)  # (3,) entropy, mass on caption tokens, out/in norm
                attention[name].setdefault(layer, []).append(stats.tolist())
        ref = eps["caption"].flatten(1).norm(dim=1)
        row = {}
        for name in ALTERNATIVES:
            diff = (eps["caption"] - eps[name]).flatten(1).norm(dim=1) / ref
            row[f"rel_change_vs_{name}"] = round(float(diff.mean()), 4)
        for name in CAPTIONS:
            row[f"eps_mse_{name}"] = round(float(F.mse_loss(eps[name], noise)), 5)
        row["rel_change_teacher_vs_empty"] = round(
            float(
                (
                    (eps["teacher"] - eps["empty"]).flatten(1).norm(dim=1)
                    / eps["teacher"].flatten(1).norm(dim=1)
                ).mean()
            ),
            4,
        )
        wins = (eps["caption"] - noise).flatten(1).pow(2).mean(1) < (eps["swapped"] - noise).flatten(1).pow(
            2
        ).mean(1)
        row["share_caption_beats_swapped"] = round(float(wins.float().mean()), 4)
        by_t[str(t)] = row
    keys = next(iter(by_t.values())).keys()
    mean = {k: round(float(np.mean([r[k] for r in by_t.values()])), 5) for k in keys}

    layers = {}
    for layer in attention["caption"]:
        layers[layer.replace(".processor", "")] = {
            name: dict(
                zip(
                    ("entropy", "mass_on_caption_tokens", "out_over_in_norm"),
                    [round(float(v), 4) for v in np.mean(attention[name][layer], axis=0)],
                    strict=True,
                )
            )
            for name in ("caption", "empty", "teacher")
        }
    return {
        "n_items": len(rows),
        "timesteps": list(timesteps),
        "eps": {"mean": mean, "by_t": by_t},
        "text_encoder": text_figures,
        "cross_attention": {
            "layers": layers,
            "uniform_entropy": round(math.log(int(tokenizer.model_max_length)), 4),
            "caption_token_share": round(float((n_tokens / tokenizer.model_max_length).mean()), 4),
        },
        "settings": {
            "backbone": str(backbone_dir),
            "items": f"first {len(rows)} of held_out_rows({len(items)})",
            "latents": "VAE posterior mean × scaling_factor of the variant-0 reference cover",
            "noise": f"torch.Generator().manual_seed({seed}), one draw per timestep in order",
            "seed": seed,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def diagnosis_markdown(result: dict) -> str:
    m, te, ca = result["eps"]["mean"], result["text_encoder"], result["cross_attention"]
    lines = [
        "## Diagnosis (issue 17, item 2): does the shipped mini UNet use its caption?",
        "",
        f"Shipped weights, no training; {result['n_items']} held-out items ({result['settings']['items']}), "
        "reference latents noised at fixed timesteps with fixed noise; ε predicted under the item's caption "
        "c ('title, a genres movie'), \"\", the same title with a swapped genre, another item's caption "
        "(other primary genre) and the item's teacher prompt.",
        "",
        '| t | ‖ε(c)−ε("")‖/‖ε(c)‖ | ‖ε(c)−ε(swap)‖/‖ε(c)‖ | ‖ε(c)−ε(other item)‖/‖ε(c)‖ '
        '| ‖ε(teacher)−ε("")‖/‖ε(teacher)‖ | ε-MSE caption | ε-MSE "" | ε-MSE swapped | ε-MSE other '
        "| ε-MSE teacher | caption beats swapped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in [*result["eps"]["by_t"].items(), ("mean", m)]:
        lines.append(
            f"| {t} | {r['rel_change_vs_empty']:.4f} | {r['rel_change_vs_swapped']:.4f} "
            f"| {r['rel_change_vs_other']:.4f} | {r['rel_change_teacher_vs_empty']:.4f} "
            f"| {r['eps_mse_caption']:.4f} | {r['eps_mse_empty']:.4f} "
            f"| {r['eps_mse_swapped']:.4f} | {r['eps_mse_other']:.4f} | {r['eps_mse_teacher']:.4f} "
            f"| {r['share_caption_beats_swapped']:.3f} |"
        )
    lines += [
        "",
        '| cross-attention layer | entropy (caption / teacher / "") | mass on own tokens (caption / teacher) '
        '| ‖attn out‖/‖in‖ (caption / teacher / "") |',
        "|---|---|---|---|",
    ]
    for layer, v in ca["layers"].items():
        c, e, t = v["caption"], v["empty"], v["teacher"]
        lines.append(
            f"| {layer} | {c['entropy']:.2f} / {t['entropy']:.2f} / {e['entropy']:.2f} "
            f"| {c['mass_on_caption_tokens']:.2f} / {t['mass_on_caption_tokens']:.2f} "
            f"| {c['out_over_in_norm']:.2f} / {t['out_over_in_norm']:.2f} / {e['out_over_in_norm']:.2f} |"
        )
    lines += [
        "",
        f"Uniform attention entropy over the {te['max_length']} key tokens: {ca['uniform_entropy']:.3f}; the "
        f"caption's own tokens (BOS..EOS) are {ca['caption_token_share']:.3f} of the keys on average "
        f"({te['caption_tokens_mean']:.1f} tokens, {te['truncated']} captions truncated).",
        "",
        "| text encoder cosine (caption vs …) | flattened last hidden states | caption's own tokens |",
        "|---|---|---|",
    ]
    pairs = (
        ("empty", '""'),
        ("swapped", "same title, swapped genre"),
        ("other", "another item"),
        ("teacher", "its teacher prompt"),
    )
    for name, label in pairs:
        lines.append(
            f"| {label} | {te[f'cos_caption_vs_{name}_flat']:.3f} "
            f"| {te[f'cos_caption_vs_{name}_caption_tokens']:.3f} |"
        )
    lines += [
        "",
        f'Teacher prompt vs "" (flattened): {te["cos_teacher_vs_empty_flat"]:.3f}; teacher prompts have '
        f"{te['teacher_tokens_mean']:.1f} tokens on average. Example captions: "
        + "; ".join(f"{k}: '{v}'" for k, v in te["examples"].items()),
    ]
    mach = result["settings"].get("machine", {})
    if mach:
        lines.append(
            f"\n- machine: {mach.get('processor')}, {mach.get('cpu_count')} cores, torch {mach.get('torch')} "
            f"with {mach.get('torch_threads')} threads; {result['seconds']} s."
        )
    if "command" in result:
        lines.append(
            f"- command: `{result['command']}` (`icg evaluate mini` rewrites this file without this section: "
            "rerun it after)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from icg.cli_options import load_data
    from icg.presets import get_preset, icg_home

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--max-items", type=int, default=0, help="first N held-out items (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    parser.add_argument(
        "--md", type=Path, default=None, help="Markdown file whose diagnosis section is (re)written"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = get_preset(args.preset)
    result = diagnose_conditioning(
        Path(spec.base_model),
        load_data("ml-100k", None).items,
        cache_dir=icg_home() / "covers",
        max_items=args.max_items or None,
        seed=args.seed,
    )
    result["command"] = "python -m icg.evaluation.mini_diagnosis " + " ".join(argv or sys.argv[1:])
    from icg.evaluation.table6 import machine

    result["settings"]["machine"] = machine()
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=2))
    report = diagnosis_markdown(result)
    if args.md is not None:
        write_section(args.md, report)
    print(report)


SECTION_START = "<!-- diagnosis: python -m icg.evaluation.mini_diagnosis -->"
SECTION_END = "<!-- /diagnosis -->"


def write_section(path: Path, body: str) -> None:
    """Replace the text between the diagnosis markers of `path` (or append it): reruns stay idempotent."""
    text = path.read_text() if path.is_file() else ""
    section = f"{SECTION_START}\n{body.rstrip()}\n{SECTION_END}\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomic(path, text)


if __name__ == "__main__":
    main()
