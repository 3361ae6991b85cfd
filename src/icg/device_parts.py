"""What every device-check path builds on (`icg.device_check`, `icg.device_paths`): the fake CUDA device, the
device-mix check, the MLLM stand-in, and the tiny pipelines, rewards and training step a path runs on.

See `icg.device_check` for the two uses (a real device; fake CUDA on a CPU-only machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

# torch factories that take `device=`: with a CUDA device they are routed into the fake mode
_FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.randn, torch.rand,
    torch.randint, torch.linspace, torch.eye, torch.as_tensor, torch.zeros_like, torch.ones_like,
    torch.full_like, torch.empty_like, torch.randn_like, torch.rand_like, torch.randperm, torch.empty_strided,
}  # fmt: skip


def _is_cuda(device: Any) -> bool:
    try:
        return device is not None and torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _target_device(func: Callable, args: tuple, kwargs: dict) -> Any:
    if func is torch.Tensor.cuda:
        return "cuda"
    target = kwargs.get("device")
    for arg in args[1:]:
        if isinstance(arg, str | torch.device):
            target = arg
        elif isinstance(arg, torch.Tensor):
            target = arg.device
    return target


class FakeCudaMode(TorchFunctionMode):
    """CUDA placements and every op on a fake tensor go to one FakeTensorMode; the rest runs for real."""

    def __init__(self) -> None:
        super().__init__()
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.fake = FakeTensorMode(allow_non_fake_inputs=True)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import is_fake

        kwargs = kwargs or {}
        if func in _FACTORIES and _is_cuda(kwargs.get("device")):
            with self.fake:
                return func(*args, **kwargs)
        moves = func in (torch.Tensor.to, torch.Tensor.cuda) and not is_fake(args[0])
        if moves and _is_cuda(_target_device(func, args, kwargs)):
            with self.fake:
                return func(self.fake.from_tensor(args[0]), *args[1:], **kwargs)
        if any(isinstance(a, torch.Tensor) and is_fake(a) for a in tree_leaves((args, kwargs))):
            with self.fake:
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    """A CUDA device that exists only as FakeTensors: `.to("cuda")` works, a CPU/CUDA mix raises."""
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # parameters become fake, not copied
    try:
        with FakeCudaMode():
            yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)


class DeviceMixError(RuntimeError):
    """A tensor argument on another device than the model it is given to."""


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` are the same device when either leaves the index open."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_on_device(where: str, device: torch.device, values: dict[str, Any]) -> None:
    """DeviceMixError naming the first tensor in `values` that is not on `device`."""
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and not same_device(value.device, device):
            raise DeviceMixError(f"{where}: {name} is on {value.device}, the model on {device}")


@contextlib.contextmanager
def mllm_stand_in(encoder) -> Iterator[None]:
    """Replace the context encoder's MLLM forward and generate by device-checking stand-ins.

    forward returns the input embeddings as hidden states (so C_ref keeps its graph to the meta tokens);
    generate returns two placeholder tokens per row, on the CPU like the ids a real decode reads back.
    """
    inner, model = encoder.model.model, encoder.model

    def forward(**kwargs):
        check_on_device("MLLM forward", encoder.device, kwargs)
        return SimpleNamespace(last_hidden_state=kwargs["inputs_embeds"] * 1.0)

    def generate(**kwargs):
        check_on_device("MLLM generate", encoder.device, kwargs)
        ids = kwargs["input_ids"]
        new = torch.full((ids.shape[0], 2), encoder.placeholder_id, dtype=torch.long)  # CPU: decoded on host
        return torch.cat([torch.zeros(ids.shape, dtype=torch.long), new], dim=1)

    inner.forward, model.generate = forward, generate
    try:
        yield
    finally:
        del inner.forward, model.generate


@dataclasses.dataclass
class CheckContext:
    """What a path needs: where to run, in which dtype, whether the device is fake, and a scratch folder."""

    device: torch.device
    dtype: torch.dtype
    fake: bool
    work: Path
    shapes: str = "tiny"  # "tiny", or "sd15": the SD1.5 pipeline at its real shapes (random weights)
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)  # built once per run, shared by paths


def device_images(n: int, side: int = 48) -> list:
    from PIL import Image

    colours = [(200, 40, 40), (30, 160, 60), (40, 60, 200), (220, 200, 40)]
    return [Image.new("RGB", (side, side), colours[i % len(colours)]) for i in range(n)]


def device_pipeline(ctx: CheckContext, flux: bool = False):
    """The tiny (or tiny-flux) preset's pipeline, loaded on the CPU once, moved to the checked device."""
    key = "flux" if flux else "sd15"
    if key not in ctx.parts:
        from icg.loading import load_cover_pipeline
        from icg.presets import get_preset

        pipe = load_cover_pipeline(get_preset("tiny-flux" if flux else "tiny"))
        if ctx.shapes == "sd15" and not flux:
            pipe = sd15_shaped(pipe, ctx.device)
        ctx.parts[key] = pipe.to(ctx.device, ctx.dtype) if not ctx.fake else pipe.to(ctx.device)
    return ctx.parts[key]


