"""The `device`/`dtype` properties diffusers' `DiffusionPipeline.to()` expects of every registered module."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake


class DeviceDtypeMixin:
    """`device` and `dtype` of a torch module, read from its first parameter (or buffer); a module whose
    first tensor is not the one that tells overrides `reference_tensor`."""

    def reference_tensor(self) -> torch.Tensor | None:
        """The tensor whose device and dtype are the module's (None: CPU, float32)."""
        for tensor in self.parameters():  # type: ignore[attr-defined]
            return tensor
        for tensor in self.buffers():  # type: ignore[attr-defined]
            return tensor
        return None

    @property
    def device(self) -> torch.device:
        tensor = self.reference_tensor()
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        tensor = self.reference_tensor()
        return tensor.dtype if tensor is not None else torch.float32


def has_values(tensor: torch.Tensor) -> bool:
    """False for tensors that carry shapes and devices but no data (fake or meta tensors).

    The device-mix checks run the real code on fake CUDA tensors; value checks (finite, in range) cannot
    read data there, so they are skipped for such tensors and run for every real one.
    """
    return not (tensor.is_meta or is_fake(tensor))


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """ValueError naming `name` when `tensor` holds NaN or Inf (one host sync; call at boundaries only)."""
    if has_values(tensor) and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contain NaN or infinite values; check the model weights and inputs")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) is the first CUDA device when there is one, else the CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from err


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """ "auto" is bfloat16 on CUDA (every ICG model runs in it; float16 overflows in Flux and Qwen) and
    float32 on the CPU; otherwise one of float32, float16, bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]
