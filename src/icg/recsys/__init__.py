"""Recommendation models used to measure what covers are worth downstream (paper §4.6, Table 7)."""

from icg.recsys.mmgcn import (
    MMGCN,
    MMGCNConfig,
    MMGCNTrainConfig,
    Ranked,
    TrainResult,
    evaluate,
    interaction_mask,
    normalized_adjacency,
    rank_metrics,
    train_mmgcn,
)

__all__ = [
    "MMGCN",
    "MMGCNConfig",
    "MMGCNTrainConfig",
    "Ranked",
    "TrainResult",
    "evaluate",
    "interaction_mask",
    "normalized_adjacency",
    "rank_metrics",
    "train_mmgcn",
]
