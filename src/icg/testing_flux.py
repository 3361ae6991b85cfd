"""Seeded tiny FLUX.1 components for tests and benches: the `tiny-flux` preset's builders live in
`icg.presets_tiny_flux` (`--preset tiny-flux` is built there); their names stay importable from here."""

from icg.presets_tiny_flux import (
    TINY_FLUX_SIZE,
    TINY_FLUX_WIDTH,
    TINY_T5_LENGTH,
    get_dummy_flux_components,
    materialize_tiny_flux_preset,
    tiny_flux_scheduler,
    tiny_flux_transformer,
    tiny_flux_vae,
    tiny_ip_adapter_flux_state_dict,
    tiny_t5,
    tiny_t5_tokenizer,
)

__all__ = [
    "TINY_FLUX_SIZE",
    "TINY_FLUX_WIDTH",
    "TINY_T5_LENGTH",
    "get_dummy_flux_components",
    "materialize_tiny_flux_preset",
    "tiny_flux_scheduler",
    "tiny_flux_transformer",
    "tiny_flux_vae",
    "tiny_ip_adapter_flux_state_dict",
    "tiny_t5",
    "tiny_t5_tokenizer",
]
