"""Atomic file writes (temp file + rename) and safe checkpoint loading."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _plain_scalars(obj: Any) -> Any:
    """NumPy scalars (e.g. an lr set with ``np.cos``) become Python numbers, recursively: a
    ``weights_only`` load refuses NumPy globals, so they would make a checkpoint unloadable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = type(obj)((k, _plain_scalars(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):          # module state_dicts carry their version metadata
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [_plain_scalars(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_plain_scalars(v) for v in obj)
    return obj


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically; NumPy scalars are stored as Python numbers so that
    :func:`load_torch` (``weights_only=True``) can read every checkpoint back."""
    obj = _plain_scalars(obj)
    return _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def check_finite(obj: Any, where: str = "") -> None:
    """Raise ``ValueError`` if any float inside ``obj`` is NaN or infinite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number {obj} at {where or 'top level'}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def save_json(obj: Any, path: str | os.PathLike, allow_nan: bool = False) -> Path:
    """Write JSON atomically; NaN/inf are refused unless ``allow_nan``."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=allow_nan)
    return _atomic_write(Path(path), lambda fh: fh.write(text.encode() + b"\n"))


def load_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)
