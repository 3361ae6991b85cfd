"""The SD1.5 backbone: CLIP text states, a UNet with the dual path, DDIM with classifier-free guidance.

The unconditional branch sees the empty prompt and `uncond_p` (the projector of zeros), as diffusers does
for IP-Adapter's negative image embeddings; with guidance_scale ≤ 1 only the conditional branch runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from icg.adapter.attention import get_adapter_layers, install_dual_path_adapter, personalized_unet_inputs
from icg.adapter.checkpoint import load_adapter
from icg.backbones.base import (
    SINGLE_FILE_SUFFIXES,
    AdapterFunctions,
    Backbone,
    Conditioning,
    Generators,
    Predict,
    RolloutSettings,
    frozen,
    guide,
    load_folder,
)
from icg.errors import ICGError
from icg.single_file import load_single_file_backbone


class SD15Backbone(Backbone):
    """A `CoverPipeline`'s vae, text_encoder, tokenizer and unet (textual-inversion tokens included)."""

    kind = "sd15"
    denoiser_name = "unet"
    text_encoder_names = ("text_encoder",)
    dual_path = AdapterFunctions(install_dual_path_adapter, load_adapter, get_adapter_layers)
    personal_width_key = "cross_attention_dim"

    @classmethod
    def load_components(
        cls, base_model: str, base_config: str | None = None, torch_dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """unet, vae, text_encoder, tokenizer and a DDIM scheduler from a diffusers folder/hub id or a file.

        A single `.safetensors`/`.ckpt` file (how community SD1.5 checkpoints are shared, LDM key layout)
        needs `base_config`, a local diffusers folder with the component configs of the same architecture: the
        file holds weights only, and a hub config cannot be fetched here. See `icg.single_file` for what comes
        from the file and what from the folder; a file of another architecture is an ICGError naming what
        differs.
        """
        if not (base_model.endswith(SINGLE_FILE_SUFFIXES) or Path(base_model).is_file()):
            classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                       "tokenizer": CLIPTokenizer, "scheduler": DDIMScheduler}  # fmt: skip
            return load_folder(base_model, classes, torch_dtype, "the backbone")
        if not Path(base_model).is_file():
            raise ICGError(f"{base_model}: single-file checkpoint not found")
        if base_config is None:
            raise ICGError(
                f"{base_model}: a single-file checkpoint needs --base-config, a local diffusers folder "
                "with the configs of the same architecture (unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/)"
            )
        if not Path(base_config).is_dir():
            raise ICGError(f"{base_config}: --base-config must be a local diffusers folder (no hub access)")
        parts = load_single_file_backbone(base_model, base_config, torch_dtype)
        return frozen(
            {name: parts[name] for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        )

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
