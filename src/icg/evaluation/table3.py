"""Paper Table 3: the number of meta tokens N ∈ {1, 2, 4, 8} × with / without the meta-token stage (LPIPS).

Each variant is a context encoder trained by the mini recipe with N meta tokens — with the meta-token loss
(✓: the meta tokens learn to carry the cover's CLIP image embedding) or without it (✗, `meta_weight` 0:
the encoder still learns to write the explicit prompt, the meta tokens get no target, as a frozen
pretrained MLLM's would) — and an adapter trained on top of it (stage 1 + stage 2, the projector sized for
N). To fit a 2-core CPU the variants use a reduced budget (`T3_CONTEXT_EPOCHS`, `T3_ADAPTER_STEPS`), the
same for all eight, so the rows compare with each other, not with the shipped mini (N = 4 ✓ at the full
budget). Every step is resumable; a finished variant is skipped. The covers are then scored like every
table (`tables.run_table`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from icg.data.records import InteractionData
from icg.evaluation.tables import Method

logger = logging.getLogger(__name__)

T3_TOKENS = (1, 2, 4, 8)
T3_CONTEXT_EPOCHS = 4
T3_ADAPTER_STEPS = 150  # per stage


def variant_name(tokens: int, meta_stage: bool) -> str:
    return f"N={tokens} {'✓' if meta_stage else '✗'}"


def train_variant(
    data: InteractionData, base, work: Path, tokens: int, meta_stage: bool, *, threads: int = 1,
    progress: bool = True,
):  # fmt: skip
    """Context encoder + two adapter stages for one (N, stage) cell → the preset spec generating with it."""
    from icg.training.adapter import AdapterTrainConfig, train_adapter_from_preset
    from icg.training.mini_context import MiniContextConfig, train_mini_context

    folder = work / f"n{tokens}_{'meta' if meta_stage else 'nometa'}"
    config = MiniContextConfig(
        num_meta_tokens=tokens, epochs=T3_CONTEXT_EPOCHS, meta_weight=float(meta_stage)
    )
    train_mini_context(data.items, folder / "context", config, clip_dir=base.clip, cache_dir=work / "cache",
                       threads=threads, progress=progress)  # fmt: skip
    spec = dataclasses.replace(
        base, context_encoder=str(folder / "context"), num_meta_tokens=tokens, adapter=None
    )
    recipe = {"steps": T3_ADAPTER_STEPS, "lr": 3e-4, "denoise_weight": 1.0, "checkpoint_every": 50}
    options = {"threads": threads, "progress": progress}
    train_adapter_from_preset(spec, data, folder / "adapter_init", AdapterTrainConfig(stage="init", **recipe),
                              **options)  # fmt: skip
    stage1 = dataclasses.replace(spec, adapter=str(folder / "adapter_init" / "adapter"))
    train_adapter_from_preset(stage1, data, folder / "adapter", AdapterTrainConfig(stage="reward", **recipe),
                              **options)  # fmt: skip
    return dataclasses.replace(spec, adapter=str(folder / "adapter" / "adapter"))


def table3_methods(
    data: InteractionData, base, work: Path, *, meta_stages: tuple[bool, ...] = (False, True),
    tokens: tuple[int, ...] = T3_TOKENS, threads: int = 1, progress: bool = True,
) -> list[Method]:  # fmt: skip
    """Train (or find) every variant, then one table row per variant."""
    methods = []
    for meta_stage in meta_stages:
        for n in tokens:
            spec = train_variant(data, base, work, n, meta_stage, threads=threads, progress=progress)
            methods.append(Method(variant_name(n, meta_stage), adapter=spec.adapter, spec=spec))
    return methods