def sd15_shaped(tiny, device: torch.device):
    """The tiny pipeline with SD1.5's UNet, VAE and CLIP-L text tower (random weights, built on `device`)
    and a projector to their width: SD1.5's shapes through ICG's own code, 512² covers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from icg.adapter.attention import install_dual_path_adapter
    from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
    from icg.pipeline import CoverPipeline
    from icg.testing import BOS_TOKEN, EOS_TOKEN, tiny_clip_tokenizer, tiny_clip_vocab

    vocab, _ = tiny_clip_vocab()
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ).eval()  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        ).eval()  # fmt: skip
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab[BOS_TOKEN],
                eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN],
            )
        ).eval()  # fmt: skip
        install_dual_path_adapter(unet, init="text")
        projector = PersonalizedProjector(
            ProjectorConfig(
                context_dim=tiny.context_encoder.hidden_size,
                num_meta_tokens=tiny.context_encoder.num_meta_tokens,
                cross_attention_dim=768,
                user_dim=tiny.user_encoder.config.output_dim,
            )
        ).eval()
    return CoverPipeline(
        vae=vae, text_encoder=text, tokenizer=tiny_clip_tokenizer(max_length=77), unet=unet,
        scheduler=tiny.scheduler, context_encoder=tiny.context_encoder, projector=projector,
        user_encoder=tiny.user_encoder,
    )  # fmt: skip


@contextlib.contextmanager
def device_mllm(ctx: CheckContext, pipe) -> Iterator[None]:
    with mllm_stand_in(pipe.context_encoder) if ctx.fake else contextlib.nullcontext():
        yield


def device_reward_parts(ctx: CheckContext) -> dict[str, Any]:
    """Tiny CLIP-score and personalized rewards (random weights, real classes), built on the CPU once."""
    if "rewards" not in ctx.parts:
        from icg.rewards import load_reward
        from icg.rewards.personalized import PersonalizedRewardConfig, PersonalizedRewardModel
        from icg.testing import tiny_clip_model

        clip, processor = tiny_clip_model()
        clip.save_pretrained(ctx.work / "clip")
        processor.save_pretrained(ctx.work / "clip")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config = PersonalizedRewardConfig(hidden_size=16, num_heads=2)
            PersonalizedRewardModel(config, clip, processor).save_pretrained(ctx.work / "reward")
        ctx.parts["rewards"] = {
            "clip": load_reward("clip", ctx.work / "clip").to(ctx.device),
            "personalized": load_reward("personalized", ctx.work / "reward").to(ctx.device),
        }
    return ctx.parts["rewards"]


def backward(ctx: CheckContext, loss: torch.Tensor) -> bool:
    """Backpropagate `loss` unless the device is fake (autograd's engine needs a CUDA driver for CUDA
    tensors, fake or not); True when gradients were computed."""
    if ctx.fake:
        return False
    loss.backward()
    return True


def device_adapter_step(ctx: CheckContext, flux: bool, stage: str):
    """An adapter-training step on 3 items × 2 users, built as the trainer builds it (frozen parts in the
    checked dtype, trainable adapter in float32)."""
    from icg.rewards import RewardTerm, WeightedRewards
    from icg.rewards.fast import RewardSpeed
    from icg.training.adapter import AdapterTrainConfig, backbone_of
    from icg.training.adapter_data import AdapterData, frozen_latents, item_features

    pipe = device_pipeline(ctx, flux)
    data = AdapterData(
        item_ids=["1", "2", "3"],
        titles=["Toy Story", "Heat", "Psycho"],
        covers=torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0)).byte(),
        user_ids=["1", "2"],
        profiles=["a 24-year-old male technician", "a 53-year-old female writer"],
        samples=torch.tensor([[0, 0], [0, 1], [1, 2], [1, 0]]),
    )
    config = AdapterTrainConfig(
        stage=stage, batch_size=2, num_inference_steps=3, stop_window=2, max_prompt_tokens=4,
        lambda_hps=0.0, lambda_pick=0.0, denoise_weight=1.0,
    )  # fmt: skip
    rewards = device_reward_parts(ctx)
    terms = {n: RewardTerm(rewards[n], w, rewards[n].default_loss)
             for n, w in config.reward_weights().items()}  # fmt: skip
    backbone = backbone_of(pipe)
    with device_mllm(ctx, pipe):
        # fake tensors cannot be written to disk: the fake run keeps the item cache in memory
        cache = None if ctx.fake else ctx.work / f"cache-{stage}-{flux}"
        feats = item_features(pipe, data, cache, 4, progress=False)
    ref = frozen_latents(pipe, data.covers, pipe.default_size)
    # the rewards' speed options as on a GPU, but for backward inside the forward: autograd cannot run on
    # fake CUDA (see `backward`)
    speed = RewardSpeed(early_backward=False) if ctx.fake else None
    objective = WeightedRewards(terms, speed=speed)
    step = backbone.step_class(pipe, data, feats, objective, config, ctx.device, ref)
    return step, backbone
