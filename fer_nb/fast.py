"""The fast path of a training step, in one place (used by the notebooks and the benchmarks).

* ``prepare(model, device)``: move to the device, ``channels_last`` memory format on CUDA (faster
  convolutions with bf16 tensor cores), optional ``torch.compile`` (off on CPU, where compile time
  dominates the book's short runs).
* ``optimizer(name, params, lr, device, **kw)``: Adam/AdamW/SGD with ``fused=True`` on CUDA (one
  kernel for all parameters instead of one per tensor) and ``foreach`` elsewhere.
* ``to_device_batch``: images as uint8 over the bus, float conversion on the device.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def prepare(model: nn.Module, device: torch.device, *, channels_last: bool | None = None,
            compile: bool = False, compile_mode: str | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in the fast layout; optionally compile it (CUDA only)."""
    model = model.to(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        if device.type != "cuda":
            raise ValueError("torch.compile is only switched on for CUDA runs in this book (compile=False on CPU)")
        model = torch.compile(model, mode=compile_mode)
    return model


def optimizer(name: str, params: Iterable, lr: float, device: torch.device, **kwargs) -> torch.optim.Optimizer:
    """``adam`` | ``adamw`` | ``sgd`` with fused CUDA kernels where available."""
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; use one of {sorted(classes)}")
    if device.type == "cuda":
        kwargs.setdefault("fused", True)
    else:
        kwargs.setdefault("foreach", True)
    return classes[name](params, lr=lr, **kwargs)


def images_to_device(images_uint8: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [0, 1] on ``device`` (copy 4x smaller than float)."""
    x = images_uint8.to(device, non_blocking=True).float().div_(255.0)
    if channels_last if channels_last is not None else device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x
