"""Per-method mean Likert score with a 95% Student-t confidence interval (paper Table 2 style).

The interval is mean ± t_{0.975, n-1} · s / √n over all ratings of a method (s: sample standard deviation,
ddof=1). It treats ratings as independent; ratings by the same rater are correlated, so with few raters the
interval is optimistic — `n_raters` is printed beside it for that reason. With fewer than two ratings the
bounds are None; identical ratings give a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from icg.rating.store import Rating

CI_METHOD = "t-interval (95%, two-sided, ddof=1)"


@dataclass(frozen=True)
class MethodSummary:
    method: str
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n_raters: int
    n_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def t_interval(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval for the mean; None when fewer than two values."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size < 2:
        return None
    from scipy import stats  # imported here: the web app need not pay for scipy's import

    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, df=values.size - 1)) * float(values.std(ddof=1))
    half /= math.sqrt(values.size)
    return mean - half, mean + half


def summarize(ratings: Iterable[Rating], methods: Iterable[str] = ()) -> list[MethodSummary]:
    """One row per method (methods in `methods` with no ratings get n=0), sorted by method name."""
    by_method: dict[str, list[Rating]] = {method: [] for method in methods}
    for rating in ratings:
        by_method.setdefault(rating.method, []).append(rating)
    rows = []
    for method in sorted(by_method):
        group = by_method[method]
        scores = [r.score for r in group]
        interval = t_interval(scores)
        rows.append(
            MethodSummary(
                method=method,
                n=len(scores),
                mean=float(np.mean(scores)) if scores else None,
                std=float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                n_raters=len({r.rater for r in group}),
                n_images=len({r.image_id for r in group}),
            )
        )
    return rows


def summary_payload(rows: Sequence[MethodSummary], *, study: str, n_raters: int) -> dict:
    """The JSON printed by `icg rate summary --json`."""
    return {
        "study": study,
        "ci": CI_METHOD,
        "scale": [1, 3],
        "n_raters": n_raters,
        "methods": [row.to_dict() for row in rows],
    }
