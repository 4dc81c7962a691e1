"""Atomic file writes (temp file + rename), stale temp-file clean-up and safe checkpoint loading.

A write goes to ``.<name>.pid<PID>.<random>.tmp`` beside the target, is flushed and fsynced, and
is renamed over the target: a reader (or a process killed mid-write) sees the old file or the new
one, never half of one. The temp file is created with mode ``0o666`` minus the umask (as ``open``
would), or with the mode of the file it replaces. A process killed mid-write leaves its temp file
behind; the next write to the same target (or :func:`clean_stale_temp`) removes temp files whose
process is gone (those of older versions, without a pid, once they are an hour old).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: a temp file without a pid in its name (written by an older fer_nb) is stale after this many seconds
LEGACY_TEMP_AGE_S = 3600


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, not a checkpoint, or holding code objects."""


def _temp_pattern(name: str) -> re.Pattern:
    return re.compile(r"^\." + re.escape(name) + r"\.(?:pid(\d+)\.)?[A-Za-z0-9_]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temp(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that writers of ``path`` left behind when they were killed; return them.

    A temp file ``.<name>.pid<PID>.<random>.tmp`` is stale when process ``PID`` no longer runs; one
    without a pid (older versions) when it is older than :data:`LEGACY_TEMP_AGE_S` seconds.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            if m.group(1) is not None:
                stale = not _pid_alive(int(m.group(1)))
            else:
                stale = now - entry.stat().st_mtime > LEGACY_TEMP_AGE_S
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (restored at once)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(path)
    tmp = path.parent / f".{path.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file: keep its permissions
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
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
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code.

    A truncated or foreign file, or one holding pickled code, raises :class:`CheckpointError`
    naming the file and the fix (delete it; fer_nb never needs ``weights_only=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = f"it refers to {m.group(1)}" if m else ""
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain containers "
            f"({reason or 'refused by the weights-only loader'}), so it was not written by fer_nb and was "
            f"not loaded; delete it (or move it out of OUT_DIR) and re-run to retrain. Do not load it with "
            f"weights_only=False unless you trust whoever made it: that can run arbitrary code."
        ) from None
    except Exception as exc:  # zip/stream/EOF/key errors from inside torch: name the file and the fix
        size = path.stat().st_size if path.exists() else 0
        detail = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or not a torch checkpoint "
            f"({type(exc).__name__}: {detail}); delete it and re-run to retrain"
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON; store numbers, strings, lists or dicts "
                    f"(convert it first, e.g. float(x) or str(x))")


def check_finite(obj: Any, where: str = "") -> None:
    """Raise ``ValueError`` if any float inside ``obj`` is NaN or infinite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number {obj} at {where or 'top level'}; results must be finite numbers "
                         f"(report a method that did not converge as the string 'nc')")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def save_json(obj: Any, path: str | os.PathLike, allow_nan: bool = False) -> Path:
    """Write JSON atomically; NaN/inf are refused (naming where they are) unless ``allow_nan``."""
    if not allow_nan:
        check_finite(obj)
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=allow_nan)
    return _atomic_write(Path(path), lambda fh: fh.write(text.encode() + b"\n"))


def load_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)
