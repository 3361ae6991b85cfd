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
from typing import Any

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
from icg.pipeline_folder import PresetFolderMixin
from icg.presets_spec import GenerationConfig

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


class FluxCoverPipeline(PresetFolderMixin, DiffusionPipeline, CoverConditioningMixin):
    """Personalized cover generation with a frozen FLUX.1-architecture transformer and the Flux dual path.

    Components: scheduler (`FlowMatchEulerDiscreteScheduler`), vae, text_encoder + tokenizer (CLIP, pooled),
    text_encoder_2 + tokenizer_2 (T5), transformer (with `install_flux_dual_path_adapter` applied),
    context_encoder, projector (c_p of width `joint_attention_dim`), user_encoder (optional).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    # diffusers moves, offloads and lists only the components it knows are optional or required: without
    # this the user encoder stayed on the CPU after `pipe.to("cuda")`
    _optional_components = ["user_encoder"]
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

    @property
    def size_multiple(self) -> int:
        """Height and width are multiples of the VAE factor × the 2×2 latent packing."""
        return self.vae_scale_factor * 2

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
        settings = RolloutSettings(
            num_inference_steps, guidance_scale, height or self.default_size, width or self.default_size,
            adapter_scale=adapter_scale, user_scale=check_user_scale(user_scale),
            true_cfg_scale=true_cfg_scale,
        )  # fmt: skip
        return self.render_embeddings(prompts, context, user_embeds, seeds, settings)

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
        # 1.–4. defaults and checks, item context once per item (P_exp, C_ref), U_pre once per user, the grid
        call = self.prepare_call(
            items, users, num_inference_steps, guidance_scale, max_prompt_tokens, height, width,
            num_images_per_prompt, adapter_scale, user_scale, strict_users, drop_meta_tokens, prompt_suffixes,
            true_cfg_scale,
        )  # fmt: skip
        # 5.–8. text embeddings and c_p per cover, noise, flow-matching loop, decode
        images = self.denoise_call(call, seed)  # (B, 3, H, W) in [0, 1]
        return self.cover_output(images, call, items, users, seed, output_type)


def flux_pipeline_kwargs(pipe: FluxCoverPipeline) -> dict[str, Any]:
    """The backbone components of `pipe` as keyword arguments of diffusers' `FluxPipeline` (the baseline)."""
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return {name: getattr(pipe, name) for name in names}
