"""Trainers of the mini preset's models: mini_clip (re-exported here), mini_vae, mini_unet, mini_context;
`icg.training.mini` runs them in order and packages the preset."""

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
