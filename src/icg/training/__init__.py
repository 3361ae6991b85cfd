"""Trainers of ICG's components that live outside their own package (the mini preset's CLIP, …)."""

from icg.training.mini_clip import (
    MINI_CLIP_PRESETS,
    MiniClipConfig,
    build_clip_model,
    build_processor,
    evaluate_clip,
    mini_clip_preset,
    train_mini_clip,
)

__all__ = [
    "MINI_CLIP_PRESETS",
    "MiniClipConfig",
    "build_clip_model",
    "build_processor",
    "evaluate_clip",
    "mini_clip_preset",
    "train_mini_clip",
]
