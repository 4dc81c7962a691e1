"""Device choice (cuda > mps > cpu) and the mixed-precision context used by every training step."""
from __future__ import annotations

import contextlib
import os

import torch

#: set to ``1`` to run the CPU paths under bf16 autocast, as CUDA runs do (the tests use it so a
#: bf16/fp32 mismatch fails on a machine without a GPU)
CPU_BF16_ENV = "FER_NB_CPU_BF16"

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``; ``auto`` prefers CUDA, then Apple MPS, then CPU.

    Asking for a device that is not present is an error (never a silent switch to the CPU).
    """
    if not isinstance(name, str):
        raise TypeError(f"DEVICE must be a string like 'auto', 'cpu' or 'cuda:0', got {name!r}")
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown DEVICE {name!r}; use one of {DEVICE_CHOICES} (or 'cuda:N')")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={name!r} was asked for but no CUDA GPU is visible; use DEVICE='auto' or 'cpu'")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"DEVICE={name!r} was asked for but MPS is not available; use DEVICE='auto' or 'cpu'")
    return torch.device(name)


def cpu_bf16() -> bool:
    """Whether CPU runs use bf16 autocast too (``FER_NB_CPU_BF16=1``; off by default)."""
    return os.environ.get(CPU_BF16_ENV, "") not in ("", "0")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (safe for the book's convnets and losses); a no-op elsewhere.

    Losses that need full precision (distances, logs, Gram matrices) cast their inputs with
    ``.float()`` themselves, so autocast only speeds up the convolutions and matmuls. With
    ``FER_NB_CPU_BF16=1`` the CPU runs under bf16 autocast as well, so the tests catch a bf16/fp32
    mismatch (a float head fed bf16 features) without a GPU.
    """
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    """Human-readable device name for provenance (GPU model on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
