"""Personalized context adaptation (paper §3.2-3.3): projector, dual-path cross-attention, checkpoints."""

from icg.adapter.attention import (
    AdapterLayers,
    DualPathAttnProcessor,
    PersonalTokens,
    get_adapter_layers,
    install_dual_path_adapter,
    personalized_unet_inputs,
    set_adapter_scale,
)
from icg.adapter.checkpoint import (
    AdapterCheckpointConfig,
    IPAdapterImport,
    load_adapter,
    load_ip_adapter_sd15,
    save_adapter,
)
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig

__all__ = [
    "AdapterCheckpointConfig",
    "AdapterLayers",
    "DualPathAttnProcessor",
    "IPAdapterImport",
    "PersonalTokens",
    "PersonalizedProjector",
    "ProjectorConfig",
    "get_adapter_layers",
    "install_dual_path_adapter",
    "load_adapter",
    "load_ip_adapter_sd15",
    "personalized_unet_inputs",
    "save_adapter",
    "set_adapter_scale",
]
