"""Device mixes caught without a GPU: every model path runs on a fake CUDA device (FakeTensors), where a CPU
tensor meeting a CUDA one raises as it would on a GPU; the same paths run for real on the CPU."""

from __future__ import annotations

import pytest
import torch

from icg.context.meta_tokens import append_meta_placeholders
from icg.device_check import PATHS, DeviceMixError, check_on_device, fake_cuda, run_paths


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def fake_results():
    return {r.name: r for r in run_paths("cuda", fake=True)}


@pytest.fixture(scope="module")
def cpu_results():
    return {r.name: r for r in run_paths("cpu")}


@pytest.mark.parametrize("name", list(PATHS))
def test_path_is_device_clean_on_fake_cuda(fake_results, name: str) -> None:
    result = fake_results[name]
    assert result.ok, result.line()


@pytest.mark.parametrize("name", list(PATHS))
def test_path_runs_on_cpu(cpu_results, name: str) -> None:
    result = cpu_results[name]
    assert result.ok, result.line()


def test_fake_cuda_catches_a_cpu_tensor_meeting_a_cuda_one() -> None:
    with fake_cuda():
        on_gpu = torch.ones(3).to("cuda")
        assert on_gpu.device.type == "cuda"
        with pytest.raises(RuntimeError, match="device"):
            torch.cat([on_gpu, torch.zeros(2)])  # the bug of issue 15: a factory without device=
        assert torch.cat([on_gpu, torch.zeros(2, device=on_gpu.device)]).shape == (5,)


def test_fake_cuda_moves_modules_and_leaves_cpu_work_real() -> None:
    layer = torch.nn.Linear(4, 2)
    with fake_cuda():
        layer.to("cuda")
        out = layer(torch.ones(1, 4).cuda())
        host = torch.arange(3)  # host-side work keeps real values
        assert host.tolist() == [0, 1, 2]
    assert out.device.type == "cuda" and layer.weight.device.type == "cuda"


def test_meta_placeholders_follow_their_inputs_device() -> None:
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    seq = append_meta_placeholders(ids, mask, torch.zeros_like(ids), 2, 3, 0, answers=[[4], [4, 4]])
    for name in ("input_ids", "attention_mask", "mm_token_type_ids", "meta_index", "labels"):
        assert getattr(seq, name).device == ids.device, name
    assert seq.input_ids[0].tolist() == [0, 0, 5, 6, 3, 3, 4]


def test_check_on_device_names_the_tensor() -> None:
    check_on_device("x", torch.device("cpu"), {"a": torch.zeros(1), "not a tensor": 3})
    with pytest.raises(DeviceMixError, match="b is on cpu"):
        check_on_device("step", torch.device("cuda"), {"b": torch.zeros(1)})


def test_training_paths_run_in_bfloat16() -> None:
    """The GPU check caught a dtype mix here (fp32 adapter, bf16 backbone without autocast): bf16 on the CPU
    takes the same code path."""
    names = ["adapter training step, SD1.5 (init, reward)", "adapter training step, Flux"]
    for result in run_paths("cpu", torch.bfloat16, names=names):
        assert result.ok, result.line()
