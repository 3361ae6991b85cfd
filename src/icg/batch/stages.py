"""The batch job's model stages, as Ray Data class UDFs over dict-of-numpy batches (usable without Ray too).

- `ContextStage` (its own actor pool): loads the MLLM context encoder once per actor; per item → explicit
  prompt P_exp and meta-token embeddings C_ref (N, D). Runs once per item, whatever K is.
- `GenerateStage` (GPU actors when the cluster has GPUs): loads the cover pipeline without its MLLM once per
  actor; per (item, segment) row → one cover, conditioned on P_exp, C_ref and the segment's centroid, and
  written at once (`icg.batch.writer.write_cover`: sidecar, then image, both atomic); returns manifest rows.
The light stages (expansion, manifest parts) are in `icg.batch.writer`. Imports are kept lazy so that a
context actor does not import diffusers and a generation actor does not import the MLLM code it does not use.

Generation calls the pipeline's `covers_from_embeddings` (the generation half of `__call__`, for conditioning
computed elsewhere; SD1.5 and Flux pipelines both have it); a test checks it reproduces the pipeline's covers.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import torch

from icg.batch.writer import manifest_frame, object_column, write_cover
from icg.cover_record import CoverRecord, RunInfo, cover_record

logger = logging.getLogger(__name__)

FORMATS = {"png": "PNG", "webp": "WEBP"}


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup_worker(threads: int | None) -> None:
    """Quiet libraries and fix torch threads (a Ray worker otherwise takes OMP_NUM_THREADS = its CPUs)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)


