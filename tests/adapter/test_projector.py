"""Personalized projector: LayerNorm(Linear(·)) per path, token order, IP-Adapter layout, input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import ImageProjection

from icg.adapter import PersonalizedProjector, ProjectorConfig


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_proj(
    x: torch.Tensor, proj: torch.nn.Linear, norm: torch.nn.LayerNorm, tokens: int
) -> torch.Tensor:
    """The paper's Proj written out by hand: LayerNorm over W of (x·Aᵀ + b) cut into `tokens` rows."""
    y = x @ proj.weight.T + proj.bias
    y = y.reshape(x.shape[0], tokens, -1)
    return F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps)


def _projector(user_dim: int | None = 8, seed: int = 0) -> PersonalizedProjector:
    torch.manual_seed(seed)
    cfg = ProjectorConfig(
        context_dim=16,
        num_meta_tokens=3,
        cross_attention_dim=32,
        num_context_tokens=4,
        user_dim=user_dim,
        num_user_tokens=2,
    )
    projector = PersonalizedProjector(cfg)
    with torch.no_grad():  # non-trivial LayerNorm affine so that its parameters matter
        for path in (projector.context_proj, projector.user_proj):
            if path is not None:
                path.norm.weight.uniform_(0.5, 1.5)
                path.norm.bias.uniform_(-0.5, 0.5)
    return projector


def test_forward_is_concat_of_two_layernorm_linear_paths() -> None:
    projector = _projector()
    c_ref, u_pre = _randn(5, 3, 16, seed=1), _randn(5, 8, seed=2)
    c_p = projector(c_ref, u_pre)
    assert c_p.shape == (5, 6, 32) == (5, projector.config.num_tokens, 32)
    ctx, usr = projector.context_proj, projector.user_proj
    assert usr is not None
    expected_ctx = _reference_proj(c_ref.reshape(5, -1), ctx.proj, ctx.norm, 4)
    expected_usr = _reference_proj(u_pre, usr.proj, usr.norm, 2)
    torch.testing.assert_close(c_p[:, :4], expected_ctx, rtol=0, atol=1e-5)
    torch.testing.assert_close(c_p[:, 4:], expected_usr, rtol=0, atol=1e-5)
    # Without a user the output is the context tokens alone.
    torch.testing.assert_close(projector(c_ref), c_p[:, :4], rtol=0, atol=0)
    # Each sample's tokens depend on its own inputs only.
    torch.testing.assert_close(projector(c_ref[:2], u_pre[:2]), c_p[:2], rtol=0, atol=1e-6)


def test_context_path_has_ip_adapter_image_projection_layout() -> None:
    """One meta token of CLIP width: the context path is diffusers' ImageProjection with the same weights."""
    torch.manual_seed(0)
    cfg = ProjectorConfig(context_dim=24, num_meta_tokens=1, cross_attention_dim=32, num_context_tokens=4)
    projector = PersonalizedProjector(cfg)
    reference = ImageProjection(image_embed_dim=24, cross_attention_dim=32, num_image_text_embeds=4)
    converted = {
        k.replace("proj", "image_embeds", 1) if k.startswith("proj") else k: v
        for k, v in projector.context_proj.state_dict().items()
    }
    reference.load_state_dict(converted)
    embeds = _randn(3, 24, seed=1)
    torch.testing.assert_close(projector(embeds[:, None, :]), reference(embeds), rtol=0, atol=1e-6)
    assert projector.user_proj is None and cfg.num_tokens == 4


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = _projector().config
    cfg.save(tmp_path / "projector.json")
    assert ProjectorConfig.load(tmp_path / "projector.json") == cfg
    assert ProjectorConfig.from_json(cfg.to_json()) == cfg  # text, as every other config
    with pytest.warns(DeprecationWarning, match="use save"):
        assert cfg.to_json(tmp_path / "old.json") == cfg.to_json()
    with pytest.warns(DeprecationWarning, match="use load"):
        assert ProjectorConfig.from_json(tmp_path / "old.json") == cfg
    assert ProjectorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ProjectorConfig fields"):
        ProjectorConfig.from_dict({**cfg.to_dict(), "hidden": 3})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context_dim": 0}, "context_dim must be a positive int"),
        ({"num_context_tokens": 2.5}, "num_context_tokens must be a positive int"),
        ({"user_dim": -1}, "user_dim must be a positive int or None"),
        ({"num_user_tokens": -1}, "num_user_tokens must be an int >= 0"),
    ],
)
def test_config_rejects_bad_sizes(kwargs: dict[str, object], match: str) -> None:
    base = {"context_dim": 16, "num_meta_tokens": 3, "cross_attention_dim": 32}
    with pytest.raises(ValueError, match=match):
        ProjectorConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_inputs_name_the_tensor_and_expected_shape() -> None:
    projector = _projector()
    u_pre = _randn(2, 8, seed=2)
    with pytest.raises(
        ValueError, match=r"context_embeds \(C_ref\) has shape \(2, 4, 16\), expected \(B, 3, 16\)"
    ):
        projector(_randn(2, 4, 16, seed=1), u_pre)
    with pytest.raises(ValueError, match=r"context_embeds \(C_ref\) has shape \(2, 48\)"):
        projector(_randn(2, 48, seed=1))
    with pytest.raises(ValueError, match=r"user_embeds \(U_pre\) has shape \(3, 8\), expected \(2, 8\)"):
        projector(_randn(2, 3, 16, seed=1), _randn(3, 8, seed=2))
    bad = _randn(2, 3, 16, seed=1)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"context_embeds \(C_ref\) contains NaN"):
        projector(bad, u_pre)
    with pytest.raises(ValueError, match="floating-point"):
        projector(torch.ones(2, 3, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        projector([[0.0] * 16] * 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no user path"):
        _projector(user_dim=None)(_randn(2, 3, 16, seed=1), u_pre)
