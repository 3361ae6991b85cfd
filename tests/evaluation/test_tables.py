"""The paper's tables in protocol on the tiny preset: rows, stand-in names beside the paper's metrics."""

from __future__ import annotations

import dataclasses

import pytest

from icg.data.movielens import load_ml100k
from icg.evaluation.metrics import build_metrics
from icg.evaluation.tables import PAPER, run_table, table4_methods, table5_methods, table_markdown
from icg.presets import tiny_preset
from icg.testing import tiny_clip_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    clip, processor = tiny_clip_model()
    clip.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    spec = dataclasses.replace(tiny_preset(root / "tiny"), clip=str(root / "clip"), num_inference_steps=2)
    return spec, load_ml100k(), root


def test_table4_rows_and_markdown(setup, tmp_path):
    spec, data, root = setup
    suite = build_metrics(clip=spec.clip)
    result = run_table("table4", spec, data, table4_methods(), suite, n_users=2, n_items=2,
                       cache_dir=root / "covers", out_dir=tmp_path, progress=False)  # fmt: skip
    rows = result["rows"]
    assert list(rows) == list(PAPER["table4"])
    for row in rows.values():
        assert row["LPIPS-miniCLIP"] > 0 and row["FD-miniCLIP"] > 0 and 0 < row["SSIM"] <= 1
    # dropping the meta tokens changes the covers, hence the paired distance
    assert rows["icg"]["LPIPS-miniCLIP"] != rows["w/o meta token"]["LPIPS-miniCLIP"]
    text = (tmp_path / "table4_mini.md").read_text()
    assert "LPIPS-miniCLIP (ours) | LPIPS (paper)" in text and "| icg | " in text and "0.4018" in text
    assert text == table_markdown(result) and "- w/o both vs icg: LPIPS-miniCLIP " in text


def test_table5_uses_the_given_adapters_and_says_what_the_mini_lacks(setup, tmp_path):
    spec, data, root = setup
    methods = table5_methods(spec, spec.adapter, spec.adapter)
    assert [m.name for m in methods] == list(PAPER["table5"])
    assert methods[1].adapter == spec.adapter and "trains without" in methods[2].note
    suite = build_metrics(clip=spec.clip)
    result = run_table("table5", spec, data, methods[:2], suite, n_users=1, n_items=2,
                       cache_dir=root / "covers", progress=False)  # fmt: skip
    # the same adapter folder → the same covers → the same figures
    assert result["rows"]["icg"]["LPIPS-miniCLIP"] == result["rows"]["w/o CLIP"]["LPIPS-miniCLIP"]
    assert "Aesthetics (n/a) (ours)" in table_markdown(result)


def test_table3_rows_follow_the_paper_and_carry_their_own_preset(monkeypatch, tmp_path):
    from icg.evaluation import table3

    trained = []

    def fake_train(data, base, work, tokens, meta_stage, **kwargs):
        trained.append((tokens, meta_stage))
        return dataclasses.replace(base, num_meta_tokens=tokens, adapter=f"{work}/n{tokens}/{meta_stage}")

    monkeypatch.setattr(table3, "train_variant", fake_train)
    base = tiny_preset(tmp_path / "tiny")
    methods = table3.table3_methods(None, base, tmp_path)
    assert [m.name for m in methods] == list(PAPER["table3"])
    assert trained == [(n, stage) for stage in (False, True) for n in (1, 2, 4, 8)]
    assert all(m.spec.num_meta_tokens == int(m.name[2]) and m.adapter == m.spec.adapter for m in methods)


def test_table1_baselines_personalize_through_the_prompt_only(setup, tmp_path):
    from safetensors.torch import load_file

    from icg.baselines import TextualInversionConfig
    from icg.evaluation.table1 import table1_methods

    spec, data, root = setup
    methods = table1_methods(data, tmp_path, root / "covers", ti_config=TextualInversionConfig(epochs=2))
    assert [m.name for m in methods] == list(PAPER["table1"])
    assert all(m.adapter_scale == 0.0 for m in methods[:3]) and methods[3].adapter_scale is None
    suite = build_metrics(clip=spec.clip)
    result = run_table("table1", spec, data, methods, suite, n_users=2, n_items=2,
                       cache_dir=root / "covers", progress=False)  # fmt: skip
    rows = result["rows"]
    words = sorted((tmp_path / "textual_inversion" / "tokens").glob("*/learned_embeds.safetensors"))
    assert len(words) == 2 and all(len(load_file(w)) == 1 for w in words)  # diffusers' format, one word
    # the learned word and the keywords change the rule-based covers; ICG differs from all three
    lpips = {name: row["LPIPS-miniCLIP"] for name, row in rows.items()}
    assert len(set(lpips.values())) == 4, lpips
    assert "textual_inversion: one learned word" in table_markdown(result)


def test_table3_directions_compare_each_n_without_the_stage_to_with_it():
    rows = {
        "N=1 ✗": {"LPIPS-miniCLIP": 0.9},
        "N=1 ✓": {"LPIPS-miniCLIP": 1.0},
        "N=2 ✓": {"LPIPS-miniCLIP": 1},
    }
    result = {"table": "table3", "rows": rows, "paper": PAPER["table3"], "metric_notes": {},
              "setup": {"preset": "mini", "n_users": 1, "n_items": 1, "steps": 1, "guidance_scale": 1.0,
                        "fd_real_set": 1, "seconds": 0.0, "threads": 1}}  # fmt: skip
    text = table_markdown(result)
    assert "- N=1 ✗ vs N=1 ✓: LPIPS-miniCLIP better (worse)" in text  # ours lower, the paper's higher
    assert "N=2" not in text.split("Directions")[1].split("\n\n")[1]  # no ✗ row for N=2: no line
