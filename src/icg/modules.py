"""The `device`/`dtype` properties diffusers' `DiffusionPipeline.to()` expects of every registered module."""

from __future__ import annotations

import torch


class DeviceDtypeMixin:
    """`device` and `dtype` of a torch module, read from its first parameter (or buffer)."""

    def _first_tensor(self) -> torch.Tensor | None:
        for tensor in self.parameters():  # type: ignore[attr-defined]
            return tensor
        for tensor in self.buffers():  # type: ignore[attr-defined]
            return tensor
        return None

    @property
    def device(self) -> torch.device:
        tensor = self._first_tensor()
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        tensor = self._first_tensor()
        return tensor.dtype if tensor is not None else torch.float32
