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
    """``<root>/<name>`` with ``root`` from the argument or ``$FER_NB_DATA``.

    Like ``python -m fer_nb.data check``, a ``root`` that *is* the dataset folder (named ``<name>``,
    without a ``<name>/`` inside) is taken as that folder.
    """
    s = spec(name)
    base = root if root not in (None, "") else os.environ.get(DATA_ENV) or None
    if base is None:
        raise s.error(f"no data root: pass root='/path/to/datasets' (holding {name}/) or set {DATA_ENV}")
    if not isinstance(base, (str, os.PathLike)):
        raise s.error(f"the data root must be a path string, got {base!r}")
    base = Path(base).expanduser()
    folder = base / name
    if folder.is_dir():
        return folder
    if base.is_dir() and base.name == name:
        return base  # DATA_ROOT points at the dataset folder itself (what `check` accepts too)
    if not base.is_dir():
        raise s.error(f"the data root {base} does not exist or is not a folder; pass DATA_ROOT (or "
                      f"{DATA_ENV}) = the folder holding {name}/", base)
    raise s.error(f"dataset folder {folder} does not exist: the data root {base} must hold one folder per "
                  f"dataset named as in the registry ({name}/ here); rename the {name} folder to {name}/ "
                  f"or pass its parent as DATA_ROOT", folder)


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
    build = partial(_decode_errors, s, folder, partial(fn, folder, **args))
    if cache is False or cache is None:
        return build()
    s.root(folder)  # a missing folder is an error, not an empty cache key
    return cache_mod.cached(name, folder, args, build, None if cache is True else cache)


def _decode_errors(s: DatasetSpec, folder: Path, build: Callable[[], FaceArrays]) -> FaceArrays:
    """Run a loader; a label file that is not UTF-8 text becomes the dataset's error."""
    try:
        return build()
    except UnicodeDecodeError as exc:
        raise s.error(f"a label file under {folder} is not UTF-8 text ({exc.reason} at byte {exc.start}: "
                      f"{exc.object[max(0, exc.start - 10):exc.start + 10]!r}); save it as UTF-8", folder) from None
