"""HPSv2, PickScore, CLIP similarity, LAION aesthetic: tiny random models of the real classes, saved in the
official on-disk layouts, loaded back through our loaders; batching, gradients, the official scoring path,
bad input and bad files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from icg.rewards import (
    AestheticHead,
    Reward,
    RewardCheckpointError,
    Users,
    WeightedRewards,
    load_aesthetic,
    load_clip_similarity,
    load_hpsv2,
    load_pickscore,
    load_reward,
)
from icg.testing_rewards import PROJ, SIZE, TINY_HPS, load_public_rewards, write_public_reward_files

TEXTS = ["a cartoon cat in a city at night", "a horror film poster", "a western movie poster", "a dragon"]


def _images(b: int, h: int = 40, w: int = 36, seed: int = 0, quantize: bool = False) -> torch.Tensor:
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return (x * 255).round() / 255 if quantize else x  # quantized: exactly representable as uint8 PIL


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_public_reward_files(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def rewards(files: dict[str, Path]) -> dict[str, Reward]:
    return load_public_rewards(files)


NAMES = ["hpsv2", "pickscore", "clip", "aesthetic"]


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_calls(rewards: dict[str, Reward], name: str) -> None:
    reward = rewards[name]
    images = _images(4)  # (4, 3, 40, 36): not the tower's size, so resizing runs
    batch = reward.score(images, TEXTS, grad=False)
    singles = torch.cat([reward.score(images[i : i + 1], TEXTS[i : i + 1], grad=False) for i in range(4)])
    assert batch.shape == (4,) and batch.dtype == torch.float32
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert batch.std() > 1e-4, "scores do not depend on the input"


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_images_not_weights(rewards: dict[str, Reward], name: str) -> None:
    reward = rewards[name]
    images = _images(2, seed=1).requires_grad_(True)
    reward.score(images, TEXTS[:2]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_public_rewards_stay_in_eval_mode(rewards: dict[str, Reward], name: str) -> None:
    """A training loop's `module.train()` must not switch on dropout (the aesthetic head has three)."""
    before = rewards[name].score(_images(2), TEXTS[:2], grad=False)
    torch.nn.ModuleDict({"r": rewards[name]}).train()
    assert not any(m.training for m in rewards[name].modules())
    torch.testing.assert_close(rewards[name].score(_images(2), TEXTS[:2], grad=False), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_no_grad_mode_builds_no_graph(rewards: dict[str, Reward], name: str) -> None:
    images = _images(2, seed=2).requires_grad_(True)
    scores = rewards[name].score(images, TEXTS[:2], grad=False)
    assert not scores.requires_grad and scores.grad_fn is None
    with torch.no_grad():
        assert rewards[name].score(images, TEXTS[:2]).grad_fn is None  # an outer no_grad is honoured too


@pytest.mark.parametrize("name", NAMES)
def test_users_are_accepted_and_ignored(rewards: dict[str, Reward], name: str) -> None:
    images = _images(2, seed=3)
    plain = rewards[name].score(images, TEXTS[:2], grad=False)
    profiles = ["male, 27, teacher, likes cartoons", "female, 19, student, likes thrillers"]
    torch.testing.assert_close(rewards[name].score(images, TEXTS[:2], profiles, grad=False), plain)
    torch.testing.assert_close(rewards[name].score(images, TEXTS[:2], torch.randn(2, 8), grad=False), plain)


BAD_INPUTS = [
    (lambda x: x * 2, TEXTS[:2], None, r"\[0, 1\]"),
    (lambda x: x - 0.5, TEXTS[:2], None, r"\[0, 1\]"),
    (lambda x: x.masked_fill(x > 0.5, float("nan")), TEXTS[:2], None, r"\[0, 1\]"),
    (lambda x: x[0], TEXTS[:2], None, r"\(B, 3, H, W\)"),
    (lambda x: x[:, :1], TEXTS[:2], None, r"\(B, 3, H, W\)"),
    (lambda x: x[:0], [], None, r"B >= 1"),
    (lambda x: (x * 255).to(torch.uint8), TEXTS[:2], None, "float tensor"),
    (lambda x: x, TEXTS[:3], None, "2 images but 3 texts"),
    (lambda x: x, "a cat", None, "not a single string"),
    (lambda x: x, TEXTS[:2], ["only one user"], "users for 1"),
    (lambda x: x, TEXTS[:2], torch.randn(3, 8), "users for 3"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("make", "texts", "users", "match"), BAD_INPUTS)
def test_bad_input_is_a_clear_value_error(
    rewards: dict[str, Reward],
    name: str,
    make: Callable[[torch.Tensor], torch.Tensor],
    texts: object,
    users: Users,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        rewards[name].score(make(_images(2)), texts, users)


def test_texts_required_except_for_the_aesthetic_reward(rewards: dict[str, Reward]) -> None:
    with pytest.raises(ValueError, match="texts must be a list"):
        rewards["pickscore"].score(_images(2), None)
    scores = rewards["aesthetic"].score(_images(2), None, grad=False)  # image-only: texts may be omitted
    torch.testing.assert_close(scores, rewards["aesthetic"].score(_images(2), TEXTS[:2], grad=False))


def test_hpsv2_equals_the_official_open_clip_path(rewards: dict[str, Reward], files: dict[str, Path]) -> None:
    """Official: open_clip transform (longest side, pad) on PIL, model(image, text), diag(img @ txt.T)."""
    model = open_clip.create_model(TINY_HPS, pretrained=None, output_dict=True)  # as the HPS repo does
    model.load_state_dict(torch.load(files["HPS_v2.1_compressed"], weights_only=True)["state_dict"])
    model.eval()
    transform = open_clip.image_transform(SIZE, is_train=False, resize_mode="longest")
    images = _images(3, h=SIZE, w=19, quantize=True)  # longest side already 32: no resampling, only padding
    pils = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    with torch.no_grad():
        out = model(torch.stack([transform(p) for p in pils]), open_clip.get_tokenizer(TINY_HPS)(TEXTS[:3]))
        expected = torch.diagonal(out["image_features"] @ out["text_features"].T)
    torch.testing.assert_close(
        rewards["hpsv2"].score(images, TEXTS[:3], grad=False), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", ["pickscore", "clip", "aesthetic"])
def test_transformers_rewards_equal_the_processor_path(
    rewards: dict[str, Reward], files: dict[str, Path], name: str
) -> None:
    """Official: CLIPProcessor on PIL images (shortest side, center crop), features, then each formula."""
    folder = files["PickScore_v1"] if name == "pickscore" else files["clip"]
    processor = CLIPProcessor.from_pretrained(
        files["pick_processor"] if name == "pickscore" else files["clip"]
    )
    model = CLIPModel.from_pretrained(folder).eval()
    images = _images(3, h=45, w=SIZE, quantize=True)  # shortest side already 32: only the center crop
    pils = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    inputs = processor(text=TEXTS[:3], images=pils, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        img = F.normalize(model.get_image_features(pixel_values=inputs.pixel_values).pooler_output, dim=-1)
        txt = model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        txt = F.normalize(txt.pooler_output, dim=-1)
        if name == "aesthetic":
            head = AestheticHead((PROJ, 64, 32, 16, 8, 1)).eval()
            head.load_state_dict(torch.load(files["aesthetic"], weights_only=True))
            expected = head(img)
        else:
            expected = (img * txt).sum(-1) * (model.logit_scale.exp() if name == "pickscore" else 1.0)
    ours = rewards[name].score(images, TEXTS[:3], grad=False)
    torch.testing.assert_close(ours, expected, atol=1e-4 if name == "pickscore" else 1e-5, rtol=0)


def test_clip_scale_multiplies_the_cosine(rewards: dict[str, Reward], files: dict[str, Path]) -> None:
    scaled = load_clip_similarity(files["clip"], scale=100.0).score(_images(2), TEXTS[:2], grad=False)
    torch.testing.assert_close(scaled, 100 * rewards["clip"].score(_images(2), TEXTS[:2], grad=False))


def test_weighted_rewards_over_real_rewards(rewards: dict[str, Reward]) -> None:
    objective = WeightedRewards.from_rewards({k: rewards[k] for k in ("hpsv2", "pickscore", "clip")})
    images = _images(2, seed=6).requires_grad_(True)
    out = objective(images, TEXTS[:2], users=["u1", "u2"])
    expected = sum(0.25 * rewards[k].default_loss(out.scores[k]) for k in out.scores)
    torch.testing.assert_close(out.total, expected)
    out.total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert set(out.log_values()) == {"loss/total"} | {
        f"{p}/{k}" for p in ("loss", "reward") for k in out.scores
    }


# --------------------------------------------------------------------------- bad files


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00not a checkpoint\xff" * 4)
    return path


def test_hpsv2_bad_files_name_the_file(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RewardCheckpointError, match="missing.pt: HPSv2 checkpoint not found"):
        load_reward("hpsv2", tmp_path / "missing.pt")  # default ViT-H-14: fails before building the model
    with pytest.raises(RewardCheckpointError, match="corrupt.pt: cannot read the HPSv2 checkpoint"):
        load_hpsv2(_garbage(tmp_path / "corrupt.pt"), TINY_HPS)
    torch.save({"model": {}}, tmp_path / "flat.pt")
    with pytest.raises(RewardCheckpointError, match="flat.pt: not an HPSv2 checkpoint.*'state_dict'"):
        load_hpsv2(tmp_path / "flat.pt", TINY_HPS)
    state = torch.load(files["HPS_v2.1_compressed"], weights_only=True)["state_dict"]
    del state["logit_scale"]
    state["text_projection"] = torch.zeros(32, PROJ + 1)  # another architecture's projection
    torch.save({"state_dict": state}, tmp_path / "other_arch.pt")
    with pytest.raises(
        RewardCheckpointError, match="other_arch.pt: the HPSv2 .* missing 1 .*shape mismatch 1"
    ):
        load_hpsv2(tmp_path / "other_arch.pt", TINY_HPS)
    with pytest.raises(ValueError, match="unknown open_clip model config 'no-such-model'"):
        load_hpsv2(files["HPS_v2.1_compressed"], "no-such-model")


def test_transformers_bad_folders_name_the_folder(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RewardCheckpointError, match="nowhere: CLIP model folder not found"):
        load_pickscore(tmp_path / "nowhere")
    broken = shutil.copytree(files["clip"], tmp_path / "broken_clip")
    _garbage(broken / "model.safetensors")
    with pytest.raises(RewardCheckpointError, match="broken_clip: cannot load a transformers CLIPModel"):
        load_clip_similarity(broken)
    with pytest.raises(RewardCheckpointError, match="PickScore_v1: cannot load the CLIP processor"):
        load_pickscore(files["PickScore_v1"])  # model folder without processor files, no processor_path


def test_aesthetic_bad_files(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RewardCheckpointError, match="gone.pth: LAION aesthetic head checkpoint not found"):
        load_aesthetic(tmp_path / "gone.pth", files["clip"])
    with pytest.raises(RewardCheckpointError, match="bad.pth: cannot read"):
        load_aesthetic(_garbage(tmp_path / "bad.pth"), files["clip"])
    torch.save({"fc.weight": torch.zeros(1, PROJ)}, tmp_path / "other.pth")
    with pytest.raises(RewardCheckpointError, match="other.pth: not a LAION aesthetic head"):
        load_aesthetic(tmp_path / "other.pth", files["clip"])
    with pytest.raises(ValueError, match="takes 25-d embeddings but the CLIP projects to 24-d"):
        load_aesthetic(files["aesthetic_wide"], files["clip"])
    with pytest.raises(ValueError, match="needs clip_path"):
        load_aesthetic(files["aesthetic"])


def test_official_aesthetic_layout_loads_at_full_width(tmp_path: Path) -> None:
    """The real head's shapes (768 → 1024 → 128 → 64 → 16 → 1) and keys, as the official MLP saves them."""
    official = torch.nn.Sequential(
        torch.nn.Linear(768, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )
    state = {f"layers.{k}": v for k, v in official.state_dict().items()}
    head = AestheticHead()
    head.load_state_dict(state, strict=True)
    x = F.normalize(torch.randn(3, 768), dim=-1)
    torch.testing.assert_close(head.eval()(x), official.eval()(x).squeeze(-1))
