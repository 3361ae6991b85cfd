"""The batch job's model stages, as Ray Data class UDFs over dict-of-numpy batches (usable without Ray too).

- `ContextStage` (its own actor pool): loads the MLLM context encoder once per actor; per item → explicit
  prompt P_exp and meta-token embeddings C_ref (N, D). Runs once per item, whatever K is.
- `GenerateStage` (GPU actors when the cluster has GPUs): loads the cover pipeline without its MLLM once per
  actor; per (item, segment) row → one cover, conditioned on P_exp, C_ref and the segment's centroid, and
  written at once (`icg.batch.writer.write_cover`: sidecar, then image, both atomic); returns manifest rows.
The light stages (expansion, manifest parts) are in `icg.batch.writer`. Imports are kept lazy so that a
context actor does not import diffusers and a generation actor does not import the MLLM code it does not use.

`covers_from_embeddings` is steps 5–8 of `CoverPipeline.__call__` (text, personal tokens, noise, denoising,
decode) for conditioning that is already computed; a test checks it reproduces the pipeline's covers.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import torch

from icg.batch.writer import manifest_frame, object_column, write_cover

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


@torch.no_grad()
def covers_from_embeddings(
    pipe,
    prompts: list[str],
    context: torch.Tensor,
    user_embeds: torch.Tensor | None,
    seeds: list[int],
    num_inference_steps: int,
    guidance_scale: float,
    adapter_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Covers (B, 3, H, W) in [0, 1] for precomputed P_exp (B), C_ref (B, N, D) and U_pre (B, D_u).

    Cover b starts from noise seeded with `seeds[b]`, exactly as cover k of `pipe(..., seed=s)` starts from
    `s + k`, so a row's cover does not depend on which other rows share its batch (up to float rounding).
    """
    from icg.adapter.attention import personalized_unet_inputs

    if not (len(prompts) == len(context) == len(seeds)) or (
        user_embeds is not None and len(user_embeds) != len(prompts)
    ):
        raise ValueError("prompts, context, user_embeds and seeds must have one entry per cover")
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    device, dtype = pipe.device, next(pipe.projector.parameters()).dtype
    do_cfg = guidance_scale > 1.0
    context = context.to(device=device, dtype=dtype)
    user_embeds = None if user_embeds is None else user_embeds.to(device=device, dtype=dtype)
    for name, tensor in (("context embeddings", context), ("user embeddings", user_embeds)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    text = pipe.encode_text(list(prompts))  # (B, T, W)
    cond_p, uncond_p = pipe.personal_tokens(context, user_embeds)
    cond_p, uncond_p = cond_p.to(text.dtype), uncond_p.to(text.dtype)
    if do_cfg:
        empty = pipe.encode_text([""]).expand_as(text)
        text, personal = torch.cat([empty, text]), torch.cat([uncond_p, cond_p])
    else:
        personal = cond_p
    unet_inputs = personalized_unet_inputs(text, personal, adapter_scale)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    latents = pipe.prepare_latents(len(seeds), height, width, text.dtype, generators, device)
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    for t in pipe.scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = pipe.scheduler.scale_model_input(model_input, t)
        noise = pipe.unet(model_input, t, **unet_inputs).sample
        if do_cfg:
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
        latents = pipe.scheduler.step(noise, t, latents).prev_sample
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)


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
    """A CoverPipeline without its MLLM: the generation stage gets P_exp and C_ref from the context stage,
    so its actors need not hold the context encoder (7B parameters for the sd15 preset). Same loaders as
    `icg.loading.load_cover_pipeline`; a preset without an adapter falls back to that (it sizes the untrained
    projector from the MLLM)."""
    from icg.adapter.checkpoint import load_adapter
    from icg.errors import ICGError
    from icg.loading import load_backbone, load_cover_pipeline
    from icg.pipeline import CoverPipeline
    from icg.users import TwoTowerModel

    if spec.adapter is None or spec.user_encoder is None:
        return load_cover_pipeline(spec, device=device, torch_dtype=torch_dtype)
    if spec.backbone != "sd15" or spec.base_model is None:
        raise ICGError(f"preset '{spec.name}': the batch job needs an sd15 backbone")
    unet, vae, text_encoder, tokenizer, scheduler = load_backbone(
        spec.base_model, spec.base_config, torch_dtype
    )
    try:
        _, projector = load_adapter(spec.adapter, unet)
    except ValueError as exc:
        raise ICGError(f"{spec.adapter}: cannot load the adapter into {spec.base_model}: {exc}") from exc
    if projector is None:
        raise ICGError(f"{spec.adapter}: adapter checkpoint has no projector")
    pipe = CoverPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        context_encoder=None,
        projector=projector.to(dtype=torch_dtype).eval(),
        user_encoder=TwoTowerModel.from_pretrained(spec.user_encoder),
    )
    return pipe.to(device)


class GenerateStage:
    """Covers for (item, segment) rows, written as they are made; the pipeline loads once per actor (on its
    GPU when it has one). Returns the batch's manifest rows."""

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
    ):
        from icg.presets import PresetSpec

        _setup_worker(threads)
        spec = PresetSpec.from_json(spec_json)
        self.pipe = generation_pipeline(spec, _device(device), getattr(torch, torch_dtype))
        self.pipe.set_progress_bar_config(disable=True)
        if not self.pipe.projector.config.has_user_path:
            raise ValueError("the preset's projector has no user path: segments cannot condition it")
        self.centroids = torch.tensor(np.asarray(centroids, dtype=np.float32))  # (K, D_u), a writable copy
        self.steps, self.guidance, self.adapter_scale = num_inference_steps, guidance_scale, adapter_scale
        self.out_dir, self.fmt, self.preset = out_dir, fmt, spec.name

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        segments = torch.as_tensor(np.asarray(batch["segment"], dtype=np.int64))
        images = covers_from_embeddings(
            self.pipe,
            [str(p) for p in batch["prompt"]],
            torch.from_numpy(np.stack(batch["context"]).astype(np.float32)),  # (B, N, D)
            self.centroids[segments],  # (B, D_u)
            [int(s) for s in batch["seed"]],
            self.steps,
            self.guidance,
            self.adapter_scale,
        )
        rows = []
        for n, image in enumerate(images):
            meta = {
                "item_id": str(batch["item_id"][n]),
                "title": str(batch["title"][n]),
                "segment": int(batch["segment"][n]),
                "seed": int(batch["seed"][n]),
                "preset": self.preset,
                "prompt": str(batch["prompt"][n]),
                "num_inference_steps": self.steps,
                "guidance_scale": float(self.guidance),
                "adapter_scale": self.adapter_scale,
            }
            data = encode_image(image, self.fmt)
            rows.append(write_cover(self.out_dir, str(batch["folder"][n]), data, meta, self.fmt))
        return manifest_frame(rows)
