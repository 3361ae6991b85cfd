"""Do the rendered covers carry the genre? A colour-histogram probe answers with a held-out accuracy.

The downstream models read genre (and so the item's meaning) from the reference cover; if a linear model on
colour histograms cannot recover the primary genre, the covers are decoration and the reference-image path of
ICG has nothing to learn from. The probe is item-level (each item is in train or test, never both).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from icg.data.covers.render import check_size, item_genres, render_cover

logger = logging.getLogger(__name__)

BINS = 8  # per channel → 8*8*8 = 512 joint RGB bins


def colour_histogram(rgb: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Normalized joint RGB histogram of an (H, W, 3) uint8 image, square-rooted (Hellinger embedding)."""
    q = (rgb.reshape(-1, 3).astype(np.int64) * bins) // 256
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = np.bincount(index, minlength=bins**3).astype(np.float64)
    return np.sqrt(hist / hist.sum())


def measure_genre_signal(
    items: pd.DataFrame,
    size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.25,
    min_count: int = 10,
) -> dict:
    """Held-out accuracy of logistic regression predicting the primary genre from cover colour histograms.

    Covers are rendered in memory (variant 0). Genres with fewer than `min_count` items are dropped so that
    the stratified split has each class on both sides. Returns accuracy beside two chance levels: the
    majority class of the training split scored on the test split, and 1/n_classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    size = check_size(size)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    start = time.perf_counter()
    genres = items["genres"].map(item_genres)
    primary = genres.map(lambda g: g[0] if g else "unknown")
    counts = primary.value_counts()
    kept = counts[counts >= min_count].index
    mask = primary.isin(kept).to_numpy()
    if len(kept) < 2:
        raise ValueError(f"need at least 2 genres with >= {min_count} items, have {dict(counts)}")
    sub = items.loc[mask]
    years = sub["year"] if "year" in sub.columns else pd.Series([None] * len(sub), index=sub.index)
    features = np.stack(
        [
            colour_histogram(
                np.asarray(render_cover(str(i), str(t), g, None if pd.isna(y) else int(y), size))
            )
            for i, t, g, y in zip(sub["item_id"], sub["title"], genres[mask], years, strict=True)
        ]
    )
    labels = primary[mask].to_numpy()
    render_s = time.perf_counter() - start
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    model = LogisticRegression(C=10.0, max_iter=5000)
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    values, freq = np.unique(y_train, return_counts=True)
    majority = values[np.argmax(freq)]
    per_genre = {
        str(g): float(np.mean(predicted[y_test == g] == g)) for g in sorted(kept) if np.any(y_test == g)
    }
    result = {
        "accuracy": float(np.mean(predicted == y_test)),
        "chance": float(np.mean(y_test == majority)),
        "majority_class": str(majority),
        "uniform_chance": 1.0 / len(kept),
        "n_classes": int(len(kept)),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "dropped_genres": {str(g): int(c) for g, c in counts.items() if c < min_count},
        "per_genre_accuracy": per_genre,
        "size": size,
        "features": f"sqrt-normalized joint RGB histogram, {BINS}x{BINS}x{BINS} bins; "
        "LogisticRegression(C=10)",
        "render_seconds": round(render_s, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    logger.info(
        "genre probe: accuracy %.3f vs majority chance %.3f (%d classes, %d test items)",
        result["accuracy"],
        result["chance"],
        result["n_classes"],
        result["n_test"],
    )
    return result
