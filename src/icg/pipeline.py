"""CoverPipeline: item (title + reference cover) × user → personalized covers (paper Fig. 2, inference).

Read `__call__` top to bottom: it is the data flow of ../shared/DESIGN.md.

Classifier-free guidance. The conditional branch sees the explicit prompt's text embeddings c_t and the
personalized tokens c_p = Proj(C_ref) ⊕ Proj(U_pre). The unconditional branch sees the empty prompt's text
embeddings and the projector applied to all-zero context and user embeddings — the same convention diffusers
uses for IP-Adapter's negative image embeddings — so guidance pushes towards both the prompt and the item/user
conditioning. With guidance_scale ≤ 1 only the conditional branch runs.

`user_scale` is the personalization strength, separate from the whole personal path's `adapter_scale`: it
re-weights the attention on the user tokens in both branches (`icg.adapter.attention`); 0 gives exactly the
context-only cover (no users), 1 the adapter as trained.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.utils import BaseOutput

from icg.adapter.attention import check_user_scale
from icg.backbones import RolloutSettings, SD15Backbone
from icg.modules import check_finite
from icg.pipeline_folder import PresetFolderMixin
from icg.presets_spec import GenerationConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoverItem:
    """An item to make covers for: its title and existing (reference) cover."""

    title: str
    image: PIL.Image.Image
    item_id: str | None = None


@dataclass(frozen=True)
class CoverUser:
    """A user to personalize for: a known id, a profile (sentence or fields), or both."""

    user_id: str | None = None
    profile: str | dict | None = None

    @property
    def label(self) -> str:
        return self.user_id if self.user_id is not None else str(self.profile)


@dataclass
class CoverPipelineOutput(BaseOutput):
    """Covers in item-major order (item, user, image index) and one metadata dict per cover."""

    images: list[PIL.Image.Image] | torch.Tensor
    metadata: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CoverGrid:
    """The conditioning of one call: P_exp and C_ref per item, U_pre per user, and the covers' grid
    (item, user, image index) in item-major order with each cover's prompt."""

    prompts: list[str]  # (I) explicit prompts
    context: torch.Tensor  # (I, N, D) C_ref
    user_embeds: torch.Tensor | None  # (U, D_u) U_pre
    cells: list[tuple[int, int, int]]  # (item, user, image index) per cover
    cell_prompts: list[str]  # per cover: P_exp [+ the user's suffix]
    item_idx: torch.Tensor  # (B,)
    user_idx: torch.Tensor  # (B,)

    def cover_context(self) -> torch.Tensor:
        return self.context[self.item_idx]

    def cover_users(self) -> torch.Tensor | None:
        return None if self.user_embeds is None else self.user_embeds[self.user_idx]


@dataclass(frozen=True)
class CoverCall:
    """One `__call__`'s settings after defaults and checks, and its grid: what the denoising half reads and
    every cover's sidecar records."""

    config: GenerationConfig  # steps, guidance, explicit-prompt length
    height: int
    width: int
    adapter_scale: float | None
    user_scale: float
    drop_meta_tokens: bool
    grid: CoverGrid
    true_cfg_scale: float | None = None  # Flux's true CFG; None where the backbone has none

    def settings(self) -> dict[str, Any]:
        """The settings part of a sidecar (keys in the order sidecars have always had)."""
        config = self.config
        true_cfg = {} if self.true_cfg_scale is None else {"true_cfg_scale": self.true_cfg_scale}
        return {
            "num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale,
            **true_cfg, "adapter_scale": self.adapter_scale, "user_scale": self.user_scale,
            "drop_meta_tokens": self.drop_meta_tokens, "height": self.height, "width": self.width,
        }  # fmt: skip

    def rollout_settings(self) -> RolloutSettings:
        """How the backbone's rollout runs this call (every step, no gradients)."""
        config, true_cfg = self.config, 1.0 if self.true_cfg_scale is None else self.true_cfg_scale
        return RolloutSettings(
            config.num_inference_steps, config.guidance_scale, self.height, self.width,
            adapter_scale=self.adapter_scale, user_scale=self.user_scale, true_cfg_scale=true_cfg,
        )  # fmt: skip


