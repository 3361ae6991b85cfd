"""The backbone-independent half of a pipeline for `icg.loading`: context encoder, user encoder, projector or
adapter (the backbone half is `icg.backbones`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
from icg.backbones.base import hub_offline  # noqa: F401  (its import path before icg.backbones)
from icg.context import ContextEncoder
from icg.errors import ICGError
from icg.presets import PresetSpec

logger = logging.getLogger("icg.loading")  # the name its warning had before the split


def load_encoders(spec: PresetSpec, torch_dtype: torch.dtype = torch.float32, with_context: bool = True):
    """(context encoder or None, user encoder or None) of `spec`: the backbone-independent half of a pipeline.

    `with_context=False` skips the MLLM (a batch job's generation workers get P_exp and C_ref from the
    context stage), unless the preset has no adapter: an untrained projector is sized from the MLLM."""
    context_encoder = None
    if with_context or spec.adapter is None:
        context_encoder = ContextEncoder.from_pretrained(
            spec.context_encoder, num_meta_tokens=spec.num_meta_tokens, torch_dtype=torch_dtype
        )
    user_encoder = None
    if spec.user_encoder is not None:
        from icg.users import TwoTowerModel

        user_encoder = TwoTowerModel.from_pretrained(spec.user_encoder)
    return context_encoder, user_encoder


def untrained_projector(spec: PresetSpec, context_encoder, user_encoder, width: int) -> PersonalizedProjector:
    """A fresh projector sized for `spec`'s encoders and a backbone whose c_p width is `width`."""
    logger.warning("preset '%s' has no adapter: using an untrained one (covers ignore item/user)", spec.name)
    return PersonalizedProjector(
        ProjectorConfig(
            context_dim=context_encoder.hidden_size,
            num_meta_tokens=spec.num_meta_tokens,
            user_dim=user_encoder.config.output_dim if user_encoder is not None else None,
            cross_attention_dim=width,
            num_context_tokens=spec.num_context_tokens,
            num_user_tokens=spec.num_user_tokens if user_encoder is not None else 0,
        )
    )


def load_conditioning(
    spec: PresetSpec,
    torch_dtype: torch.dtype,
    with_context_encoder: bool,
    load: Callable[[], tuple[object, PersonalizedProjector | None]],
    install: Callable[[], object],
    width: int,
) -> tuple[ContextEncoder | None, object | None, PersonalizedProjector]:
    """(context encoder, user encoder, projector) for a loaded backbone, whichever it is: the adapter
    (`load()`) before the MLLM, so a wrong adapter fails in seconds, not after minutes; without one, an
    untrained dual path (`install()`) and a projector of c_p width `width`."""
    projector = None
    if spec.adapter is not None:
        try:
            _, projector = load()
        except ValueError as exc:
            raise ICGError(
                f"{spec.adapter}: cannot load the adapter into the backbone {spec.base_model}: {exc}"
            ) from exc
        if projector is None:
            raise ICGError(f"{spec.adapter}: adapter checkpoint has no projector")
    context_encoder, user_encoder = load_encoders(spec, torch_dtype, with_context_encoder)
    if spec.adapter is None:
        install()
        projector = untrained_projector(spec, context_encoder, user_encoder, width)
    return context_encoder, user_encoder, projector
