"""FluxCoverPipeline: item × user → personalized covers with a frozen FLUX.1 transformer and the dual path.

The same context encoder, user encoder and projector as `CoverPipeline` (shared through
`CoverConditioningMixin`); the backbone half is diffusers' `FluxPipeline`: CLIP pooled + T5 prompt embeddings,
2×2-packed latents with position ids, flow matching (`FlowMatchEulerDiscreteScheduler`, FLUX's resolution-
dependent shift), and the guidance embedding of guidance-distilled FLUX.1-dev as `guidance_scale`.
c_p reaches every double-stream block through `joint_attention_kwargs` (`icg.adapter.flux`).

Guidance. FLUX.1-dev is guidance-distilled: `guidance_scale` (3.5 for the flux preset) is an input of the
transformer, not classifier-free guidance, so one branch runs. `true_cfg_scale > 1` adds FluxPipeline's "true"
CFG, whose unconditional branch sees the empty prompt and the projector of zeros, as in `CoverPipeline`.
With `adapter_scale=0` the covers equal `FluxPipeline`'s for the explicit prompt and the same seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from icg.adapter.attention import check_user_scale
from icg.backbones import FluxBackbone, RolloutSettings
from icg.backbones.flux import (  # re-exported: their import path before icg.backbones
    T5_MAX_LENGTH,
    flow_timesteps,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from icg.pipeline import (
    CoverConditioningMixin,
    CoverItem,
    CoverPipelineOutput,
    CoverUser,
    join_suffix,
)
from icg.pipeline_folder import pipeline_from_spec, pretrained_spec, save_pipeline_folder
from icg.presets_spec import GenerationConfig, PresetSpec

logger = logging.getLogger(__name__)

__all__ = [
    "T5_MAX_LENGTH",
    "FluxCoverPipeline",
    "flow_timesteps",
    "flux_pipeline_kwargs",
    "latent_image_ids",
    "pack_latents",
    "unpack_latents",
]


class FluxCoverPipeline(DiffusionPipeline, CoverConditioningMixin):
    """Personalized cover generation with a frozen FLUX.1-architecture transformer and the Flux dual path.

    Components: scheduler (`FlowMatchEulerDiscreteScheduler`), vae, text_encoder + tokenizer (CLIP, pooled),
    text_encoder_2 + tokenizer_2 (T5), transformer (with `install_flux_dual_path_adapter` applied),
    context_encoder, projector (c_p of width `joint_attention_dim`), user_encoder (optional).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    generation_config = GenerationConfig(num_inference_steps=28, guidance_scale=3.5)  # FLUX.1-dev's defaults
    backbone_class = FluxBackbone

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        context_encoder,
        projector,
        user_encoder=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            context_encoder=context_encoder,
            projector=projector,
            user_encoder=user_encoder,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        with_context_encoder: bool = True,
    ) -> FluxCoverPipeline:
        """The pipeline of a Flux preset folder (one `save_pretrained` wrote) or named preset: see
        `CoverPipeline.from_pretrained`."""
        return cls.from_spec(pretrained_spec(pretrained), device, torch_dtype, with_context_encoder)

    @classmethod
    def from_spec(
        cls,
        spec: PresetSpec,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        with_context_encoder: bool = True,
    ) -> FluxCoverPipeline:
        """Every component of `spec`, loaded once, on `device` (see `icg.loading.load_cover_pipeline`)."""
        return pipeline_from_spec(cls, spec, device, torch_dtype, with_context_encoder)

    def save_pretrained(self, folder: str | Path, name: str | None = None) -> Path:  # type: ignore[override]
        """Write this pipeline as a self-contained preset folder: see `CoverPipeline.save_pretrained`."""
        return save_pipeline_folder(self, folder, name)

    def backbone_pipeline(self) -> DiffusionPipeline:
        """diffusers' `FluxPipeline` over this pipeline's backbone components."""
        from diffusers import FluxPipeline

        return FluxPipeline(**flux_pipeline_kwargs(self))

    @property
    def default_size(self) -> int:
        """Cover side in pixels when height/width are not given: the VAE's sample size (1024 for FLUX.1)."""
        return int(self.vae.config.sample_size)

    @property
    def backbone(self) -> FluxBackbone:
        """The Flux backbone over this pipeline's components: its `rollout` is the flow-matching loop."""
        return FluxBackbone(self)

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: the tokenizer's length, at most FLUX's 512."""
        return self.backbone.max_sequence_length

    # --- inputs ---------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None,
        num_inference_steps: int,
        guidance_scale: float,
        true_cfg_scale: float,
        height: int,
        width: int,
        num_images_per_prompt: int,
        user_scale: float = 1.0,
    ) -> None:
        self.check_cover_inputs(
            items, users, num_inference_steps, guidance_scale, num_images_per_prompt, user_scale
        )
        if true_cfg_scale < 0 or not np.isfinite(true_cfg_scale):
            raise ValueError(f"true_cfg_scale must be a finite number ≥ 0, got {true_cfg_scale}")
        multiple = self.vae_scale_factor * 2  # VAE factor × the 2×2 latent packing
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of {multiple}, got {height}×{width}"
            )

    # --- conditioning ---------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T5 states (B, T, W), CLIP pooled (B, P), text ids (T, 3)), as `FluxPipeline.encode_prompt`."""
        return tuple(self.backbone.encode_prompts(prompts))

    def with_suffix(self, prompt: str, suffix: str) -> str:
        """`prompt, suffix` within the T5 context (EOS excluded); see `join_suffix`."""
        return join_suffix(self.tokenizer_2, self.max_sequence_length - 1, prompt, suffix)

    # FluxPipeline's steps under their names; the rollout calls the backbone's own
    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        generators: list[torch.Generator],
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed initial noise (B, h/2·w/2, 4C) and the image position ids (h/2·w/2, 3), as FluxPipeline."""
        if len(generators) != batch_size:
            raise ValueError(f"{len(generators)} generators for a batch of {batch_size}")
        return self.backbone.prepare_latents(generators, height, width, dtype, device)

    def timesteps(self, num_inference_steps: int, image_seq_len: int, device: torch.device) -> torch.Tensor:
        """FLUX's shifted sigma schedule set on the pipeline's scheduler (see `flow_timesteps`)."""
        return flow_timesteps(self.scheduler, num_inference_steps, image_seq_len, device)

    def guidance(self, guidance_scale: float, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The guidance embedding's input (B,) for guidance-distilled transformers, else None."""
        return self.backbone.guidance(guidance_scale, batch_size, device)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents → images (B, 3, H, W) in [0, 1]."""
        return self.backbone.decode(latents, height, width)

    # --- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def covers_from_embeddings(
        self,
        prompts: list[str],
        context: torch.Tensor,
        user_embeds: torch.Tensor | None,
        seeds: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        adapter_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        true_cfg_scale: float = 1.0,
        user_scale: float = 1.0,
    ) -> torch.Tensor:
        """Covers (B, 3, H, W) in [0, 1]: one prompt, C_ref (B, N, D), U_pre (B, D_u) and seed per cover.

        The denoising half of `__call__`, also what a batch job with precomputed context calls; `user_scale`
        weights the user tokens as in `CoverPipeline` (0 = context only).
        """
        height, width = height or self.default_size, width or self.default_size
        context, user_embeds = self.check_embeddings(prompts, context, user_embeds, seeds)
        text = self.backbone.encode_prompts(prompts)  # (B, T, W), (B, P), (T, 3)
        cond_p, uncond_p = self.personal_tokens(context, user_embeds)
        settings = RolloutSettings(
            num_inference_steps, guidance_scale, height, width, adapter_scale=adapter_scale,
            user_tokens=self.user_tokens(user_embeds), user_scale=check_user_scale(user_scale),
            true_cfg_scale=true_cfg_scale,
        )  # fmt: skip
        return self.backbone.rollout(
            text, cond_p, uncond_p, seeds, settings, self._execution_device, progress=self.progress_bar
        )

    @torch.no_grad()
    def __call__(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        adapter_scale: float | None = None,
        strict_users: bool = True,
        max_prompt_tokens: int | None = None,
        output_type: str = "pil",
        drop_meta_tokens: bool = False,
        prompt_suffixes: list[str] | None = None,
        true_cfg_scale: float = 1.0,
        user_scale: float = 1.0,
    ) -> CoverPipelineOutput:
        """Covers for every (item, user) pair, in item-major order; arguments and sidecars as `CoverPipeline`.

        Cover k starts from noise seeded with `seed + k`. `guidance_scale` is FLUX's embedded guidance;
        `true_cfg_scale > 1` adds classifier-free guidance against the empty prompt and zero context.
        `num_inference_steps`, `guidance_scale` and `max_prompt_tokens` default to `self.generation_config`.
        """
        config = self.generation_settings(num_inference_steps, guidance_scale, max_prompt_tokens)
        num_inference_steps, guidance_scale = config.num_inference_steps, config.guidance_scale
        max_prompt_tokens = config.max_prompt_tokens
        height, width = height or self.default_size, width or self.default_size
        # 1. check inputs
        self.check_inputs(
            items,
            users,
            num_inference_steps,
            guidance_scale,
            true_cfg_scale,
            height,
            width,
            num_images_per_prompt,
            user_scale,
        )

        # 2.–4. item context once per item (P_exp, C_ref), U_pre once per user, the grid in item-major order
        grid = self.cover_grid(
            items, users, num_images_per_prompt, max_prompt_tokens, strict_users, drop_meta_tokens,
            prompt_suffixes,
        )  # fmt: skip

        # 5.–8. text embeddings, c_p, noise, flow-matching loop, decode
        images = self.covers_from_embeddings(
            grid.cell_prompts,
            grid.cover_context(),
            grid.cover_users(),
            [seed + n for n in range(len(grid.cells))],
            num_inference_steps,
            guidance_scale,
            adapter_scale,
            height,
            width,
            true_cfg_scale,
            user_scale,
        )  # (B, 3, H, W) in [0, 1]
        settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                    "true_cfg_scale": true_cfg_scale, "adapter_scale": adapter_scale,
                    "user_scale": float(user_scale),
                    "drop_meta_tokens": drop_meta_tokens, "height": height, "width": width}  # fmt: skip
        output = self.cover_output(images, grid, items, users, seed, output_type, settings)
        for meta in output.metadata:
            meta["backbone"] = self.backbone.kind
        return output


def flux_pipeline_kwargs(pipe: FluxCoverPipeline) -> dict[str, Any]:
    """The backbone components of `pipe` as keyword arguments of diffusers' `FluxPipeline` (the baseline)."""
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return {name: getattr(pipe, name) for name in names}
