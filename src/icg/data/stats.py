"""Dataset statistics: the first thing to look at before training on a dataset."""

from __future__ import annotations

import numpy as np

from icg.data.records import InteractionData, primary_genre


def dataset_stats(data: InteractionData, min_interactions: int = 6) -> dict[str, object]:
    """Counts and distributions of one dataset, as plain JSON-ready values."""
    inter = data.interactions
    per_user = inter.groupby("user_id", sort=False).size()
    per_item = inter.groupby("item_id", sort=False).size()
    n_users = inter["user_id"].nunique()
    n_items = len(data.items)
    genres = data.items["genres"].map(primary_genre).value_counts()
    signal = inter["signal"].to_numpy(dtype=np.float64)
    return {
        "dataset": data.name,
        "source": str(data.source) if data.source is not None else None,
        "users": int(len(data.users)),
        "items": int(n_items),
        "ratings": int(len(inter)),
        "interactions": int(len(inter)),
        "users_with_interactions": int(n_users),
        "items_with_interactions": int(len(per_item)),
        f"users_with_{min_interactions}plus": int((per_user >= min_interactions).sum()),
        "density": float(len(inter) / max(n_users * n_items, 1)),
        "interactions_per_user": {
            "min": int(per_user.min()),
            "median": float(per_user.median()),
            "max": int(per_user.max()),
        },
        "signal": {
            "name": data.signal_name,
            "min": float(signal.min()),
            "mean": float(signal.mean()),
            "max": float(signal.max()),
        },
        "items_with_cover": int(data.items["cover_path"].notna().sum()),
        "primary_genres": {str(k): int(v) for k, v in genres.items()},
    }