class CoverConditioningMixin:
    """What every cover pipeline shares, whatever its backbone: input checks for items and users, U_pre, c_p.

    Needs `user_encoder` and `projector` components (CoverPipeline, FluxCoverPipeline). `generation_config`
    holds the defaults of `__call__` (steps, guidance, explicit-prompt length): the backbone's own on a bare
    pipeline, the preset's once `icg.loading.load_cover_pipeline` has set it.
    """

    generation_config: GenerationConfig = GenerationConfig()

    def generation_settings(
        self,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        max_prompt_tokens: int | None,
    ) -> GenerationConfig:
        """`generation_config` with the caller's non-None arguments applied."""
        return self.generation_config.replace(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_prompt_tokens=max_prompt_tokens,
        )

    def prepare_call(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        max_prompt_tokens: int | None,
        height: int | None,
        width: int | None,
        num_images_per_prompt: int,
        adapter_scale: float | None,
        user_scale: float,
        strict_users: bool,
        drop_meta_tokens: bool,
        prompt_suffixes: list[str] | None,
        true_cfg_scale: float | None = None,
    ) -> CoverCall:
        """Steps 1–4 of every cover pipeline's `__call__`: defaults from `generation_config` and the
        backbone's size, input checks, item context once per item (P_exp, C_ref), U_pre once per user, and
        the grid of covers in item-major order."""
        config = self.generation_settings(num_inference_steps, guidance_scale, max_prompt_tokens)
        height, width = height or self.default_size, width or self.default_size
        self.check_inputs(
            items, users, config.num_inference_steps, config.guidance_scale, height, width,
            num_images_per_prompt, user_scale, 1.0 if true_cfg_scale is None else true_cfg_scale,
        )  # fmt: skip
        grid = self.cover_grid(
            items, users, num_images_per_prompt, config.max_prompt_tokens, strict_users, drop_meta_tokens,
            prompt_suffixes,
        )  # fmt: skip
        return CoverCall(
            config, height, width, adapter_scale, float(user_scale), drop_meta_tokens, grid, true_cfg_scale
        )

    @property
    def size_multiple(self) -> int:
        """What height and width must be multiples of: the VAE's factor (Flux also packs latents 2×2)."""
        return self.vae_scale_factor

    def check_inputs(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
        num_images_per_prompt: int,
        user_scale: float = 1.0,
        true_cfg_scale: float = 1.0,
    ) -> None:
        """Step 1 of `__call__`: a clear ValueError for any input the pipeline cannot use."""
        if self.context_encoder is None:
            raise ValueError(
                "this pipeline was loaded without its context encoder (with_context_encoder=False): "
                "generate with covers_from_embeddings"
            )
        if not items:
            raise ValueError("items is empty: give at least one CoverItem")
        for k, item in enumerate(items):
            if not isinstance(item, CoverItem):
                raise ValueError(f"items[{k}] must be a CoverItem, got {type(item).__name__}")
            if not isinstance(item.title, str) or not item.title.strip():
                raise ValueError(f"items[{k}] has an empty title")
            if not isinstance(item.image, PIL.Image.Image):
                raise ValueError(f"items[{k}].image must be a PIL image, got {type(item.image).__name__}")
        if users:
            if self.user_encoder is None:
                raise ValueError("users were given but this pipeline has no user_encoder")
            if not self.projector.config.has_user_path:
                raise ValueError("users were given but the projector has no user path (num_user_tokens=0)")
            for k, user in enumerate(users):
                if not isinstance(user, CoverUser) or (user.user_id is None and user.profile is None):
                    raise ValueError(f"users[{k}] must be a CoverUser with a user_id, a profile or both")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
        if guidance_scale < 0 or not np.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number ≥ 0, got {guidance_scale}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be ≥ 1, got {num_images_per_prompt}")
        check_user_scale(user_scale)
        if true_cfg_scale < 0 or not np.isfinite(true_cfg_scale):
            raise ValueError(f"true_cfg_scale must be a finite number ≥ 0, got {true_cfg_scale}")
        multiple = self.size_multiple
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of {multiple}, got {height}×{width}"
            )

    def encode_users(self, users: list[CoverUser], strict: bool = True) -> torch.Tensor:
        """U_pre for each user → (U, D_u); unknown ids raise unless strict=False and a profile is given."""
        embeds = self.user_encoder.encode_users(
            [u.user_id for u in users], [u.profile for u in users], strict=strict
        )
        check_finite("user embeddings", embeds)
        return embeds

    def user_tokens(self, user_embeds: torch.Tensor | None) -> int:
        """N_u: how many trailing tokens of c_p are the user's (0 without users), for `user_scale`."""
        return 0 if user_embeds is None else self.projector.config.num_user_tokens

    def personal_tokens(
        self, context: torch.Tensor, user: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional c_p and its unconditional twin (projector of zeros), each (B, N_c [+ N_u], W)."""
        cond = self.projector(context, user)
        uncond = self.projector(torch.zeros_like(context), None if user is None else torch.zeros_like(user))
        return cond, uncond

    def cover_grid(
        self,
        items: list[CoverItem],
        users: list[CoverUser] | None,
        num_images_per_prompt: int,
        max_prompt_tokens: int,
        strict_users: bool,
        drop_meta_tokens: bool,
        prompt_suffixes: list[str] | None,
    ) -> CoverGrid:
        """Steps 2–4 of every cover pipeline: item context once per item (P_exp, C_ref; zeroed for the
        "w/o meta token" ablation), U_pre once per user, and the grid with each cover's prompt."""
        device, dtype = self._execution_device, _dtype_of(self.projector)
        prompts, context = self.context_encoder.encode_items(
            [i.image for i in items], [i.title for i in items], max_new_tokens=max_prompt_tokens
        )
        context = context.to(device=device, dtype=dtype)
        if drop_meta_tokens:
            context = torch.zeros_like(context)
        check_finite("context embeddings", context)
        user_embeds = self.encode_users(users, strict_users).to(device, dtype) if users else None
        n_users = len(users) if users else 1
        if prompt_suffixes is not None and len(prompt_suffixes) != n_users:
            raise ValueError(
                f"prompt_suffixes must hold one string per user ({n_users}), got {len(prompt_suffixes)}"
            )
        images = range(num_images_per_prompt)
        cells = [(i, u, k) for i in range(len(items)) for u in range(n_users) for k in images]
        cell_prompts = [
            prompts[i] if prompt_suffixes is None else self.with_suffix(prompts[i], prompt_suffixes[u])
            for i, u, _ in cells
        ]
        item_idx = torch.tensor([c[0] for c in cells], device=device)
        user_idx = torch.tensor([c[1] for c in cells], device=device)
        return CoverGrid(prompts, context, user_embeds, cells, cell_prompts, item_idx, user_idx)

    def encode_cover_prompts(self, grid: CoverGrid) -> Any:
        """The backbone's text conditioning, one row per cover: each item's P_exp encoded once, or each
        cover's own prompt where a user's suffix changed it."""
        if grid.cell_prompts == [grid.prompts[i] for i, _, _ in grid.cells]:
            return self.backbone.take(self.backbone.encode_prompts(grid.prompts), grid.item_idx)
        return self.backbone.encode_prompts(grid.cell_prompts)

    def render(
        self,
        text: Any,
        context: torch.Tensor,
        user_embeds: torch.Tensor | None,
        seeds: list[int],
        settings: RolloutSettings,
    ) -> torch.Tensor:
        """Covers (B, 3, H, W) in [0, 1] from the text conditioning, C_ref and U_pre (one row per cover): c_p
        and its unconditional twin, then the backbone's `rollout` (noise from `seeds`, the loop, decoding),
        the loop the adapter trainer runs."""
        cond_p, uncond_p = self.personal_tokens(context, user_embeds)
        settings = replace(settings, user_tokens=self.user_tokens(user_embeds))
        return self.backbone.rollout(
            text, cond_p, uncond_p, seeds, settings, self._execution_device, progress=self.progress_bar
        )

    def denoise_call(self, call: CoverCall, seed: int) -> torch.Tensor:
        """Steps 5–8 of every cover pipeline's `__call__`: text conditioning and c_p per cover, noise (cover
        n from `seed + n`), the denoising loop and decoding → (B, 3, H, W) in [0, 1]."""
        grid = call.grid
        seeds = [seed + n for n in range(len(grid.cells))]
        text = self.encode_cover_prompts(grid)
        return self.render(text, grid.cover_context(), grid.cover_users(), seeds, call.rollout_settings())

    def render_embeddings(
        self,
        prompts: list[str],
        context: torch.Tensor,
        user_embeds: torch.Tensor | None,
        seeds: list[int],
        settings: RolloutSettings,
    ) -> torch.Tensor:
        """`covers_from_embeddings` of both backbones: checked inputs, each prompt encoded, `render`."""
        context, user_embeds = self.check_embeddings(prompts, context, user_embeds, seeds)
        return self.render(self.backbone.encode_prompts(list(prompts)), context, user_embeds, seeds, settings)

    def check_embeddings(
        self, prompts: list[str], context: torch.Tensor, user_embeds: torch.Tensor | None, seeds: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`covers_from_embeddings`' inputs: one entry per cover, finite; moved to the projector."""
        if not (len(prompts) == len(context) == len(seeds)) or (
            user_embeds is not None and len(user_embeds) != len(prompts)
        ):
            raise ValueError("prompts, context, user_embeds and seeds must have one entry per cover")
        device, dtype = self._execution_device, _dtype_of(self.projector)
        context = context.to(device=device, dtype=dtype)
        user_embeds = None if user_embeds is None else user_embeds.to(device=device, dtype=dtype)
        for name, tensor in (("context embeddings", context), ("user embeddings", user_embeds)):
            if tensor is not None:
                check_finite(name, tensor)
        return context, user_embeds

    def cover_output(
        self,
        images: torch.Tensor,
        call: CoverCall,
        items: list[CoverItem],
        users: list[CoverUser] | None,
        seed: int,
        output_type: str,
    ) -> CoverPipelineOutput:
        """Images (B, 3, H, W) in [0, 1] → PIL (or "pt" tensors), with one sidecar dict per cover: what
        regenerates it alone (its seed, prompt and every setting)."""
        grid, settings = call.grid, call.settings()
        metadata = [
            {
                "item_id": items[i].item_id,
                "title": items[i].title,
                "explicit_prompt": grid.prompts[i],
                "prompt": grid.cell_prompts[n],
                "user_id": users[u].user_id if users else None,
                "profile": users[u].profile if users else None,
                "image_index": k,
                "seed": seed + n,
                **settings,
                "scheduler": type(self.scheduler).__name__,
                "backbone": self.backbone.kind,
            }
            for n, (i, u, k) in enumerate(grid.cells)
        ]
        if output_type == "pt":
            return CoverPipelineOutput(images=images, metadata=metadata)
        arrays = (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        return CoverPipelineOutput(images=[PIL.Image.fromarray(a) for a in arrays], metadata=metadata)


def join_suffix(tokenizer, room: int, prompt: str, suffix: str) -> str:
    """`prompt, suffix`, the suffix kept whole: when both overflow `room` tokens of `tokenizer`, the
    explicit prompt is cut where they fit (the suffix carries a prompt-side baseline's personalization).
    """
    if not suffix:
        return prompt
    joined = f"{prompt}, {suffix}" if prompt else suffix
    if len(tokenizer(joined, add_special_tokens=False).input_ids) <= room:
        return joined
    keep = room - len(tokenizer(f", {suffix}", add_special_tokens=False).input_ids)
    if keep <= 0:
        logger.warning("prompt suffix %r alone exceeds the text encoder's %d tokens", suffix, room)
        return suffix
    head = tokenizer(prompt, add_special_tokens=False).input_ids[:keep]
    logger.debug("explicit prompt cut to %d tokens to keep the suffix %r", keep, suffix)
    return f"{tokenizer.decode(head, skip_special_tokens=True).strip()}, {suffix}"


class CoverPipeline(
    PresetFolderMixin, DiffusionPipeline, TextualInversionLoaderMixin, CoverConditioningMixin
):
    """Personalized cover generation with a frozen SD1.5-architecture backbone and the dual-path adapter.

    Components: vae, text_encoder, tokenizer, unet (with `install_dual_path_adapter` applied), scheduler
    (DDIM by default), context_encoder (`icg.context.ContextEncoder`), user_encoder (two-tower, optional),
    projector (`icg.adapter.PersonalizedProjector`). Textual-inversion embeddings load with diffusers'
    `load_textual_inversion` (the Textual Inversion baseline's per-user tokens).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    # diffusers moves, offloads and lists only the components it knows are optional or required: without
    # this the user encoder stayed on the CPU after `pipe.to("cuda")`
    _optional_components = ["user_encoder"]
    backbone_class = SD15Backbone

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        context_encoder,
        projector,
        user_encoder=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            context_encoder=context_encoder,
            projector=projector,
            user_encoder=user_encoder,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def backbone_pipeline(self) -> DiffusionPipeline:
        """diffusers' `StableDiffusionPipeline` over this pipeline's backbone (no safety checker)."""
        from diffusers import StableDiffusionPipeline

        names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
        return StableDiffusionPipeline(
            **{name: getattr(self, name) for name in names},
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    @property
    def backbone(self) -> SD15Backbone:
        """The SD1.5 backbone over this pipeline's components: its `rollout` is the denoising loop."""
        return SD15Backbone(self)

    # --- conditioning ---------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text hidden states c_t for each prompt, padded to the tokenizer's max length → (B, T, W)."""
        return self.backbone.encode_prompts(prompts)

    def with_suffix(self, prompt: str, suffix: str) -> str:
        """`prompt, suffix` within the CLIP context (BOS and EOS excluded); see `join_suffix`."""
        return join_suffix(self.tokenizer, self.tokenizer.model_max_length - 2, prompt, suffix)

    @property
    def default_size(self) -> int:
        """Cover side in pixels when height/width are not given (the UNet's sample size × VAE factor)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        generators: list[torch.Generator],
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Initial noise (B, C, h, w); pass `device` when known (`_execution_device` walks every module)."""
        if len(generators) != batch_size:
            raise ValueError(f"{len(generators)} generators for a batch of {batch_size}")
        device = self._execution_device if device is None else device
        latents = self.backbone.prepare_latents(generators, height, width, dtype, device)
        return latents * self.scheduler.init_noise_sigma

    # --- generation -----------------------------------------------------------------------------------------
    def denoise(
        self,
        text: torch.Tensor,
        cond_p: torch.Tensor,
        uncond_p: torch.Tensor,
        seeds: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        adapter_scale: float | None,
        height: int,
        width: int,
        user_tokens: int = 0,
        user_scale: float = 1.0,
    ) -> torch.Tensor:
        """Covers (B, 3, H, W) in [0, 1] from c_t (B, T, W) and c_p: cover b starts from noise seeded with
        `seeds[b]`, then DDIM with classifier-free guidance (the unconditional branch: "" and `uncond_p`);
        the last `user_tokens` of c_p are weighted by `user_scale` in both branches. The loop is the
        backbone's `rollout`, the one the adapter trainer runs.

        Deprecated: nothing of ICG calls it since both pipelines share `render` (which also makes c_p)."""
        warnings.warn(
            "CoverPipeline.denoise is deprecated; use pipe.backbone.rollout or pipe.render",
            DeprecationWarning,
            stacklevel=2,
        )
        settings = RolloutSettings(
            num_inference_steps, guidance_scale, height, width, adapter_scale=adapter_scale,
            user_tokens=user_tokens, user_scale=user_scale,
        )  # fmt: skip
        return self.backbone.rollout(
            text, cond_p, uncond_p, seeds, settings, self._execution_device, progress=self.progress_bar
        )

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
        user_scale: float = 1.0,
    ) -> torch.Tensor:
        """Covers (B, 3, H, W) in [0, 1] for precomputed P_exp (B), C_ref (B, N, D) and U_pre (B, D_u): the
        generation half of `__call__`, for a batch job whose context stage ran elsewhere. Cover b starts
        from noise seeded with `seeds[b]`, as cover k of `pipe(..., seed=s)` starts from `s + k`."""
        settings = RolloutSettings(
            num_inference_steps, guidance_scale, height or self.default_size, width or self.default_size,
            adapter_scale=adapter_scale, user_scale=check_user_scale(user_scale),
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
        user_scale: float = 1.0,
    ) -> CoverPipelineOutput:
        """Covers for every (item, user) pair; with no users, one unpersonalized set per item.

        Cover k (item-major order) starts from noise seeded with `seed + k`, so any single cover can be
        regenerated from its sidecar alone. `drop_meta_tokens` zeroes C_ref before the projector (the paper's
        "w/o meta token" ablation at inference; the explicit prompt still comes from the MLLM).
        `prompt_suffixes` (one per user, or one when `users` is None) are appended to P_exp for that user's
        covers: the prompt-side baselines (PMG keywords, a Textual Inversion token). `user_scale` is the
        personalization strength (module docstring): 0 = the context-only cover, 1 = as trained.
        `num_inference_steps`, `guidance_scale` and `max_prompt_tokens` default to `self.generation_config`.
        """
        # 1.–4. defaults and checks, item context once per item (P_exp, C_ref), U_pre once per user, the grid
        call = self.prepare_call(
            items, users, num_inference_steps, guidance_scale, max_prompt_tokens, height, width,
            num_images_per_prompt, adapter_scale, user_scale, strict_users, drop_meta_tokens, prompt_suffixes,
        )  # fmt: skip
        # 5.–8. text embeddings c_t and personalized tokens c_p per cover, noise, DDIM loop, decode
        images = self.denoise_call(call, seed)  # (B, 3, H, W) in [0, 1]
        return self.cover_output(images, call, items, users, seed, output_type)


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
