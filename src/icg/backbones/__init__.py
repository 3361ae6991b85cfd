"""Backbones: the frozen diffusion models a cover pipeline is built on (SD1.5 UNet, FLUX.1 transformer).

`Backbone` is the one interface (encode prompts, initial noise, ONE `rollout`, decode) that both cover
pipelines and the adapter trainer call; `backbone_kind` says which one a pipeline, preset or config is.
"""

from icg.backbones.base import Backbone, RolloutSettings, backbone_kind
from icg.backbones.flux import FluxBackbone, FluxText
from icg.backbones.sd15 import SD15Backbone

BACKBONE_CLASSES: dict[str, type[Backbone]] = {"sd15": SD15Backbone, "flux": FluxBackbone}


def backbone_for(pipe) -> Backbone:
    """The `Backbone` of a cover pipeline (its components, read at each call)."""
    backbone = getattr(pipe, "backbone", None)
    if isinstance(backbone, Backbone):
        return backbone
    return BACKBONE_CLASSES[backbone_kind(pipe)](pipe)


__all__ = [
    "BACKBONE_CLASSES",
    "Backbone",
    "FluxBackbone",
    "FluxText",
    "RolloutSettings",
    "SD15Backbone",
    "backbone_kind",
    "backbone_for",
]
