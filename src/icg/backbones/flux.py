"""The Flux backbone: CLIP pooled + T5 prompt states, 2×2-packed latents, flow matching, embedded guidance.

The backbone half of diffusers' `FluxPipeline`: FlowMatchEulerDiscreteScheduler on FLUX's resolution-dependent
shifted sigmas, and the guidance embedding of guidance-distilled FLUX.1-dev as `guidance_scale` (one branch).
`true_cfg_scale > 1` adds FluxPipeline's "true" CFG against the empty prompt and `uncond_p`. c_p reaches every
double-stream block through `joint_attention_kwargs` (`icg.adapter.flux`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from icg.adapter.flux import (
    get_flux_adapter_layers,
    install_flux_dual_path_adapter,
    load_flux_adapter,
    personalized_flux_kwargs,
)
from icg.backbones.base import (
    SINGLE_FILE_SUFFIXES,
    AdapterFunctions,
    Backbone,
    Conditioning,
    Generators,
    Predict,
    RolloutSettings,
    guide,
    load_folder,
)
from icg.errors import ICGError

T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length


class FluxText(NamedTuple):
    """Flux's text conditioning: T5 states (B, T, W), CLIP pooled (B, P), text position ids (T, 3)."""

    states: Tensor
    pooled: Tensor
    ids: Tensor


