"""Seeded tiny models for tests, benches and device checks (diffusers' `get_dummy_components` habit).

Every builder takes a seed and is deterministic: the same call gives bit-identical weights, and nothing
touches the network. The tiny preset's components and `materialize_tiny_preset` live in `icg.presets_tiny`
(`--preset tiny` is built there); their names stay importable from here for the tests. What is test-only
stays here: a tiny CLIPModel, random IP-Adapter weights, a random FID Inception.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from icg.presets_tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    TINY_CORPUS,
    TINY_MAX_LENGTH,
    get_dummy_components,
    materialize_tiny_preset,
    tiny_clip_tokenizer,
    tiny_clip_vocab,
    tiny_image_proj_state_dict,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "TINY_CORPUS",
    "TINY_MAX_LENGTH",
    "get_dummy_components",
    "materialize_tiny_preset",
    "random_fid_inception_state",
    "tiny_clip_model",
    "tiny_clip_tokenizer",
    "tiny_clip_vocab",
    "tiny_ip_adapter_state_dict",
    "tiny_scheduler",
    "tiny_text_encoder",
    "tiny_unet",
    "tiny_vae",
]


def tiny_clip_model(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A 2-layer CLIPModel (32 px, width 32, projection 16) + processor over the offline tiny tokenizer."""
    vocab, _ = tiny_clip_vocab()
    text = {
        "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN], "pad_token_id": vocab[EOS_TOKEN],
    }  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision |= {"image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return clip.eval(), CLIPProcessor(image_processor=images, tokenizer=tiny_clip_tokenizer())


def tiny_ip_adapter_state_dict(
    unet: UNet2DConditionModel, image_embed_dim: int = 24, num_tokens: int = 4, seed: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights in the official IP-Adapter-SD15 layout for `unet` (as `torch.load` of the .bin gives).

    `image_proj.{proj,norm}`: ImageProjModel (image_embed_dim → num_tokens × W); the k-th `attn2` layer in
    `unet.attn_processors` order gets `ip_adapter.{2k+1}.to_k_ip/to_v_ip.weight` (hidden, W).
    """
    width = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)  # test builder: seeded CPU weights, a checkpoint file's tensors
    image_proj = tiny_image_proj_state_dict(width, image_embed_dim, num_tokens, gen)
    ip_adapter: dict[str, torch.Tensor] = {}
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for k, name in enumerate(cross):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        shape = (attn.to_q.out_features, width)
        ip_adapter[f"{2 * k + 1}.to_k_ip.weight"] = torch.randn(shape, generator=gen) * width**-0.5
        ip_adapter[f"{2 * k + 1}.to_v_ip.weight"] = torch.randn(shape, generator=gen) * width**-0.5
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def random_fid_inception_state(seed: int = 3) -> dict[str, torch.Tensor]:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict with random weights, in the layout of its
    `weights-inception-2015-12-05-6726825d.pth` (what `load_fid` reads). Its constructor always loads that
    file: the loading is stubbed here only to build the random layout, never to download."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torch import nn

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(seed)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        for module in model.modules():  # variance-keeping init so the random 2048-d features are not ~1e-8
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.state_dict()