def encode_image(image: torch.Tensor, fmt: str) -> bytes:
    """One (3, H, W) image in [0, 1] → PNG or WebP bytes (what the file and its checksum hold)."""
    import PIL.Image

    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {list(FORMATS)}, got '{fmt}'")
    array = (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    buffer = io.BytesIO()
    options = {"quality": 90, "method": 4} if fmt == "webp" else {}
    PIL.Image.fromarray(array).save(buffer, format=FORMATS[fmt], **options)
    return buffer.getvalue()


REFERENCE_SIZE = 256  # rendered reference covers, as `icg generate --item-id` renders them


def item_image(item_id: str, image_path: str, render_title: str, genres, year: int):
    """The item's reference cover as an RGB PIL image: its file when it has one, else the rendered cover."""
    if image_path:
        from icg.context.encoder import load_rgb

        return load_rgb(image_path, 0)
    from icg.data.covers.render import render_cover

    return render_cover(
        item_id, render_title, list(genres), year=None if year < 0 else int(year), size=REFERENCE_SIZE
    )


class ContextStage:
    """Item context once per item: explicit prompt + C_ref (the MLLM is loaded once per actor)."""

    def __init__(
        self, spec_json: str, max_prompt_tokens: int, device: str | None = None, threads: int | None = 1
    ):
        from icg.context import ContextEncoder
        from icg.presets import PresetSpec

        _setup_worker(threads)
        spec = PresetSpec.from_json(spec_json)
        self.encoder = ContextEncoder.from_pretrained(
            spec.context_encoder, num_meta_tokens=spec.num_meta_tokens
        )
        self.encoder = self.encoder.to(_device(device)).eval()
        self.max_prompt_tokens = max_prompt_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [
            item_image(str(i), str(p), str(t), g, int(y))
            for i, p, t, g, y in zip(
                batch["item_id"], batch["image_path"], batch["render_title"], batch["genres"], batch["year"],
                strict=True,
            )
        ]  # fmt: skip
        prompts, context = self.encoder.encode_items(
            images, [str(t) for t in batch["title"]], max_new_tokens=self.max_prompt_tokens
        )
        out = {
            "item_id": batch["item_id"],
            "folder": batch["folder"],
            "title": batch["title"],
            "explicit_prompt": object_column(prompts),
            "context": context.float().cpu().numpy(),  # (B, N, D)
        }
        if "segments" in batch:  # the segments still to make for each item ride along to the expansion
            out["segments"] = batch["segments"]
        return out


def generation_pipeline(spec, device: torch.device, torch_dtype: torch.dtype):
    """The preset's cover pipeline (SD1.5 or Flux) without its MLLM: the generation stage gets P_exp and
    C_ref from the context stage, so its actors need not hold the context encoder (7B parameters for the
    real presets)."""
    from icg.loading import load_cover_pipeline

    return load_cover_pipeline(spec, device=device, torch_dtype=torch_dtype, with_context_encoder=False)


class GenerateStage:
    """Covers for (item, segment) rows, written as they are made; the pipeline loads once per actor (on its
    GPU when it has one). Returns the batch's manifest rows."""

    # class defaults for callers that build the stage without __init__ (the device checks)
    user_scale: float = 1.0  # the personalization strength (`CoverPipeline`)
    run: RunInfo | None = None  # what every cover's record shares (preset, models, adapter hash)
    item_source: str = "dataset"  # or "table": where the items came from

    def __init__(
        self,
        spec_json: str,
        centroids: np.ndarray,
        num_inference_steps: int,
        guidance_scale: float,
        adapter_scale: float | None,
        out_dir: str,
        fmt: str,
        device: str | None = None,
        threads: int | None = 1,
        torch_dtype: str = "float32",
        speed: bool | None = None,
        user_scale: float = 1.0,
        run: RunInfo | None = None,
        item_source: str = "dataset",
    ):
        from icg.presets import PresetSpec
        from icg.speed import SpeedOptions, apply_speed_options, default_speed_options

        _setup_worker(threads)
        spec = PresetSpec.from_json(spec_json)
        where = _device(device)
        self.pipe = generation_pipeline(spec, where, getattr(torch, torch_dtype))
        options = default_speed_options(where) if speed is None else (SpeedOptions() if speed else None)
        apply_speed_options(self.pipe, options)
        self.pipe.set_progress_bar_config(disable=True)
        if not self.pipe.projector.config.has_user_path:
            raise ValueError("the preset's projector has no user path: segments cannot condition it")
        # (K, D_u), a writable copy; on the CPU by design: indexed per batch by host segment ids, the
        # pipeline moves the picked rows to its device
        self.centroids = torch.tensor(np.asarray(centroids, dtype=np.float32))
        self.steps, self.guidance, self.adapter_scale = num_inference_steps, guidance_scale, adapter_scale
        self.user_scale = float(user_scale)
        self.out_dir, self.fmt, self.preset = out_dir, fmt, spec.name
        self.run = run if run is not None else RunInfo.from_spec(spec)
        self.item_source = item_source

    def covers(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """The batch's covers (B, 3, H, W) in [0, 1] on the pipeline's device; inputs arrive as host arrays
        (the pipeline moves P_exp's tokens, C_ref and U_pre to its device)."""
        segments = torch.as_tensor(np.asarray(batch["segment"], dtype=np.int64))
        return self.pipe.covers_from_embeddings(
            [str(p) for p in batch["prompt"]],
            torch.from_numpy(np.stack(batch["context"]).astype(np.float32)),  # (B, N, D)
            self.centroids[segments],  # (B, D_u)
            [int(s) for s in batch["seed"]],
            self.steps,
            self.guidance,
            self.adapter_scale,
            user_scale=self.user_scale,
        )

    def record(self, batch: dict[str, np.ndarray], n: int) -> CoverRecord:
        """Row n's `CoverRecord`: the pipeline's metadata of that cover, had `__call__` made it (P_exp is
        the whole prompt: a segment has no prompt suffix), with the job's run info."""
        prompt = str(batch["prompt"][n])
        meta = {"item_id": str(batch["item_id"][n]), "title": str(batch["title"][n]),
                "explicit_prompt": prompt, "prompt": prompt, "seed": int(batch["seed"][n]),
                "num_inference_steps": self.steps, "guidance_scale": self.guidance,
                "user_scale": self.user_scale}  # fmt: skip
        run = self.run if self.run is not None else RunInfo(self.preset, {}, None)
        return cover_record(meta, run, item_source=self.item_source)

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        images = self.covers(batch)
        rows = []
        for n, image in enumerate(images):
            meta = {
                **self.record(batch, n).fields(),
                "segment": int(batch["segment"][n]),  # the user side: a segment's centroid, not a user
                "adapter_scale": self.adapter_scale,
            }
            data = encode_image(image, self.fmt)
            rows.append(write_cover(self.out_dir, str(batch["folder"][n]), data, meta, self.fmt))
        return manifest_frame(rows)
