"""Tiny random models of the four public rewards, saved in their official on-disk layouts.

HPSv2 (an open_clip architecture config + a `.pt` dict whose `state_dict` holds the whole model), PickScore
(a transformers `CLIPModel` folder + a separate processor folder with the legacy preprocessor_config.json),
a CLIP ViT-L/14 stand-in (model and processor in one folder) and a LAION aesthetic head over it (the official
module layout, widths scaled down). Shared by the reward tests and the device checks (`icg.device_check`);
seeded, nothing downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from icg.testing import BOS_TOKEN, EOS_TOKEN, tiny_clip_tokenizer, tiny_clip_vocab

SIZE = 32  # vision tower input of every tiny model
PROJ = 24  # CLIP projection dim (768 for ViT-L/14)
TINY_HPS = "icg-tiny-hps"  # open_clip config registered from a file by `write_public_reward_files`
LEGACY_PREPROCESSOR = {  # the preprocessor_config.json layout of the PickScore / LAION CLIP-H repos
    "crop_size": SIZE,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": SIZE,
}


def tiny_reward_clip(seed: int) -> CLIPModel:
    """A 1-layer transformers CLIPModel (32 px, width 32, projection PROJ), logit scale log(100)."""
    vocab, _ = tiny_clip_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    text |= dict(num_attention_heads=2, max_position_embeddings=16)
    text |= dict(bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision |= dict(image_size=SIZE, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # the trained value; the random init is log(1/0.07)
    return model


def register_tiny_hps(root: str | Path) -> Path:
    """Write the tiny HPS open_clip config into `root` and register it as TINY_HPS."""
    import open_clip

    config = {
        "embed_dim": PROJ,
        "vision_cfg": {"image_size": SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = Path(root) / f"{TINY_HPS}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return path


def write_public_reward_files(root: str | Path) -> dict[str, Path]:
    """The four rewards' tiny files under `root` → {name: path}: `HPS_v2.1_compressed` (.pt), `PickScore_v1`
    + `pick_processor` (folders), `clip` (folder), `aesthetic` and `aesthetic_wide` (.pth; the wide head
    does not fit the CLIP, for error tests) and the `icg-tiny-hps` config. Load HPSv2 with
    `model_name=TINY_HPS` (registered here)."""
    import open_clip

    from icg.rewards import AestheticHead

    root = Path(root)
    register_tiny_hps(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        hps = open_clip.create_model(TINY_HPS, pretrained=None)
        torch.save({"state_dict": hps.state_dict()}, root / "HPS_v2.1_compressed.pt")
        tiny_reward_clip(2).save_pretrained(root / "PickScore_v1")
        tiny_clip_tokenizer(root / "pick_processor")
        (root / "pick_processor" / "preprocessor_config.json").write_text(json.dumps(LEGACY_PREPROCESSOR))
        tiny_reward_clip(3).save_pretrained(root / "clip")
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
        )
        CLIPProcessor(image_processor, tiny_clip_tokenizer(root / "clip_tok")).save_pretrained(root / "clip")
        torch.manual_seed(4)
        torch.save(AestheticHead((PROJ, 64, 32, 16, 8, 1)).state_dict(), root / "aesthetic.pth")
        torch.manual_seed(5)
        torch.save(AestheticHead((PROJ + 1, 64, 32, 16, 8, 1)).state_dict(), root / "aesthetic_wide.pth")
    return {p.stem if p.is_file() else p.name: p for p in root.iterdir()}


def load_public_rewards(files: dict[str, Path]) -> dict:
    """{hpsv2, pickscore, clip, aesthetic} loaded from `write_public_reward_files`' files by our loaders."""
    from icg.rewards import load_reward

    return {
        "hpsv2": load_reward("hpsv2", files["HPS_v2.1_compressed"], model_name=TINY_HPS),
        "pickscore": load_reward("pickscore", files["PickScore_v1"], processor_path=files["pick_processor"]),
        "clip": load_reward("clip", files["clip"]),
        "aesthetic": load_reward("aesthetic", files["aesthetic"], clip_path=files["clip"]),
    }
