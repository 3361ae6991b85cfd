"""One adapter-training step (paper §3.4.2): conditioning, the ReFL/DRaFT-K rollout, rewards, regularizer.

Everything random is a pure function of (seed, stream position), so a resumed run redraws exactly what an
uninterrupted one would. The same rollout (without gradients, to the last step) makes the sample grids and
the reward-hacking guard's held-out covers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from icg.adapter.attention import personalized_unet_inputs
from icg.backbones import RolloutSettings, backbone_for
from icg.rewards.base import WeightedRewards
from icg.rewards.personalized import reward_text
from icg.training.adapter_config import AdapterTrainConfig
from icg.training.adapter_data import AdapterData, ItemFeatures, mix_seed


class AdapterStep:
    """Rollout, decoding and losses for one micro-batch; everything random is seeded by stream position."""

    def __init__(
        self,
        pipe,
        data: AdapterData,
        feats: ItemFeatures,
        objective: WeightedRewards,
        config: AdapterTrainConfig,
        device: torch.device,
        ref_latents: Tensor | None,
    ) -> None:
        self.pipe, self.data, self.feats, self.objective, self.config = pipe, data, feats, objective, config
        self.device, self.ref_latents = device, ref_latents
        # reward speed options (icg.rewards.fast): on CUDA bf16 towers, cached text features, shared
        # preprocessing, each reward's backward inside the forward; the objective's `speed` turns them off
        self.reward_speed = objective.optimize(device)
        if self.reward_speed.cache_texts:
            self.warm_reward_texts()
        self.backbone = backbone_for(pipe)  # its rollout is the pipeline's denoising loop
        self.scheduler = self.make_scheduler()  # never the pipeline's own
        self.pixels = pipe.default_size
        self.unet_dtype = self.denoiser.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        """The frozen backbone network that the adapter is installed in."""
        return self.backbone.denoiser

    def make_scheduler(self):
        """The paper's sampler (DDIM) with the pipeline's training schedule."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.pipe.scheduler.config)

    def conditioning(self, rows: Tensor) -> tuple[list[str], Any, Tensor, Tensor]:
        """(prompts, the backbone's text conditioning (SD1.5: c_t (B, T, W)) without graph, c_p and its
        unconditional twin (B, M, W) with graph)."""
        users, items = self.data.samples[rows].unbind(1)
        prompts = [self.feats.prompts[i] for i in items.tolist()]
        with torch.no_grad():
            text = self.backbone.encode_prompts(prompts)
        context = self.feats.context[items].to(self.device)  # (B, N, D)
        user = self.feats.users[users].to(self.device) if self.feats.users is not None else None  # (B, D_u)
        cond_p, uncond_p = self.pipe.personal_tokens(context, user)  # (B, M, W) each
        return prompts, text, cond_p, uncond_p

    def reward_inputs(self, rows: Tensor, prompts: list[str]) -> tuple[dict[str, list[str]], list[str]]:
        """Texts per enabled reward (the personalized reward reads title + prompt, the others the prompt)
        and the users' profile sentences."""
        users, items = self.data.samples[rows].unbind(1)
        titles = [self.data.titles[i] for i in items.tolist()]
        profiles = [self.data.profiles[u] for u in users.tolist()]
        personal = [reward_text(t, p) for t, p in zip(titles, prompts, strict=True)]
        texts = {name: personal if name == "personalized" else prompts for name in self.objective.enabled}
        if self.config.clip_text == "user_genre" and "clip" in texts:  # diagnostic (see CLIP_TEXTS)
            texts["clip"] = user_genre_texts(
                [self.data.item_genres[i] for i in items.tolist()], profiles, self.data.genre_vocabulary()
            )
        return texts, profiles

    def warm_reward_texts(self, max_strings: int = 1 << 14) -> int:
        """Encode every item's reward texts and every user's profile once, up front and batched (as
        `item_features` does for the context), when there are at most `max_strings` (then, with
        `offload_text_towers`, park the text towers on the CPU); else the caches fill as samples come.
        → strings encoded."""
        items = self.data.samples[:, 1].unique().tolist()
        users = [self.data.profiles[u] for u in self.data.samples[:, 0].unique().tolist()]
        prompts = [self.feats.prompts[i] for i in items]
        personal = [reward_text(self.data.titles[i], self.feats.prompts[i]) for i in items]
        if 2 * len(items) + len(users) > max_strings or self.config.clip_text != "prompt":
            return 0
        texts = {name: personal if name == "personalized" else prompts for name in self.objective.enabled}
        encoded = self.objective.warm_text_caches(texts, users)
        if self.reward_speed.offload_text_towers:  # every text is cached: the text towers wait on the CPU
            self.objective.offload_text_towers("cpu")
        return encoded

    @torch.no_grad()
    def sample(self, rows: Tensor, tag: str) -> tuple[list[str], Tensor]:
        """Full DDIM covers (no gradients) of the samples `rows`, noise seeded by (seed, tag, j) → (prompts,
        images (B, 3, H, W) in [0, 1]): the sample grids and the guard's held-out covers."""
        prompts, text, cond_p, uncond_p = self.conditioning(rows)
        seeds = [mix_seed(self.config.seed, tag, int(j)) for j in rows.tolist()]
        last = self.config.num_inference_steps - 1
        return prompts, self.rollout(text, cond_p, uncond_p, seeds, last, grad=False)

    @torch.no_grad()
    def objective_per_sample(self, rows: Tensor, prompts: list[str], images: Tensor) -> Tensor:
        """The training objective as a reward per sample, Σ λ·(−loss(r)) over the enabled rewards → (B,)."""
        texts, profiles = self.reward_inputs(rows, prompts)
        total = torch.zeros(
            len(rows), dtype=torch.float64
        )  # CPU by design: a host record (the guard's floats)
        for name, on in self.objective.enabled.items():
            if not on:
                continue
            scores = self.objective.rewards[name].score(images, texts[name], profiles, grad=False)
            losses = torch.stack([self.objective.loss_fns[name](s.view(1)) for s in scores])
            total -= self.objective.weights[name] * losses.double().cpu()
        return total

    def rollout(
        self, text: Any, cond_p: Tensor, uncond_p: Tensor, seeds: list[int], stop: int, grad: bool
    ) -> Tensor:
        """The backbone's rollout from noise to step `stop` on the training scheduler, in float32 latents →
        images (B, 3, H, W) in [0, 1]. Training (`grad`) runs gradients through the last K steps and decodes
        the stop step's x̂0; sampling (stop = last step) decodes its x_{t−1}: the pipeline's cover at that
        seed (tests/backbones/test_rollout.py holds them equal)."""
        cfg = self.config
        settings = RolloutSettings(
            cfg.num_inference_steps, cfg.guidance_scale, self.pixels, self.pixels, stop=stop,
            grad_steps=cfg.grad_steps if grad else 0, predict_x0=grad, latent_dtype=torch.float32,
            scheduler=self.scheduler,
        )  # fmt: skip
        return self.backbone.rollout(text, cond_p, uncond_p, seeds, settings, self.device)

    def denoise_loss(self, rows: Tensor, text: Tensor, cond_p: Tensor, first: int) -> Tensor:
        """ε-MSE (or v-MSE) of the adapted UNet on noised reference-cover latents: keeps it a denoiser."""
        assert self.ref_latents is not None
        items = self.data.samples[rows, 1]
        z0 = self.ref_latents[items].to(self.device)  # (B, C, h, w)
        seed = self.config.seed
        gens = [torch.Generator().manual_seed(mix_seed(seed, "denoise", first + b)) for b in range(len(rows))]
        # drawn on the CPU by design (per-sample seeded CPU generators: one draw on any device), moved once
        noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(self.device)
        t_max = self.scheduler.config.num_train_timesteps
        t = torch.tensor([int(torch.randint(0, t_max, (1,), generator=g)) for g in gens], device=self.device)
        noisy = self.scheduler.add_noise(z0, noise, t).to(self.unet_dtype)
        inputs = personalized_unet_inputs(text.to(self.unet_dtype), cond_p.to(self.unet_dtype))
        pred = self.denoiser(noisy, t, **inputs).sample.float()
        epsilon = self.scheduler.config.prediction_type == "epsilon"
        target = noise if epsilon else self.scheduler.get_velocity(z0, noise, t)
        return F.mse_loss(pred, target)

    def __call__(self, rows: Tensor, first: int, micro: int) -> dict:
        """Loss and log values of the micro-batch `rows` (stream positions first … first + B − 1)."""
        cfg = self.config
        prompts, text, cond_p, uncond_p = self.conditioning(rows)
        group = cfg.users_per_item  # a group's covers share their noise: only the user differs
        seeds = [mix_seed(cfg.seed, "noise", (first + b) // group) for b in range(len(rows))]
        stop_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, "stop", micro))
        # a seeded host draw (CPU generator, read as a Python int): the same stop on any device
        stop = cfg.num_inference_steps - 1 - int(torch.randint(0, cfg.stop_window, (1,), generator=stop_gen))
        images = self.rollout(text, cond_p, uncond_p, seeds, stop, grad=True)
        texts, profiles = self.reward_inputs(rows, prompts)
        breakdown = self.objective(images, texts, profiles)
        loss, log = breakdown.total, breakdown.log_values()
        log["loss/rewards"] = log.pop("loss/total")
        if cfg.denoise_weight > 0:
            reg = self.denoise_loss(rows, text, cond_p, first)
            loss = loss + cfg.denoise_weight * reg
            log["loss/denoise"] = float(reg.detach())
        log |= {"loss/total": float(loss.detach()), "stop_index": stop}
        return {"loss": loss, "log": log}


def user_genre_texts(item_genres: list[tuple[str, ...]], profiles: list[str], genres: list[str]) -> list[str]:
    """Per sample, "a {genre} movie" for the item's genre the user's stated taste ranks highest (the item's
    first genre on ties or without a stated taste): the text of the `clip_text="user_genre"` diagnostic."""
    from icg.data.captions import genre_prompt
    from icg.data.taste import parse_taste

    if any(not g for g in item_genres):
        raise ValueError("the user_genre diagnostic needs every item's genres (AdapterData.item_genres)")
    taste = parse_taste(profiles, genres)  # (B, G)
    column = {g: n for n, g in enumerate(genres)}
    out = []
    for b, own in enumerate(item_genres):
        scores = [float(taste[b, column[g]]) if g in column else 0.0 for g in own]
        out.append(genre_prompt(own[max(range(len(own)), key=lambda k: (scores[k], -k))]))
    return out