# FLUX's 2×2 latent packing and image position ids. diffusers keeps them as private static methods of
# FluxPipeline (`_pack_latents`, `_unpack_latents`, `_prepare_latent_image_ids`), so ICG owns these copies;
# tests/test_pipeline_flux.py checks them against FluxPipeline (its covers through the public __call__, and
# the private methods themselves while they exist).
def pack_latents(latents: Tensor) -> Tensor:
    """(B, C, h, w) → (B, h/2·w/2, 4C): each 2×2 patch becomes one token (channels, then the 2×2)."""
    batch, channels, h, w = latents.shape
    latents = latents.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(batch, (h // 2) * (w // 2), channels * 4)


def unpack_latents(latents: Tensor, height: int, width: int, vae_scale_factor: int) -> Tensor:
    """Packed (B, L, 4C) → (B, C, h, w) for an image of `height` × `width` pixels."""
    batch, _, channels = latents.shape
    h, w = 2 * (int(height) // (vae_scale_factor * 2)), 2 * (int(width) // (vae_scale_factor * 2))
    latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels // 4, h, w)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Position ids (height·width, 3) of the packed tokens: (0, row, column), made on `device`."""
    ids = torch.zeros(height, width, 3, device=device)  # (h/2, w/2, 3), float32 as FluxPipeline's
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 3).to(dtype)


def flow_timesteps(scheduler, num_inference_steps: int, image_seq_len: int, device: torch.device) -> Tensor:
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


class FluxBackbone(Backbone):
    """A `FluxCoverPipeline`'s vae, CLIP and T5 text encoders and transformer."""

    kind = "flux"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    dual_path = AdapterFunctions(install_flux_dual_path_adapter, load_flux_adapter, get_flux_adapter_layers)
    personal_width_key = "joint_attention_dim"

    @classmethod
    def load_components(
        cls, base_model: str, base_config: str | None = None, torch_dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """The FLUX.1 components of a diffusers folder or hub id, frozen, by name (FluxPipeline's names).
        Single-file Flux checkpoints (and so `base_config`) are not supported."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        if base_config is not None:
            raise ICGError(f"{base_model}: base_config (single-file backbones) is not supported for flux")
        if base_model.endswith(SINGLE_FILE_SUFFIXES) or Path(base_model).is_file():
            raise ICGError(
                f"{base_model}: single-file Flux checkpoints are not supported; give a diffusers folder"
            )
        classes = {"transformer": FluxTransformer2DModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                   "tokenizer": CLIPTokenizer, "text_encoder_2": T5EncoderModel, "tokenizer_2": T5Tokenizer,
                   "scheduler": FlowMatchEulerDiscreteScheduler}  # fmt: skip
        return load_folder(base_model, classes, torch_dtype, "the Flux backbone")

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: the tokenizer's length, at most FLUX's 512."""
        return min(int(self.pipe.tokenizer_2.model_max_length), T5_MAX_LENGTH)

    def encode_prompts(self, prompts: list[str]) -> FluxText:
        """(T5 states (B, T, W), CLIP pooled (B, P), text ids (T, 3)), as `FluxPipeline.encode_prompt`."""
        pipe = self.pipe
        clip_ids = pipe.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = pipe.text_encoder(
            clip_ids.to(pipe.text_encoder.device), output_hidden_states=False
        ).pooler_output
        t5_ids = pipe.tokenizer_2(
            list(prompts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        text = pipe.text_encoder_2(t5_ids.to(pipe.text_encoder_2.device), output_hidden_states=False)[0]
        text = text.to(pipe.text_encoder_2.dtype)
        text_ids = torch.zeros(text.shape[1], 3, device=text.device, dtype=pipe.text_encoder.dtype)
        return FluxText(text, pooled.to(pipe.text_encoder.dtype), text_ids)

    def take(self, text: FluxText, index: Tensor) -> FluxText:
        return FluxText(text.states[index], text.pooled[index], text.ids)  # the ids are per token, shared

    def text_dtype(self, text: FluxText) -> torch.dtype:
        return text.states.dtype

    def prepare_latents(
        self, generators: Generators, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Packed initial noise (B, h/2·w/2, 4C), one generator per cover, and the image position ids
        (h/2·w/2, 3), as FluxPipeline."""
        channels = self.pipe.transformer.config.in_channels // 4
        h, w = height // self.pipe.vae_scale_factor, width // self.pipe.vae_scale_factor
        shape = (len(generators), channels, h, w)
        latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
        return pack_latents(latents), latent_image_ids(h // 2, w // 2, device, dtype)

    def guidance(self, guidance_scale: float, batch_size: int, device: torch.device) -> Tensor | None:
        """The guidance embedding's input (B,) for guidance-distilled transformers, else None."""
        if not self.pipe.transformer.config.guidance_embeds:
            return None
        return torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(batch_size)

    def velocity(
        self,
        latents: Tensor,
        sigma: Tensor,
        text: FluxText,
        image_ids: Tensor,
        attention_kwargs: dict[str, Any] | None,
        guidance: Tensor | None,
    ) -> Tensor:
        """The adapted transformer's velocity for packed latents (B, L, 4C) at σ = t/1000 (B,), in the
        latents' dtype (the transformer runs in its own)."""
        dtype = self.pipe.transformer.dtype
        return self.pipe.transformer(
            hidden_states=latents.to(dtype),
            timestep=sigma.to(dtype),
            guidance=guidance,
            pooled_projections=text.pooled.to(dtype),
            encoder_hidden_states=text.states.to(dtype),
            txt_ids=text.ids,
            img_ids=image_ids,
            joint_attention_kwargs=attention_kwargs,
            return_dict=False,
        )[0].to(latents.dtype)

    def sampler(
        self, cond: Conditioning, generators: Generators, settings: RolloutSettings, device: torch.device
    ) -> tuple[Tensor, Tensor, Predict]:
        dtype, text, true_cfg = self.pipe.transformer.dtype, cond.text, settings.true_cfg_scale
        user = (settings.user_tokens, settings.user_scale)
        cond_kwargs = personalized_flux_kwargs(cond.cond_p.to(dtype), settings.adapter_scale, *user)
        if true_cfg > 1.0:
            with torch.no_grad():
                empty = self.encode_prompts([""])
            empty = FluxText(
                empty.states.expand_as(text.states), empty.pooled.expand_as(text.pooled), text.ids
            )
            uncond_kwargs = personalized_flux_kwargs(cond.uncond_p.to(dtype), settings.adapter_scale, *user)
        latents, image_ids = self.prepare_latents(
            generators, settings.height, settings.width, settings.latent_dtype, device
        )
        timesteps = flow_timesteps(settings.scheduler, settings.num_inference_steps, latents.shape[1], device)
        guidance = self.guidance(settings.guidance_scale, latents.shape[0], device)

        def predict(latents: Tensor, i: int, t: Tensor) -> Tensor:
            sigma = t.expand(latents.shape[0]).to(latents.dtype) / 1000  # FluxPipeline passes t / 1000
            velocity = self.velocity(latents, sigma, text, image_ids, cond_kwargs, guidance)
            if true_cfg <= 1.0:
                return velocity
            uncond = self.velocity(latents, sigma, empty, image_ids, uncond_kwargs, guidance)
            return guide(uncond, velocity, true_cfg)

        return latents, timesteps, predict

    def step(
        self, scheduler: Any, output: Tensor, index: int, t: Tensor, latents: Tensor, want_x0: bool
    ) -> tuple[Tensor, Tensor | None]:
        # x̂0 = x_t − σ_t·v: ReFL's one-step prediction, the flow-matching twin of DDIM's x̂0
        x0 = latents - scheduler.sigmas[index].to(latents.device) * output if want_x0 else None
        return scheduler.step(output, t, latents, return_dict=False)[0], x0

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        vae = self.pipe.vae
        latents = unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype)).sample.to(latents.dtype)
        return (images / 2 + 0.5).clamp(0, 1)
