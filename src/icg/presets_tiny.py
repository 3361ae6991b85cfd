"""The `tiny` preset: seeded tiny components of the real SD1.5-pipeline classes, saved like checkpoints.

`materialize_tiny_preset` writes the preset that `--preset tiny` loads (`icg.presets.tiny_preset`); its parts
(`get_dummy_components`, diffusers' habit, and the builders below) also serve the tests (`icg.testing`).
Every builder takes a seed and is deterministic: the same call gives bit-identical weights. Nothing here
touches the network: the CLIP tokenizer's vocabulary and merges are written by this module and loaded back
from disk with `CLIPTokenizer.from_pretrained(folder)`, exactly as a user's tokenizer folder would be.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from icg.adapter.attention import install_dual_path_adapter
from icg.adapter.checkpoint import save_adapter
from icg.adapter.projector import PersonalizedProjector, ProjectorConfig
from icg.bpe import bytes_to_unicode, learn_merges
from icg.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, WORD_END, clip_vocab, write_vocab_and_merges
from icg.context import ContextEncoder, build_tiny_context_encoder
from icg.data.movielens import load_ml100k
from icg.presets_spec import PresetSpec
from icg.users import FeatureVocab, TwoTowerConfig, TwoTowerModel, attach_taste_table

TINY_MAX_LENGTH = 16  # token positions of the tiny text encoder (SD1.5 uses 77)
TINY_NUM_MERGES = 300

# A small fixed corpus in the domain's words, only to learn a few hundred byte-pair merges offline.
TINY_CORPUS = """
a movie poster of a cartoon cat in a city at night, bright neon colors, cinematic lighting, high detail
the cover of a drama film with two people on a beach at sunset, soft warm light, film grain, portrait
an action thriller poster, a man running from an explosion, dark blue and orange, dramatic composition
a children's animated movie cover with friendly animals in a green forest, cheerful, colorful illustration
a horror film poster, a dark house in the fog, moonlight, eerie atmosphere, minimal typography
a romantic comedy cover, a couple laughing in a cafe in paris, pastel colors, photograph
a science fiction poster with a spaceship above a red planet, stars, futuristic, digital art
a documentary cover about the ocean, whales under water, natural light, realistic photo
a western movie poster, a cowboy on a horse in the desert, dust, golden hour, painting
a fantasy adventure cover with a dragon over a castle, mountains, epic, detailed oil painting
a crime story poster, a detective in the rain, city street, black and white, noir style
a musical film cover, dancers on a stage, spotlight, vibrant costumes, joyful mood
user prefers cartoons and children's movies, age twenty seven, male teacher, likes comedy and animation
user likes drama, thriller and mystery, female student, age nineteen, prefers dark and moody covers
"""


def _corpus_words(corpus: str) -> Counter[str]:
    """The tiny corpus' words (letter runs, single digits, punctuation runs) in the byte alphabet."""
    byte_map = bytes_to_unicode()
    words = re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", corpus.lower())
    return Counter("".join(byte_map[b] for b in word.encode("utf-8")) for word in words)


@functools.lru_cache(maxsize=1)
def tiny_clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP-layout vocabulary: 256 byte symbols, the same with `</w>`, learned merges, then BOS and EOS."""
    merges = learn_merges(_corpus_words(TINY_CORPUS), TINY_NUM_MERGES, end_of_word=WORD_END)
    return clip_vocab(merges), tuple(merges)


def tiny_clip_tokenizer(
    directory: str | Path | None = None, max_length: int = TINY_MAX_LENGTH
) -> CLIPTokenizer:
    """Write vocab.json, merges.txt, tokenizer_config.json into `directory` (temp if None); load them."""
    vocab, merges = tiny_clip_vocab()

    def write(folder: Path) -> CLIPTokenizer:
        write_vocab_and_merges(folder, vocab, merges)
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length}
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return CLIPTokenizer.from_pretrained(str(folder))

    if directory is not None:
        return write(Path(directory))
    with tempfile.TemporaryDirectory() as tmp:
        return write(Path(tmp))


def tiny_text_encoder(
    seed: int = 0, hidden_size: int = 32, max_length: int = TINY_MAX_LENGTH
) -> CLIPTextModel:
    """CLIP text transformer over the tiny tokenizer's vocabulary; hidden_size = the UNet's cross-attn dim."""
    vocab, _ = tiny_clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        projection_dim=hidden_size,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_unet(
    cross_attention_dim: int = 32,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    attention_head_dim: int = 4,
    layers_per_block: int = 1,
    sample_size: int = 8,
) -> UNet2DConditionModel:
    """SD1.5-shaped UNet: cross-attention down blocks then a plain one, mirrored up blocks, attention mid.

    `attention_head_dim` follows diffusers' (historical) meaning for this class: the number of heads.
    With the defaults there are 4 cross-attention layers: down 0 (32), mid (64), up 1 twice (32).
    """
    depth = len(block_out_channels)
    if depth < 2:
        raise ValueError(f"block_out_channels needs at least 2 entries, got {block_out_channels}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=8,
    )
    return unet.eval()


def tiny_vae(seed: int = 0, sample_size: int = 64, **options: Any) -> AutoencoderKL:
    """AutoencoderKL with 4 latent channels and SD's downsampling factor 8 (4 blocks), 64 px ↔ 8×8 latents.

    `options` are further AutoencoderKL arguments: the tiny Flux VAE drops the quant convs and sets its
    shift and scaling factors here, on the same blocks.
    """
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
        **options,
    )
    return vae.eval()


def tiny_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's training schedule (scaled_linear betas 0.00085 → 0.012, 1000 steps)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tiny_image_proj_state_dict(
    width: int, image_embed_dim: int, num_tokens: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random IP-Adapter `image_proj` weights (ImageProjModel: image_embed_dim → num_tokens × width, then a
    LayerNorm), drawn from `gen` first, as both backbones' tiny IP-Adapter state dicts start."""
    return {
        "proj.weight": torch.randn(num_tokens * width, image_embed_dim, generator=gen) * 0.2,
        "proj.bias": torch.randn(num_tokens * width, generator=gen) * 0.1,
        "norm.weight": 1.0 + 0.1 * torch.randn(width, generator=gen),
        "norm.bias": 0.1 * torch.randn(width, generator=gen),
    }


