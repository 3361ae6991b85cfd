"""The report's plots (matplotlib, Agg, PNG): metric bars of the result tables and adapter reward curves.

Figures are made with `matplotlib.figure.Figure` directly (no pyplot): no global state, no display, the Agg
canvas behind `savefig`. Bars show *our* figures only (the paper's sit beside them in the HTML tables); a
stand-in metric keeps its own name in the title (LPIPS-miniCLIP, FD-miniCLIP), with what it stands in for.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icg.atomic import atomic_path

LOWER_IS_BETTER = ("LPIPS", "FD-", "FID", "loss")
STAND_IN_FOR = {"LPIPS-miniCLIP": "LPIPS", "FD-miniCLIP": "FID", "CLIP score-miniCLIP": "CLIP score"}
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


@dataclass(frozen=True)
class Panel:
    """One bar chart: one bar per label (NaN draws none), optional error bars."""

    title: str
    labels: tuple[str, ...]
    values: tuple[float, ...]
    errors: tuple[float, ...] | None = None


def metric_title(metric: str) -> str:
    """'FD-miniCLIP ↓ (stand-in for FID)'; the arrow says which way is better."""
    arrow = "↓" if any(metric.startswith(p) or p in metric for p in LOWER_IS_BETTER) else "↑"
    stand_in = STAND_IN_FOR.get(metric)
    return f"{metric} {arrow}" + (f"\n(stand-in for {stand_in})" if stand_in else "")


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def rows_panels(rows: Mapping[str, Mapping]) -> list[Panel]:
    """A {method: {metric: value}} table (T1/T3/T4/T5) → one panel per numeric metric, methods on x."""
    metrics = list(
        dict.fromkeys(
            k for r in rows.values() for k, v in r.items() if k != "seconds" and not math.isnan(_number(v))
        )
    )
    methods = tuple(rows)
    return [Panel(metric_title(m), methods, tuple(_number(rows[n].get(m)) for n in methods)) for m in metrics]


def _adapter_panels(result: Mapping) -> list[Panel]:
    variants = tuple(k for k, v in result.items() if isinstance(v, Mapping) and "judge_reward" in v)
    metrics = {
        "judge_reward": "held-out judge reward ↑",
        "ssim": "SSIM to reference ↑",
        "LPIPS-miniCLIP": metric_title("LPIPS-miniCLIP"),
    }
    panels = [
        Panel(title, variants, tuple(_number(result[v].get(key)) for v in variants))
        for key, title in metrics.items()
    ]
    score = tuple(_number((result[v].get("personalization") or {}).get("score")) for v in variants)
    return [*panels, Panel("personalization r ↑", variants, score)]


def _table6_panels(result: Mapping) -> list[Panel]:
    rows = result["rows"]
    return [
        Panel(
            "test pair accuracy (%) ↑",
            tuple(r["label"] for r in rows),
            tuple(_number(r.get("test_mean")) for r in rows),
            tuple(_number(r.get("test_std")) for r in rows),
        )
    ]


def _table7_panels(result: Mapping) -> list[Panel]:
    rows = result["rows"]
    labels = tuple(r["label"] for r in rows)

    def pair(key: str, i: int) -> tuple[float, ...]:
        return tuple(_number((r.get(key) or [math.nan, math.nan])[i]) for r in rows)

    return [
        Panel("Recall@10 (%) ↑", labels, pair("test_recall", 0), pair("test_recall", 1)),
        Panel("NDCG@10 ↑", labels, pair("test_ndcg", 0), pair("test_ndcg", 1)),
    ]


def _mini_eval_panels(result: Mapping) -> list[Panel]:
    fd, genre, vae = result["fd_miniclip"], result["genre_accuracy"], result["vae"]
    return [
        Panel(
            f"{metric_title('FD-miniCLIP')}, {fd['n_half']} vs {fd['n_half']} covers",
            ("references (floor)", "mini backbone", "random UNet"),
            (fd["floor_reference_halves"], fd["generated_half"], fd["random_unet_half"]),
        ),
        Panel(
            "zero-shot genre accuracy ↑ (mini CLIP)",
            ("reference covers", "mini backbone", "random UNet", "majority chance"),
            (genre["reference"], genre["generated"], genre["random_unet"], genre["chance_majority"]),
        ),
        Panel(
            "VAE reconstruction PSNR (dB) ↑", ("mini VAE", "bicubic ÷4"), (vae["psnr"], vae["bicubic_psnr"])
        ),
    ]


def result_panels(stem: str, result: Mapping) -> list[Panel]:
    """The bar panels of a known result file (by stem); [] for a shape this module does not know."""
    if stem.startswith("table6"):
        return _table6_panels(result)
    if stem.startswith("table7"):
        return _table7_panels(result)
    if stem.startswith("adapter_heldout"):
        return _adapter_panels(result)
    if stem.startswith("mini_eval"):
        return _mini_eval_panels(result)
    if isinstance(result.get("rows"), Mapping):
        return rows_panels(result["rows"])
    return []


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def bar_chart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    """Panels side by side (at most 4 per line); each bar labelled with its value."""
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("bar_chart needs at least one panel")
    horizontal = max(len(label) for p in panels for label in p.labels) > 28  # long labels read better on y
    per_line = min(3 if horizontal else 4, len(panels))
    lines = math.ceil(len(panels) / per_line)
    n_bars = max(len(p.labels) for p in panels)
    height = (0.4 * n_bars + 1.2) if horizontal else 2.9
    fig = Figure(
        figsize=(min(16, 4.6 * per_line + (2 if horizontal else 0)), height * lines + 0.6),
        layout="constrained",
    )
    fig.suptitle(title, fontsize=12, fontweight="bold")
    axes = fig.subplots(lines, per_line, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        values = np.array(panel.values, dtype=float)
        errors = None if panel.errors is None else np.nan_to_num(np.array(panel.errors, dtype=float))
        colors = [COLORS[i % len(COLORS)] for i in range(len(values))]
        labels = [
            textwrap.fill(label, 26 if horizontal else 12, break_long_words=False) for label in panel.labels
        ]
        if horizontal:
            bars = ax.barh(labels, np.nan_to_num(values), xerr=errors, color=colors, capsize=3)
            ax.invert_yaxis()  # first row on top, as in the table
            ax.tick_params(axis="y", labelsize=8)
        else:
            bars = ax.bar(labels, np.nan_to_num(values), yerr=errors, color=colors, capsize=3)
            ax.tick_params(axis="x", labelsize=8)
            ax.axhline(0, color="black", linewidth=0.6)
        ax.bar_label(
            bars, labels=["" if math.isnan(v) else f"{v:.4g}" for v in values], fontsize=7, padding=2
        )
        ax.set_title(panel.title, fontsize=9)
        (ax.set_xlim if horizontal else ax.set_ylim)(*_value_limits(values))
        ax.grid(axis="x" if horizontal else "y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)


def _value_limits(values: np.ndarray) -> tuple[float, float]:
    """Axis limits from 0 to the bars, with room for the value labels on the side(s) the bars grow to."""
    finite = values[~np.isnan(values)]
    lo, hi = min(0.0, *finite, 0.0), max(0.0, *finite, 0.0)
    span = (hi - lo) or 1.0
    return lo - (0.15 * span if lo < 0 else 0.0), hi + (0.15 * span if hi > 0 else 0.08 * span)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` steps (shorter at the start), NaN-aware: (T,) → (T,)."""
    x = np.asarray(values, dtype=float)
    ok = ~np.isnan(x)
    sums = np.cumsum(np.where(ok, x, 0.0))
    counts = np.cumsum(ok)
    lo = np.maximum(np.arange(len(x)) - window, -1)
    s = sums - np.where(lo >= 0, sums[np.maximum(lo, 0)], 0.0)
    c = counts - np.where(lo >= 0, counts[np.maximum(lo, 0)], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(h.get("step", i + 1), _number(h.get(key))) for i, h in enumerate(history) if key in h]
    steps, values = zip(*points, strict=True) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def reward_curves(
    history: Sequence[Mapping],
    path: Path,
    title: str,
    window: int | None = None,
    checks: Sequence[Mapping] | None = None,
) -> Path:
    """Per-step rewards and losses (faint raw, moving average on top) and, when the run has them, the
    guard's held-out checks (one small panel per judge, flagged checks in red). `checks` (metrics.json
    "guard" → "checks": {"step", "means", "flagged"}) include the step-0 check the history lacks."""
    from matplotlib.figure import Figure

    if checks:  # the guard's own record, step 0 included
        guard_history = [
            {"step": c["step"], "guard/flagged": c.get("flagged", False)}
            | {f"guard/{k}": v for k, v in (c.get("means") or {}).items()}
            for c in checks
        ]
    else:
        guard_history = [h for h in history if any(k.startswith("guard/") for k in h)]
    keys = list(dict.fromkeys(k for h in history for k in h))
    rewards = [k for k in keys if k.startswith("reward/")]
    losses = [k for k in keys if k.startswith("loss/")]
    guard_keys = dict.fromkeys(k for h in guard_history for k in h)
    guards = [k for k in guard_keys if k.startswith("guard/") and k != "guard/flagged"][:4]
    window = window or max(1, min(50, len(history) // 20))
    top = [("rewards", rewards), ("losses", losses)]
    width = 2 * max(1, len(guards))
    mosaic = [["rewards"] * (width // 2) + ["losses"] * (width // 2)]
    if guards:
        mosaic.append([g for g in guards for _ in range(2)])
    fig = Figure(figsize=(12, 3.2 * len(mosaic) + 0.5), layout="constrained")
    fig.suptitle(f"{title} — moving average over {window} step(s), raw values faint", fontsize=11)
    axes = fig.subplot_mosaic(mosaic)
    flagged = [h["step"] for h in guard_history if h.get("guard/flagged")]
    for name, series in top:
        ax = axes[name]
        for n, key in enumerate(series):
            steps, values = _series(history, key)
            color = COLORS[n % len(COLORS)]
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, moving_average(values, window), color=color, linewidth=1.8, label=key)
        ax.set_title(f"{name} (per training step)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, f"no {name} in this run", ha="center", va="center", transform=ax.transAxes)
    for key in guards:
        ax = axes[key]
        steps, values = _series(guard_history, key)
        ax.plot(steps, values, marker="o", color="#333333", linewidth=1.2)
        red = np.isin(steps, flagged)
        ax.plot(steps[red], values[red], "o", color="#C44E52", markersize=8, label="flagged check")
        name = key.removeprefix("guard/")
        ax.set_title(f"held-out check: {metric_title(name).splitlines()[0]}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if red.any():
            ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
