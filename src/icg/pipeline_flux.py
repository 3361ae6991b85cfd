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

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from icg.adapter.attention import check_user_scale
from icg.adapter.flux import personalized_flux_kwargs
from icg.pipeline import (
    CoverConditioningMixin,
    CoverItem,
    CoverPipelineOutput,
    CoverUser,
    join_suffix,
)

logger = logging.getLogger(__name__)

T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length


# FLUX's 2×2 latent packing and image position ids. diffusers keeps them as private static methods of
# FluxPipeline (`_pack_latents`, `_unpack_latents`, `_prepare_latent_image_ids`), so ICG owns these copies;
# tests/test_pipeline_flux.py checks them against FluxPipeline (its covers through the public __call__, and
# the private methods themselves while they exist).
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2·w/2, 4C): each 2×2 patch becomes one token (channels, then the 2×2)."""
    batch, channels, h, w = latents.shape
    latents = latents.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(batch, (h // 2) * (w // 2), channels * 4)


def unpack_latents(latents: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Packed (B, L, 4C) → (B, C, h, w) for an image of `height` × `width` pixels."""
    batch, _, channels = latents.shape
    h, w = 2 * (int(height) // (vae_scale_factor * 2)), 2 * (int(width) // (vae_scale_factor * 2))
    latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels // 4, h, w)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (height·width, 3) of the packed tokens: (0, row, column), made on `device`."""
    ids = torch.zeros(height, width, 3, device=device)  # (h/2, w/2, 3), float32 as FluxPipeline's
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 3).to(dtype)


