"""One entry point for every real dataset: ``load(name, root, split=..., image_size=..., channels=...)``.

``root`` is the folder holding one sub-folder per dataset (``<root>/<name>/...``); it defaults to
the ``FER_NB_DATA`` environment variable. Each dataset's layout is in its module and in the book's
"Real datasets" page; ``python -m fer_nb.data check NAME PATH`` validates a folder.

Results are decoded once and cached as ``uint8`` arrays (:mod:`fer_nb.data.cache`); pass
``cache=False`` to skip the cache or ``cache="/some/dir"`` to choose its folder.
"""
from __future__ import annotations

import inspect
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

from fer_nb.data import (affectnet, afew_va, affwild, cache as cache_mod, ckplus, emotionet,
                         fer2013, jaffe, mmi, rafdb, sfew, ssl_benchmarks)
from fer_nb.data.errors import DatasetError, DatasetSpec
from fer_nb.data.schema import FaceArrays

DATA_ENV = "FER_NB_DATA"

#: name -> (loader(root, split, image_size, channels, **kw), spec)
DATASETS: dict[str, tuple[Callable[..., FaceArrays], DatasetSpec]] = {
    "fer2013": (fer2013.load, fer2013.SPEC),
    "ferplus": (fer2013.load_ferplus, fer2013.FERPLUS_SPEC),
    "rafdb": (rafdb.load, rafdb.SPEC),
    "ckplus": (ckplus.load, ckplus.SPEC),
    "mmi": (mmi.load, mmi.SPEC),
    "sfew": (sfew.load, sfew.SPEC),
    "jaffe": (jaffe.load, jaffe.SPEC),
    "affectnet": (affectnet.load, affectnet.SPEC),
    "afew_va": (afew_va.load, afew_va.SPEC),
    "affwild": (affwild.load, affwild.SPEC),
    "emotionet": (emotionet.load, emotionet.SPEC),
    **{n: (partial(ssl_benchmarks.load, n), s) for n, s in ssl_benchmarks.SPECS.items()},
}
NAMES: tuple[str, ...] = tuple(DATASETS)


def spec(name: str) -> DatasetSpec:
    """The layout/source description of dataset ``name``."""
    if name not in DATASETS:
        raise DatasetError(str(name), f"unknown dataset name {name!r}; known datasets: {', '.join(NAMES)}")
    return DATASETS[name][1]


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<name>`` with ``root`` from the argument or ``$FER_NB_DATA``."""
    s = spec(name)
    base = root if root not in (None, "") else os.environ.get(DATA_ENV) or None
    if base is None:
        raise s.error(f"no data root: pass root='/path/to/datasets' (holding {name}/) or set {DATA_ENV}")
    return Path(base).expanduser() / name


def load(name: str, root: str | os.PathLike | None = None, split: str | None = None,
         image_size: int | None = None, channels: int | None = None,
         cache: bool | str | os.PathLike = True, **kw: Any) -> FaceArrays:
    """Load real dataset ``name`` from ``<root>/<name>/`` as a :class:`FaceArrays`.

    ``split=None`` is the dataset's default split; ``image_size``/``channels`` ``None`` are its
    native defaults. Extra keywords go to the dataset's loader (e.g. ``vote="plurality"`` for
    ferplus, ``frames=3, neutral_first=True`` for ckplus, ``frame_step=10`` for affwild).
    """
    fn, s = DATASETS[name] if name in DATASETS else (None, spec(name))
    folder = dataset_dir(name, root)
    s.split(split)  # validate before touching the disk
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        extra = [p for p in params if p not in ("root", "split", "image_size", "channels")]
        raise s.error(f"unknown option(s) {unknown} for {name}; it accepts {extra}")
    args = {"split": split, "image_size": image_size, "channels": channels, **kw}
    build = partial(fn, folder, **args)
    if cache is False or cache is None:
        return build()
    s.root(folder)  # a missing folder is an error, not an empty cache key
    return cache_mod.cached(name, folder, args, build, None if cache is True else cache)
