"""The SD1.5 backbone: CLIP text states, a UNet with the dual path, DDIM with classifier-free guidance.

The unconditional branch sees the empty prompt and `uncond_p` (the projector of zeros), as diffusers does
for IP-Adapter's negative image embeddings; with guidance_scale ≤ 1 only the conditional branch runs.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from icg.adapter.attention import get_adapter_layers, personalized_unet_inputs
from icg.backbones.base import Backbone, Conditioning, Generators, Predict, RolloutSettings, guide


class SD15Backbone(Backbone):
    """A `CoverPipeline`'s vae, text_encoder, tokenizer and unet (textual-inversion tokens included)."""

    kind = "sd15"
    denoiser_name = "unet"
    text_encoder_names = ("text_encoder",)

    def adapter_layers(self) -> nn.Module:
        return get_adapter_layers(self.pipe.unet)

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """CLIP text hidden states c_t for each prompt, padded to the tokenizer's max length → (B, T, W)."""
        pipe = self.pipe
        prompts = pipe.maybe_convert_prompt(list(prompts), pipe.tokenizer)  # multi-vector inversion tokens
        tokens = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]

    def prepare_latents(
        self, generators: Generators, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Unit Gaussian noise (B, C, h, w), one generator per cover (not yet scaled by the scheduler)."""
        factor = self.pipe.vae_scale_factor
        shape = (len(generators), self.pipe.unet.config.in_channels, height // factor, width // factor)
        return randn_tensor(shape, generator=generators, device=device, dtype=dtype)

    def sampler(
        self, cond: Conditioning, generators: Generators, settings: RolloutSettings, device: torch.device
    ) -> tuple[Tensor, Tensor, Predict]:
        unet, dtype, scheduler = self.pipe.unet, self.pipe.unet.dtype, settings.scheduler
        guidance = settings.guidance_scale
        do_cfg = guidance > 1.0
        text = cond.text
        if do_cfg:
            with torch.no_grad():
                empty = self.encode_prompts([""]).expand_as(text)
            text, personal = torch.cat([empty, text]), torch.cat([cond.uncond_p, cond.cond_p])
        else:
            personal = cond.cond_p
        user = (settings.user_tokens, settings.user_scale)
        inputs = personalized_unet_inputs(text.to(dtype), personal.to(dtype), settings.adapter_scale, *user)
        latents = self.prepare_latents(
            generators, settings.height, settings.width, settings.latent_dtype, device
        )
        latents = latents * scheduler.init_noise_sigma
        # the scheduler's timesteps stay on the CPU (its table look-ups are host-side) and the UNet reads a
        # device copy made once: no host-device synchronisation inside the loop
        scheduler.set_timesteps(settings.num_inference_steps)
        timesteps = scheduler.timesteps
        unet_timesteps = timesteps.to(device)

        def predict(latents: Tensor, i: int, t: Tensor) -> Tensor:
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t).to(dtype)
            noise = unet(model_input, unet_timesteps[i], **inputs).sample.to(latents.dtype)
            return guide(*noise.chunk(2), guidance) if do_cfg else noise

        return latents, timesteps, predict

    def step(
        self, scheduler: Any, output: Tensor, index: int, t: Tensor, latents: Tensor, want_x0: bool
    ) -> tuple[Tensor, Tensor | None]:
        out = scheduler.step(output, t, latents)
        return out.prev_sample, getattr(out, "pred_original_sample", None) if want_x0 else None

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        vae = self.pipe.vae
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.to(latents.dtype)
        return (images / 2 + 0.5).clamp(0, 1)
