"""The personalized preference reward model: CLIP split, freeze rules, protocol, switches, persistence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from icg.rewards.base import RewardCheckpointError, preprocess
from icg.rewards.personalized import (
    PersonalizedRewardConfig,
    PersonalizedRewardModel,
    reward_text,
)
from icg.testing import tiny_clip_model

TEXTS = [reward_text("Toy Story", "an animation movie poster in cyan"), reward_text("Heat", "a crime poster")]
USERS = ["likes comedy; a 24-year-old male technician", "likes horror; a 53-year-old female writer"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: on a loaded 2-core machine, 2 threads make small ops ~50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **switches: object) -> PersonalizedRewardModel:
    clip, processor = tiny_clip_model(seed)
    config = PersonalizedRewardConfig(hidden_size=16, num_heads=2, **switches)  # type: ignore[arg-type]
    return PersonalizedRewardModel(config, clip, processor)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 48, 40, generator=torch.Generator().manual_seed(seed))  # resized + cropped inside


@pytest.mark.parametrize("k", [0, 1, 2])
def test_stem_then_top_equals_clip_features(k: int) -> None:
    model = make_model(trainable_clip_layers=k)
    clip, tok = model.clip, model.tokenizer
    texts = ["a drama movie about two cats", "hi", "likes comedy; a 24-year-old male technician from paris"]
    tokens = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    want = F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(model.text_top(model.text_stem(texts)), want, atol=1e-5, rtol=0)
    imgs = images(3)
    want = F.normalize(
        clip.get_image_features(pixel_values=preprocess(imgs, model.spec)).pooler_output, dim=-1
    )
    torch.testing.assert_close(model.image_top(model.image_stem(imgs)), want, atol=1e-5, rtol=0)


def test_only_last_k_clip_layers_and_new_modules_train() -> None:
    model = make_model(trainable_clip_layers=1)
    assert not any(p.requires_grad for p in model.parameters())  # constructed frozen: a reward
    params = model.set_trainable()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(params) == len(names)
    clip_names = {n for n in names if n.startswith("clip.")}
    allowed = (
        "clip.vision_model.encoder.layers.1.", "clip.vision_model.post_layernorm.", "clip.visual_projection.",
        "clip.text_model.encoder.layers.1.", "clip.text_model.final_layer_norm.", "clip.text_projection.",
    )  # fmt: skip
    assert clip_names and all(n.startswith(allowed) for n in clip_names)
    assert {n.split(".")[0] for n in names - clip_names} == {"heads", "slots", "fusion", "fc_per"}
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("clip."))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.train()
    pos = model.score(images(2, 1), TEXTS, USERS)
    neg = model.score(images(2, 2), TEXTS, USERS)
    (-F.logsigmoid(pos - neg).mean()).backward()
    optimizer.step()
    for name, p in model.named_parameters():  # frozen: untouched; trained: moved wherever a gradient arrived
        changed = not torch.equal(before[name], p)
        if name not in names:
            assert not changed and p.grad is None, name
        elif p.grad.abs().sum() > 0:  # fc_per's last bias cancels in p_m − p_n: no gradient, no move
            assert changed, name
    assert sum(not torch.equal(before[n], p) for n, p in model.named_parameters()) > 0.9 * len(names)


def test_k0_freezes_all_of_clip() -> None:
    model = make_model(trainable_clip_layers=0)
    model.set_trainable()
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_gradients_reach_the_images_of_a_frozen_reward() -> None:
    model = make_model()
    x = images(2).requires_grad_(True)
    scores = model.score(x, TEXTS, USERS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # the reward itself stays fixed


def test_batch_of_n_equals_n_singles() -> None:
    model = make_model()
    x = images(4)
    texts, users = TEXTS * 2, USERS + USERS[::-1]
    with torch.no_grad():
        batch = model.score(x, texts, users)
        singles = torch.cat([model.score(x[i : i + 1], texts[i : i + 1], users[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-5)


def test_switches_decide_which_inputs_matter() -> None:
    x = images(2)
    other_users = ["likes westerns; a 70-year-old retired person"] * 2
    other_texts = [reward_text("Alien", "a horror movie poster in black")] * 2
    with torch.no_grad():
        image_only = make_model(use_title=False, use_caption=False, use_user=False)
        assert set(image_only.heads) == {"image"} and not image_only.needs_texts
        base = image_only.score(x, None)
        torch.testing.assert_close(image_only.score(x, other_texts, other_users), base)
        assert not torch.allclose(image_only.score(images(2, seed=5), None), base)

        image_user = make_model(use_title=False, use_caption=False)
        base = image_user.score(x, None, USERS)
        torch.testing.assert_close(image_user.score(x, other_texts, USERS), base)
        assert not torch.allclose(image_user.score(x, None, other_users), base)

        image_title = make_model(use_caption=False, use_user=False)
        base = image_title.score(x, TEXTS)
        changed_caption = [reward_text("Toy Story", "x"), reward_text("Heat", "y")]
        torch.testing.assert_close(image_title.score(x, changed_caption), base)
        torch.testing.assert_close(image_title.score(x, ["Toy Story", "Heat"]), base)  # bare title accepted
        assert not torch.allclose(image_title.score(x, other_texts), base)

        full = make_model()
        assert not torch.allclose(full.score(x, changed_caption, USERS), full.score(x, TEXTS, USERS))
        assert make_model(fusion_layers=0).fusion is None and full.fusion is not None


def test_bad_inputs_are_value_errors() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="reward_text"):
        model.score(images(2), ["Toy Story", "Heat"], USERS)
    with pytest.raises(ValueError, match="profile sentences"):
        model.score(images(2), TEXTS, None)
    with pytest.raises(ValueError, match="one user per image"):
        model.score(images(2), TEXTS, USERS[:1])
    with pytest.raises(ValueError, match="newline"):
        reward_text("a\nb", "c")
    with pytest.raises(ValueError, match="at least one input"):
        PersonalizedRewardConfig(use_title=False, use_caption=False, use_image=False, use_user=False)
    with pytest.raises(ValueError, match="trainable_clip_layers"):
        make_model(trainable_clip_layers=3)


def test_save_load_round_trip(tmp_path) -> None:
    model = make_model(trainable_clip_layers=1, fusion_layers=1)
    with torch.no_grad():  # move every weight away from its initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    want = model.score(images(2), TEXTS, USERS)
    model.save_pretrained(tmp_path / "rm")
    loaded = PersonalizedRewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.config == model.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.score(images(2), TEXTS, USERS), want, atol=0, rtol=0)
    (tmp_path / "rm" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(RewardCheckpointError, match="model.safetensors"):
        PersonalizedRewardModel.from_pretrained(tmp_path / "rm")


TASTE = ("horror", "romance", "western")


def test_stated_taste_and_interaction_read_the_profile_and_survive_a_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = make_model(taste_genres=TASTE, interaction=True, trainable_clip_layers=0)
    assert model.config.features == ("title", "caption", "image", "user", "taste")
    with torch.no_grad():
        model.taste_head.weight.normal_()  # the taste head starts anywhere; make its effect visible
        model.user_proj.weight.normal_()
    x = images(2)
    horror = ["loves horror; dislikes romance"] * 2
    romance = ["loves romance; dislikes horror"] * 2
    with torch.no_grad():
        a, b = model.score(x, TEXTS, horror), model.score(x, TEXTS, romance)
    assert not torch.allclose(a, b)
    model.save_pretrained(tmp_path / "rm")
    loaded = PersonalizedRewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.config.taste_genres == TASTE and loaded.config.interaction
    torch.testing.assert_close(loaded.score(x, TEXTS, horror, grad=False), a, atol=0, rtol=0)
    torch.testing.assert_close(loaded.taste(horror)[0], torch.tensor([1.0, -1.0, 0.0]))


def test_taste_switches_are_checked() -> None:
    with pytest.raises(ValueError, match="use_user"):
        PersonalizedRewardConfig(use_user=False, taste_genres=TASTE)
    with pytest.raises(ValueError, match="interaction needs"):
        PersonalizedRewardConfig(use_title=False, use_caption=False, use_image=False, interaction=True)
    with pytest.raises(ValueError, match="no stated taste"):
        make_model().taste(["likes horror"])
