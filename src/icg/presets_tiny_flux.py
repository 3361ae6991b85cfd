"""The `tiny-flux` preset: seeded tiny FLUX.1 components of the real classes, saved like checkpoints.

`materialize_tiny_flux_preset` writes the preset that `--preset tiny-flux` loads
(`icg.presets.tiny_flux_preset`); its parts also serve the tests (`icg.testing_flux`).

The same classes as FLUX.1-dev (`FluxTransformer2DModel` with guidance embedding, a 16→4-channel
`AutoencoderKL` with shift/scale factors, `CLIPTextModel` for the pooled prompt, `T5EncoderModel` +
`T5Tokenizer` for the sequence, `FlowMatchEulerDiscreteScheduler` with dynamic shifting) at tiny sizes. The T5
tokenizer is a Unigram vocabulary written by this module (no sentencepiece model, no network).
"""

from __future__ import annotations

import re
import shutil
import string
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from icg.adapter.checkpoint import save_adapter
from icg.adapter.flux import load_ip_adapter_flux
from icg.context import ContextEncoder
from icg.presets_tiny import (
    TINY_CORPUS,
    materialize_tiny_preset,
    staged_preset,
    tiny_clip_tokenizer,
    tiny_image_proj_state_dict,
    tiny_projector,
    tiny_spec,
    tiny_text_encoder,
    tiny_vae,
)
from icg.users import TwoTowerModel

TINY_FLUX_WIDTH = 32  # joint_attention_dim = T5 d_model = c_p width; also the CLIP pooled width
TINY_FLUX_SIZE = 32  # pixels of a tiny-flux cover (VAE factor 8 → 4×4 latents → 2×2 packed tokens)
TINY_T5_LENGTH = 16  # max_sequence_length of the tiny T5


def tiny_flux_transformer(
    seed: int = 0, num_layers: int = 1, num_single_layers: int = 1
) -> FluxTransformer2DModel:
    """FLUX.1-dev-shaped transformer: double then single blocks, guidance embedding, RoPE over (4, 6, 6)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels × the 2×2 packing
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_FLUX_WIDTH,
        pooled_projection_dim=TINY_FLUX_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def tiny_flux_vae(seed: int = 0) -> AutoencoderKL:
    """Flux-style AutoencoderKL: no quant convs, shift/scaling factors, factor 8, sample_size = cover px."""
    return tiny_vae(
        seed,
        sample_size=TINY_FLUX_SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def tiny_t5_tokenizer(directory: str | Path, max_length: int = TINY_T5_LENGTH) -> T5Tokenizer:
    """A Unigram T5 tokenizer over the corpus words and single characters, saved and loaded back."""
    words = sorted(set(re.findall(r"[a-z]+", TINY_CORPUS.lower())))
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -6.0)]
    vocab += [(f"▁{w}", -0.1 * len(w)) for w in words]
    vocab += [(c, -5.0) for c in chars] + [(f"▁{c}", -5.0) for c in chars]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
    tokenizer.save_pretrained(str(directory))
    return T5Tokenizer.from_pretrained(str(directory))


def tiny_t5(vocab_size: int, seed: int = 0) -> T5EncoderModel:
    """A 2-layer T5 encoder whose d_model is the transformer's joint_attention_dim."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=TINY_FLUX_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def tiny_flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler config (shift 3, dynamic shifting 0.5 → 1.15 over 256 … 4096 tokens)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def get_dummy_flux_components(tmp_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """A FluxPipeline's components at tiny size (the tokenizers are written under `tmp_dir`)."""
    tmp = Path(tmp_dir)
    tokenizer_2 = tiny_t5_tokenizer(tmp / "tokenizer_2")
    return {
        "transformer": tiny_flux_transformer(seed=seed),
        "vae": tiny_flux_vae(seed=seed),
        "text_encoder": tiny_text_encoder(seed=seed, hidden_size=TINY_FLUX_WIDTH),
        "tokenizer": tiny_clip_tokenizer(tmp / "tokenizer"),
        "text_encoder_2": tiny_t5(len(tokenizer_2), seed=seed),
        "tokenizer_2": tokenizer_2,
        "scheduler": tiny_flux_scheduler(),
    }


def tiny_ip_adapter_flux_state_dict(
    transformer: FluxTransformer2DModel, image_embed_dim: int = 24, num_tokens: int = 4, seed: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights in IP-Adapter-Flux's layout: `image_proj.{proj,norm}` and, for the k-th double-stream
    block, `ip_adapter.{k}.to_{k,v}_ip.{weight,bias}` (hidden = inner_dim, input = joint_attention_dim)."""
    width, hidden = transformer.config.joint_attention_dim, transformer.inner_dim
    gen = torch.Generator().manual_seed(seed)  # test builder: seeded CPU weights, a checkpoint file's tensors
    image_proj = tiny_image_proj_state_dict(width, image_embed_dim, num_tokens, gen)
    ip_adapter: dict[str, torch.Tensor] = {}
    for k in range(len(transformer.transformer_blocks)):
        for part in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{k}.{part}.weight"] = torch.randn(hidden, width, generator=gen) * width**-0.5
            ip_adapter[f"{k}.{part}.bias"] = torch.randn(hidden, generator=gen) * 0.1
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def materialize_tiny_flux_preset(folder: str | Path, seed: int = 0) -> Path:
    """Write the `tiny-flux` preset: a diffusers Flux folder, the tiny context and user encoders, an adapter.

    Layout as `materialize_tiny_preset` (backbone/{transformer,vae,text_encoder,tokenizer,text_encoder_2,
    tokenizer_2,scheduler}, context_encoder/, user_encoder/, adapter/ saved with backbone="flux"); the adapter
    starts from random IP-Adapter-Flux-layout weights so that c_p visibly changes the covers. Staged in a
    sibling temp folder and renamed into place.
    """
    spec = tiny_spec("tiny-flux", backbone="flux", num_inference_steps=4, guidance_scale=3.5)
    with staged_preset(folder, spec) as staging:
        # the context and user encoders are the tiny preset's: built once there, copied here
        sd15 = materialize_tiny_preset(staging / "sd15", seed=seed)
        for part in ("context_encoder", "user_encoder"):
            shutil.move(str(sd15 / part), str(staging / part))
        shutil.rmtree(sd15)
        components = get_dummy_flux_components(staging / "tokenizers", seed=seed)
        for name, module in components.items():
            module.save_pretrained(staging / "backbone" / name)
        shutil.rmtree(staging / "tokenizers")

        context = ContextEncoder.from_pretrained(staging / "context_encoder", num_meta_tokens=1)
        users = TwoTowerModel.from_pretrained(staging / "user_encoder")
        transformer = components["transformer"]
        dims = (context.hidden_size, transformer.config.joint_attention_dim, users.config.output_dim)
        imported = load_ip_adapter_flux(transformer, tiny_ip_adapter_flux_state_dict(transformer, seed=seed))
        save_adapter(staging / "adapter", imported.adapter, tiny_projector(*dims, seed=seed), backbone="flux")
    return Path(folder)
