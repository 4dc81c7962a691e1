"""Decode a real dataset once; later loads read a ``uint8`` ``.npz`` cache (no pickle).

The cache key hashes the dataset folder's absolute path, the loader name and arguments, and the
relative path, size and modification time (ns) of every file under the folder, so editing,
adding or removing any file (or asking for another size/split) decodes afresh. Cache files hold
only plain arrays (images, one array per label, and a JSON string for names/info) and are read
with ``numpy.load(allow_pickle=False)``, so a cache file cannot run code. Writes are atomic
(:func:`fer_nb.io._atomic_write`: normal permissions, stale temp files of killed writers removed).

The cache folder is ``cache_dir`` if given, else ``$FER_NB_CACHE``, else ``~/.cache/fer_nb``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fer_nb.data.schema import FaceArrays
from fer_nb.io import _atomic_write

CACHE_ENV = "FER_NB_CACHE"
FORMAT_VERSION = 1
_SKIP_DIRS = {".fer_nb_cache", "__pycache__", ".ipynb_checkpoints"}


def default_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fer_nb").expanduser()


def fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over (relative path, size, mtime_ns) of every file below ``folder``."""
    folder = Path(folder).resolve()
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            entries.append(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def cache_key(dataset: str, folder: str | os.PathLike, args: dict[str, Any]) -> str:
    payload = json.dumps({"v": FORMAT_VERSION, "dataset": dataset,
                          "folder": str(Path(folder).resolve()), "args": args,
                          "files": fingerprint(folder)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def save(path: str | os.PathLike, data: FaceArrays) -> Path:
    """Write ``data`` as an ``.npz`` of plain arrays, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"name": data.name, "class_names": list(data.class_names), "info": data.info,
                       "labels": list(data.labels)}, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    arrays = {"images": data.images.cpu().numpy(), "meta": np.array(meta)}
    for k, v in data.labels.items():
        arrays[f"label_{k}"] = v.cpu().numpy()
    return _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load(path: str | os.PathLike) -> FaceArrays:
    """Read a cache file written by :func:`save` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        images = torch.from_numpy(z["images"].copy())
        labels = {k: torch.from_numpy(z[f"label_{k}"].copy()) for k in meta["labels"]}
    return FaceArrays(images, labels, meta["name"], tuple(meta["class_names"]), meta["info"])


def cached(dataset: str, folder: str | os.PathLike, args: dict[str, Any],
           build: Callable[[], FaceArrays], cache_dir: str | os.PathLike | None = None) -> FaceArrays:
    """``build()`` once and cache it; return the cached copy when nothing changed.

    An unreadable cache file is ignored (rebuilt); an unwritable cache folder only warns.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_dir()
    key = cache_key(dataset, folder, args)
    path = directory / f"{dataset}-{key[:24]}.npz"
    if path.is_file():
        try:
            out = load(path)
            out.info["cache"] = str(path)
            return out
        except Exception as exc:  # corrupt/partial cache: decode again
            warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=2)
    data = build()
    try:
        save(path, data)
        data.info["cache"] = str(path)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=2)
    return data
