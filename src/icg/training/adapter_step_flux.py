"""The adapter-training step on a Flux backbone: the same ReFL/DRaFT-K recipe with flow matching.

Differences from `AdapterStep` (SD1.5), and only these: the rollout (`icg.backbones.flux`) is FLUX's Euler
flow-matching sampler on 2×2-packed latents; the training image is the stop step's x̂0 = x_t − σ_t·v (ReFL's
one-step prediction, the flow-matching twin of DDIM's x̂0); `guidance_scale` is FLUX.1-dev's embedded guidance
(no classifier-free branch, so the unconditional c_p is unused); the denoising regularizer is the
rectified-flow loss ‖v − (ε − z0)‖² at a uniform σ. Seeds, stop steps, rewards and logs are the base class's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from icg.adapter.flux import personalized_flux_kwargs
from icg.backbones.flux import FluxText, latent_image_ids, pack_latents
from icg.training.adapter_data import mix_seed
from icg.training.adapter_step import AdapterStep

__all__ = ["FluxAdapterStep", "FluxText"]  # FluxText now lives in icg.backbones.flux


class FluxAdapterStep(AdapterStep):
    """Rollout, decoding and losses for one micro-batch on a `FluxCoverPipeline`."""

    def make_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def denoise_loss(self, rows: Tensor, text: FluxText, cond_p: Tensor, first: int) -> Tensor:
        """Rectified-flow MSE of the adapted transformer on noised reference-cover latents."""
        assert self.ref_latents is not None
        items = self.data.samples[rows, 1]
        z0 = self.ref_latents[items].to(self.device)  # (B, C, h, w), shifted and scaled
        batch, channels, h, w = z0.shape
        z0 = pack_latents(z0)  # (B, L, 4C)
        gens = [
            torch.Generator().manual_seed(mix_seed(self.config.seed, "denoise", first + b))
            for b in range(batch)
        ]
        # noise and σ drawn on the CPU by design: per-sample seeded CPU generators give the same draw on any
        # device (reproducible, resumable); moved once
        noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(self.device)
        sigma = torch.stack([torch.rand((), generator=g) for g in gens]).to(self.device)  # (B,) in [0, 1)
        noisy = (1 - sigma[:, None, None]) * z0 + sigma[:, None, None] * noise
        image_ids = latent_image_ids(h // 2, w // 2, self.device, text.ids.dtype)
        guidance = self.backbone.guidance(self.config.guidance_scale, batch, self.device)
        kwargs = personalized_flux_kwargs(cond_p.to(self.unet_dtype))
        velocity = self.backbone.velocity(noisy, sigma, text, image_ids, kwargs, guidance).float()
        return F.mse_loss(velocity, noise - z0)