def tiny_projector(
    context_dim: int, cross_attention_dim: int, user_dim: int, seed: int = 0
) -> PersonalizedProjector:
    """The tiny presets' c_p projector (one meta token), seeded without moving the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PersonalizedProjector(
            ProjectorConfig(
                context_dim=context_dim,
                num_meta_tokens=1,
                cross_attention_dim=cross_attention_dim,
                user_dim=user_dim,
            )
        )


def tiny_spec(name: str, **fields: Any) -> PresetSpec:
    """A tiny preset's spec: its parts in the folders `materialize_tiny*_preset` writes, 12-token prompts."""
    return PresetSpec(
        name=name,
        base_model="backbone",
        context_encoder="context_encoder",
        user_encoder="user_encoder",
        adapter="adapter",
        explicit_prompt_tokens=12,
        **fields,
    )


@contextlib.contextmanager
def staged_preset(folder: str | Path, spec: PresetSpec) -> Iterator[Path]:
    """Yield a sibling temp folder to build a preset in; at the end write its `preset.json` and rename it
    into `folder`, so a crash never leaves a half-written preset where a loader would find it."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    yield staging
    (staging / "preset.json").write_text(spec.to_json(), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)


def get_dummy_components(tmp_dir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """An SD1.5-shaped pipeline's components at tiny size: unet, vae, text_encoder, tokenizer, scheduler."""
    tokenizer_dir = Path(tmp_dir) / "tokenizer" if tmp_dir is not None else None
    return {
        "unet": tiny_unet(seed=seed),
        "vae": tiny_vae(seed=seed),
        "text_encoder": tiny_text_encoder(seed=seed),
        "tokenizer": tiny_clip_tokenizer(tokenizer_dir),
        "scheduler": tiny_scheduler(),
    }


def materialize_tiny_preset(folder: str | Path, seed: int = 0) -> Path:
    """Write the `tiny` preset: every component saved like a real checkpoint, plus `preset.json`.

    Layout: backbone/{unet,vae,text_encoder,tokenizer,scheduler} (a diffusers folder), context_encoder/
    (Qwen2.5-VL + meta tokens), user_encoder/ (two-tower, ml-100k vocabulary, untrained), adapter/ (dual path
    + projector, initialised from the text path). Built in a sibling temp folder and renamed into place, so
    a crash never leaves a half-written preset. Paths in preset.json are relative to the folder.
    """
    with staged_preset(folder, tiny_spec("tiny")) as staging:
        components = get_dummy_components(staging / "tokenizer-src", seed=seed)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            components[name].save_pretrained(staging / "backbone" / name)
        shutil.rmtree(staging / "tokenizer-src")

        build_tiny_context_encoder(staging / "context_encoder", seed=seed)
        context = ContextEncoder.from_pretrained(staging / "context_encoder", num_meta_tokens=1, seed=seed)
        context.save_pretrained(staging / "context_encoder")

        data = load_ml100k()
        vocab = FeatureVocab.from_data(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            users = TwoTowerModel(TwoTowerConfig.for_vocab(vocab), vocab)
        genres, titles = vocab.item_tables(data.items)
        users.set_tables(
            torch.from_numpy(vocab.user_table(data.users)), torch.from_numpy(genres), torch.from_numpy(titles)
        )
        attach_taste_table(users, data)  # stated-taste cold start works on the tiny preset too
        users.save_pretrained(staging / "user_encoder")

        unet = components["unet"]
        adapter = install_dual_path_adapter(unet, init="text")
        dims = (context.hidden_size, unet.config.cross_attention_dim, users.config.output_dim)
        save_adapter(staging / "adapter", adapter, tiny_projector(*dims, seed=seed))
    return Path(folder)
