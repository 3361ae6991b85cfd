"""The adapter-training step on a Flux backbone: the same ReFL/DRaFT-K recipe with flow matching.

Differences from `AdapterStep` (SD1.5), and only these: the rollout is FLUX's Euler flow-matching sampler on
2×2-packed latents (same shifted sigma schedule as `FluxCoverPipeline`); the training image is the stop step's
x̂0 = x_t − σ_t·v (ReFL's one-step prediction, the flow-matching twin of DDIM's x̂0); `guidance_scale` is
FLUX.1-dev's embedded guidance (no classifier-free branch, so the unconditional c_p is unused); the denoising
regularizer is the rectified-flow loss ‖v − (ε − z0)‖² at a uniform σ. Seeds, stop steps, rewards and logs are
the base class's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from icg.adapter.flux import personalized_flux_kwargs
from icg.pipeline_flux import flow_timesteps, latent_image_ids, pack_latents
from icg.training.adapter_data import mix_seed
from icg.training.adapter_step import AdapterStep


class FluxText(NamedTuple):
    """Flux's text conditioning: T5 states (B, T, W), CLIP pooled (B, P), text position ids (T, 3)."""

    states: Tensor
    pooled: Tensor
    ids: Tensor


class FluxAdapterStep(AdapterStep):
    """Rollout, decoding and losses for one micro-batch on a `FluxCoverPipeline`."""

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def make_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def conditioning(self, rows: Tensor) -> tuple[list[str], FluxText, Tensor, Tensor]:
        """(prompts, Flux text conditioning without graph, c_p and its unconditional twin with graph)."""
        users, items = self.data.samples[rows].unbind(1)
        prompts = [self.feats.prompts[i] for i in items.tolist()]
        with torch.no_grad():
            text = FluxText(*self.pipe.encode_prompt(prompts))
        context = self.feats.context[items].to(self.device)  # (B, N, D)
        user = self.feats.users[users].to(self.device) if self.feats.users is not None else None  # (B, D_u)
        cond_p, uncond_p = self.pipe.personal_tokens(context, user)  # (B, M, W) each
        return prompts, text, cond_p, uncond_p

    def _velocity(
        self, latents: Tensor, sigma: Tensor, text: FluxText, image_ids: Tensor, cond_p: Tensor
    ) -> Tensor:
        """The adapted transformer's velocity for packed latents (B, L, 4C) at σ (B,) → float32 (B, L, 4C)."""
        dtype, batch = self.unet_dtype, latents.shape[0]
        return self.pipe.transformer(
            hidden_states=latents.to(dtype),
            timestep=sigma.to(dtype),  # FluxPipeline passes t / 1000 = σ
            guidance=self.pipe.guidance(self.config.guidance_scale, batch, self.device),
            pooled_projections=text.pooled.to(dtype),
            encoder_hidden_states=text.states.to(dtype),
            txt_ids=text.ids,
            img_ids=image_ids,
            joint_attention_kwargs=personalized_flux_kwargs(cond_p.to(dtype)),
            return_dict=False,
        )[0].float()

    def rollout(
        self, text: FluxText, cond_p: Tensor, uncond_p: Tensor, seeds: list[int], stop: int, grad: bool
    ) -> Tensor:
        """Flow matching from noise to step `stop`; gradients through the last K steps when `grad` → [0, 1].

        Training decodes the stop step's x̂0; sampling (stop = last step) decodes its x_{t−1}, as the
        pipeline does."""
        k, side = self.config.grad_steps, self.pixels
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        latents, image_ids = self.pipe.prepare_latents(
            len(seeds), side, side, torch.float32, generators, self.device
        )  # (B, L, 4C) float32
        timesteps = flow_timesteps(
            self.scheduler, self.config.num_inference_steps, latents.shape[1], self.device
        )
        sigmas = self.scheduler.sigmas.to(self.device)
        for i, t in enumerate(timesteps[: stop + 1]):
            with torch.set_grad_enabled(grad and i > stop - k):
                sigma = sigmas[i]
                velocity = self._velocity(latents, (t / 1000).expand(len(seeds)), text, image_ids, cond_p)
                predicted = latents - sigma * velocity  # x̂0 (B, L, 4C)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
        final = predicted if grad else latents
        return self.pipe.decode(final, side, side).float()  # (B, 3, H, W)

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
        velocity = self._velocity(noisy, sigma, text, image_ids, cond_p)
        return F.mse_loss(velocity, noise - z0)
