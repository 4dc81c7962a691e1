"""Scale presets and the one frozen run configuration of a notebook.

Each notebook has a preset file ``fer_nb/presets/<notebook>.yaml``::

    datasets: [synthfacs, rafdb]        # DATASET values this notebook accepts
    smoke: {epochs: 1, batch_size: 32, image_size: 48, ...}
    small: {...}
    gpu: {...}      # one H100-class GPU, each notebook's full set of tables in <= 10 minutes
    paper: {...}

:func:`resolve` validates the parameters a reader (or papermill) passes and returns a
:class:`Config`. All derived values come from here, never from the notebook's parameters cell.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
import yaml

from fer_nb import fingerprint as _fingerprint
from fer_nb.device import pick_device

#: ``smoke`` (CI, one CPU minute), ``small`` (CPU, orderings over seeds), ``gpu`` (the papers' networks,
#: inputs and batches on one GPU, schedules cut to <= 10 minutes per notebook), ``paper`` (as published).
SCALES = ("smoke", "small", "gpu", "paper")
#: scales every preset file must define
REQUIRED_SCALES = SCALES
PRESET_DIR = Path(__file__).parent / "presets"
DATA_ENV = "FER_NB_DATA"


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_presets(notebook: str) -> dict:
    path = PRESET_DIR / f"{notebook}.yaml"
    if not path.exists():
        raise ValueError(
            f"no presets for notebook {notebook!r}; known notebooks: {available_notebooks()}"
        )
    with open(path) as fh:
        presets = yaml.safe_load(fh)
    missing = [s for s in REQUIRED_SCALES if s not in presets]
    if missing:
        raise ValueError(f"{path} lacks the scale(s) {missing}")
    return presets


@dataclass(frozen=True)
class Config:
    """Everything a notebook run depends on. ``hp`` holds the scale's hyperparameters."""

    notebook: str
    scale: str
    dataset: str
    data_root: Path | None
    device: torch.device
    seeds: tuple[int, ...]
    out_dir: Path
    hp: Mapping[str, Any] = field(default_factory=dict)
    #: fingerprint of the code that runs (``fer_nb`` sources + the chapter's code cells), see
    #: :mod:`fer_nb.fingerprint`; part of :meth:`run_hash` and of every ``metrics.json``
    code: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # cfg.epochs == cfg.hp["epochs"]
        hp = object.__getattribute__(self, "hp")
        if name in hp:
            return hp[name]
        raise AttributeError(f"Config has no field or hyperparameter {name!r}; hyperparameters: {sorted(hp)}")

    def as_dict(self) -> dict:
        return {
            "notebook": self.notebook, "scale": self.scale, "dataset": self.dataset,
            "data_root": str(self.data_root) if self.data_root else None,
            "device": str(self.device), "seeds": list(self.seeds), "out_dir": str(self.out_dir),
            "hp": dict(self.hp),
        }

    def run_hash(self, **extra: Any) -> str:
        """Hash of what determines a training run's result (not the device or output folder).

        ``extra`` names the run inside the notebook (variant, seed, ...). The code fingerprint
        (:attr:`code`) is part of it, so a checkpoint written by other code is never reused. Stored
        in every checkpoint; :func:`fer_nb.train.fit_or_load` refuses a checkpoint whose hash differs.
        """
        payload = {
            "notebook": self.notebook, "scale": self.scale, "dataset": self.dataset,
            "data_root": str(self.data_root) if self.data_root else None,
            "hp": dict(self.hp), "extra": extra, "code": self.code.get("code"),
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        if self.code.get("code"):
            _fingerprint.register_run_hash(digest, self.code["code"])
        return digest


def _check_type(name: str, value: Any, reference: Any) -> Any:
    """Accept ``value`` for a hyperparameter whose preset value is ``reference``."""
    if reference is None:
        return value
    if isinstance(reference, bool):
        if not isinstance(value, bool):
            raise TypeError(f"hyperparameter {name!r} must be True/False, got {value!r}")
        return value
    if isinstance(reference, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"hyperparameter {name!r} must be an int, got {value!r} ({type(value).__name__})")
        return value
    if isinstance(reference, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"hyperparameter {name!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(reference, str):
        if not isinstance(value, str):
            raise TypeError(f"hyperparameter {name!r} must be a string, got {value!r}")
        return value
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"hyperparameter {name!r} must be a list, got {value!r}")
        return list(value)
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


#: the parameters every chapter's ``parameters`` cell defines, and what papermill's ``-p`` gives
STANDARD_PARAMETERS = ("SCALE", "DATASET", "DATA_ROOT", "DEVICE", "SEEDS", "OUT_DIR")


def check_parameters(namespace: Mapping[str, Any], notebook: str | None = None) -> None:
    """Refuse a papermill parameter that only differs in case from a real one (``-p scale small``).

    papermill injects an unknown ``-p`` name as a new variable and only warns, so ``scale = "small"``
    would leave ``SCALE = "smoke"`` and the run would silently happen at the wrong scale.
    ``namespace`` is the notebook's globals; ``notebook`` adds the names of its parameters cell.
    """
    names = set(STANDARD_PARAMETERS)
    if notebook:
        names |= set(_fingerprint.parameter_names(notebook))
    by_lower = {n.lower(): n for n in names}
    wrong = sorted((k, by_lower[k.lower()]) for k in namespace
                   if isinstance(k, str) and k.lower() in by_lower and k != by_lower[k.lower()]
                   and not k.startswith("_"))
    if wrong:
        fixes = ", ".join(f"{k!r} -> {canon}" for k, canon in wrong)
        raise NameError(
            f"parameter name(s) in the wrong case: {fixes}. papermill parameters are case-sensitive and an "
            f"unknown name is only a warning, so the run would ignore it; pass e.g. -p {wrong[0][1]} ... "
            f"(the names of the parameters cell)"
        )


def _caller_notebook_namespace() -> Mapping[str, Any] | None:
    """The globals of the code calling :func:`resolve` when that code is a notebook (``__main__``
    holding the parameters cell's ``SCALE``), else ``None`` (a script or test passes its own values)."""
    frame = sys._getframe(2)
    ns = frame.f_globals
    if ns.get("__name__") == "__main__" and "SCALE" in ns and "SEEDS" in ns:
        return ns
    return None


def _papermill_hint(name: str, value: Any, expected: str) -> str:
    hint = f"{name} must be {expected}, got {value!r} ({type(value).__name__})"
    if isinstance(value, str):
        hint += (f"; papermill's -p passes a number as a number but a list as text: use -p {name} 2, or a YAML "
                 f"value with -y \"{name}: [0, 1]\"")
    return hint


def resolve(
    notebook: str,
    scale: str = "smoke",
    dataset: str = "synthfacs",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    seeds: int | list[int] = 1,
    out_dir: str | os.PathLike | None = None,
    *,
    extra_sources: tuple[str | os.PathLike, ...] = (),
    **overrides: Any,
) -> Config:
    """Validate a notebook's parameters and return its frozen :class:`Config`.

    ``seeds``: an int ``n`` means seeds ``0..n-1``; a list is taken as is. ``data_root`` falls
    back to the ``FER_NB_DATA`` environment variable for real datasets. ``overrides`` replace
    hyperparameters of the scale preset (unknown names and wrong types are errors). Called from a
    notebook, the notebook's globals are checked with :func:`check_parameters` as well. Every
    parameter is validated before ``out_dir`` is created. ``extra_sources``: files (a benchmark
    script) that train through this configuration; they enter the code fingerprint.
    """
    if not isinstance(notebook, str):
        raise TypeError(f"notebook must be a preset name such as 'toolkit_tour', got {notebook!r}")
    ns = _caller_notebook_namespace()
    if ns is not None:
        check_parameters(ns, notebook)
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"unknown SCALE {scale!r}; use one of {SCALES}")
    presets = load_presets(notebook)
    datasets = presets.get("datasets", ["synthfacs"])
    if not isinstance(dataset, str) or dataset not in datasets:
        raise ValueError(f"DATASET {dataset!r} is not used by notebook {notebook!r}; use one of {datasets}")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list, tuple)):
        raise TypeError(_papermill_hint("SEEDS", seeds, "an int (how many) or a list of ints"))
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"SEEDS must be >= 1, got {seeds}")
        seed_list = tuple(range(seeds))
    else:
        if not seeds:
            raise ValueError("SEEDS is an empty list; give at least one seed, e.g. SEEDS=[0] or SEEDS=1")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TypeError(f"SEEDS as a list must hold ints, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"SEEDS lists a seed twice: {list(seeds)}; give distinct seeds")
        seed_list = tuple(seeds)
    root = data_root if data_root not in (None, "") else os.environ.get(DATA_ENV) or None
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"DATA_ROOT must be a path string or None, got {root!r}")
    if dataset != "synthfacs" and root is None:
        raise ValueError(
            f"DATASET={dataset!r} needs the data on disk: pass DATA_ROOT='/path/to/datasets' or set "
            f"the {DATA_ENV} environment variable (see the Datasets chapter for the layout)"
        )
    hp = dict(presets[scale])
    for name, value in overrides.items():
        if name not in hp:
            raise KeyError(f"unknown hyperparameter {name!r} for {notebook}/{scale}; known: {sorted(hp)}")
        hp[name] = _check_type(name, value, hp[name])
    if out_dir is None:
        out_dir = Path("runs") / notebook
    if not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
        raise TypeError(f"OUT_DIR must be a non-empty path string, got {out_dir!r}")
    device_obj = pick_device(device)  # validated before anything is created on disk
    code = _fingerprint.code_fingerprint(notebook, extra_sources)
    out = Path(out_dir).expanduser()
    _make_out_dir(out)
    return Config(
        notebook=notebook, scale=scale, dataset=dataset,
        data_root=Path(root).expanduser() if root is not None else None,
        device=device_obj, seeds=seed_list, out_dir=out,
        hp=MappingProxyType({k: _freeze(v) for k, v in hp.items()}),
        code=MappingProxyType(code),
    )


def _make_out_dir(out: Path) -> None:
    """Create ``OUT_DIR`` (and parents); an error names the folder and the fix."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file, not a folder; pass a folder path (OUT_DIR='runs/...')")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"OUT_DIR {out} cannot be created ({exc.strerror or exc}); pass a folder you can write, "
            f"e.g. OUT_DIR='runs/<notebook>'"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"OUT_DIR {out} is not writable; pass a folder you can write, e.g. OUT_DIR='runs/...'")