class FluxCoverPipeline(DiffusionPipeline, CoverConditioningMixin):
    """Personalized cover generation with a frozen FLUX.1-architecture transformer and the Flux dual path.

    Components: scheduler (`FlowMatchEulerDiscreteScheduler`), vae, text_encoder + tokenizer (CLIP, pooled),
    text_encoder_2 + tokenizer_2 (T5), transformer (with `install_flux_dual_path_adapter` applied),
    context_encoder, projector (c_p of width `joint_attention_dim`), user_encoder (optional).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"

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

    @property
    def default_size(self) -> int:
        """Cover side in pixels when height/width are not given: the VAE's sample size (1024 for FLUX.1)."""
        return int(self.vae.config.sample_size)

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: the tokenizer's length, at most FLUX's 512."""
        return min(int(self.tokenizer_2.model_max_length), T5_MAX_LENGTH)

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
        clip_ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.text_encoder(
            clip_ids.to(self.text_encoder.device), output_hidden_states=False
        ).pooler_output
        t5_ids = self.tokenizer_2(
            list(prompts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        text = self.text_encoder_2(t5_ids.to(self.text_encoder_2.device), output_hidden_states=False)[0]
        text = text.to(self.text_encoder_2.dtype)
        text_ids = torch.zeros(text.shape[1], 3, device=text.device, dtype=self.text_encoder.dtype)
        return text, pooled.to(self.text_encoder.dtype), text_ids

    def with_suffix(self, prompt: str, suffix: str) -> str:
        """`prompt, suffix` within the T5 context (EOS excluded); see `join_suffix`."""
        return join_suffix(self.tokenizer_2, self.max_sequence_length - 1, prompt, suffix)

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
        channels = self.transformer.config.in_channels // 4
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        latents = randn_tensor((batch_size, channels, h, w), generator=generators, device=device, dtype=dtype)
        latents = pack_latents(latents)
        image_ids = latent_image_ids(h // 2, w // 2, device, dtype)
        return latents, image_ids

    def timesteps(self, num_inference_steps: int, image_seq_len: int, device: torch.device) -> torch.Tensor:
        """FLUX's shifted sigma schedule set on the pipeline's scheduler (see `flow_timesteps`)."""
        return flow_timesteps(self.scheduler, num_inference_steps, image_seq_len, device)

    def guidance(self, guidance_scale: float, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The guidance embedding's input (B,) for guidance-distilled transformers, else None."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(batch_size)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents → images (B, 3, H, W) in [0, 1]."""
        latents = unpack_latents(latents, height, width, self.vae_scale_factor)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        images = self.vae.decode(latents.to(self.vae.dtype)).sample
        return (images / 2 + 0.5).clamp(0, 1)

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
        device = self._execution_device
        context, user_embeds = self.check_embeddings(prompts, context, user_embeds, seeds)
        text, pooled, text_ids = self.encode_prompt(prompts)  # (B, T, W), (B, P), (T, 3)
        dtype = self.transformer.dtype
        cond_p, uncond_p = self.personal_tokens(context, user_embeds)
        user = (self.user_tokens(user_embeds), check_user_scale(user_scale))
        cond_kwargs = personalized_flux_kwargs(cond_p.to(dtype), adapter_scale, *user)
        do_true_cfg = true_cfg_scale > 1.0
        if do_true_cfg:
            empty, empty_pooled, _ = self.encode_prompt([""])
            empty, empty_pooled = empty.expand_as(text), empty_pooled.expand_as(pooled)
            uncond_kwargs = personalized_flux_kwargs(uncond_p.to(dtype), adapter_scale, *user)

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents, image_ids = self.prepare_latents(len(seeds), height, width, text.dtype, generators, device)
        timesteps = self.timesteps(num_inference_steps, latents.shape[1], device)
        guidance = self.guidance(guidance_scale, latents.shape[0], device)
        for t in self.progress_bar(timesteps):
            timestep = t.expand(latents.shape[0]).to(latents.dtype)
            common = {"hidden_states": latents, "timestep": timestep / 1000, "guidance": guidance,
                      "txt_ids": text_ids, "img_ids": image_ids, "return_dict": False}  # fmt: skip
            velocity = self.transformer(
                **common,
                pooled_projections=pooled,
                encoder_hidden_states=text,
                joint_attention_kwargs=cond_kwargs,
            )[0]
            if do_true_cfg:
                uncond = self.transformer(
                    **common,
                    pooled_projections=empty_pooled,
                    encoder_hidden_states=empty,
                    joint_attention_kwargs=uncond_kwargs,
                )[0]
                velocity = uncond + true_cfg_scale * (velocity - uncond)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
        return self.decode(latents, height, width)

    @torch.no_grad()
    def __call__(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        seed: int = 0,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        adapter_scale: float | None = None,
        strict_users: bool = True,
        max_prompt_tokens: int = 77,
        output_type: str = "pil",
        drop_meta_tokens: bool = False,
        prompt_suffixes: list[str] | None = None,
        true_cfg_scale: float = 1.0,
        user_scale: float = 1.0,
    ) -> CoverPipelineOutput:
        """Covers for every (item, user) pair, in item-major order; arguments and sidecars as `CoverPipeline`.

        Cover k starts from noise seeded with `seed + k`. `guidance_scale` is FLUX's embedded guidance;
        `true_cfg_scale > 1` adds classifier-free guidance against the empty prompt and zero context.
        """
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
            meta["backbone"] = "flux"
        return output


def flow_timesteps(
    scheduler, num_inference_steps: int, image_seq_len: int, device: torch.device
) -> torch.Tensor:
    """FLUX's sigma schedule 1 → 1/N shifted by μ(image tokens), set on `scheduler`, as in FluxPipeline."""
    config = scheduler.config
    sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    if config.get("use_flow_sigmas", False):
        sigmas = None
    mu = calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
    scheduler.set_begin_index(0)
    return timesteps


def flux_pipeline_kwargs(pipe: FluxCoverPipeline) -> dict[str, Any]:
    """The backbone components of `pipe` as keyword arguments of diffusers' `FluxPipeline` (the baseline)."""
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    return {name: getattr(pipe, name) for name in names}
