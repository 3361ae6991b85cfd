"""Per-method scores aggregated per rater first (paper Table 2), with a 95% Student-t interval over raters.

Ratings by one rater are correlated (one rater's taste, one session), so the unit of the interval is the
rater, not the rating: for each method, each rater's scores are averaged, then the method's `mean` is the
mean of those rater means and the interval is mean ± t_{0.975, k-1} · s / √k over the k rater means
(s: sample standard deviation, ddof=1). A rater who rates 100 covers weighs as much as one who rates 10, and
inventing ratings cannot narrow the interval. `n` (ratings) and `n_raters` are printed beside it;
`rating_mean` is the plain mean over ratings, for reference. With fewer than two raters the bounds are None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from icg.rating.store import Rating

CI_METHOD = "t-interval over raters' means (95%, two-sided, ddof=1); mean = mean of rater means"


@dataclass(frozen=True)
class MethodSummary:
    method: str
    n: int  # ratings
    mean: float | None  # mean of the raters' means
    std: float | None  # standard deviation of the raters' means (ddof=1)
    ci_low: float | None
    ci_high: float | None
    n_raters: int
    n_images: int
    rating_mean: float | None = None  # mean over all ratings (not the headline figure)

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
        per_rater: dict[str, list[int]] = {}
        for rating in group:
            per_rater.setdefault(rating.rater, []).append(rating.score)
        rater_means = [float(np.mean(scores)) for scores in per_rater.values()]
        interval = t_interval(rater_means)
        rows.append(
            MethodSummary(
                method=method,
                n=len(group),
                mean=float(np.mean(rater_means)) if rater_means else None,
                std=float(np.std(rater_means, ddof=1)) if len(rater_means) > 1 else None,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                n_raters=len(per_rater),
                n_images=len({r.image_id for r in group}),
                rating_mean=float(np.mean([r.score for r in group])) if group else None,
            )
        )
    return rows


def summary_payload(
    rows: Sequence[MethodSummary], *, study: str, n_raters: int, n_ratings: int | None = None
) -> dict:
    """The JSON printed by `icg rate summary --json`."""
    return {
        "study": study,
        "ci": CI_METHOD,
        "scale": [1, 3],
        "n_raters": n_raters,
        "n_ratings": n_ratings,
        "methods": [row.to_dict() for row in rows],
    }
