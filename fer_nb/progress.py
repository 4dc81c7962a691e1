"""Progress bars that suit where the code runs.

- In a terminal (scripts, benchmarks): text bars on stderr; with ``FER_NB_PLAIN_PROGRESS=1`` (the
  Makefile and tests set it) they redraw at most every 5 s, in ASCII, so logs stay small.
- In JupyterLab / Notebook: widget bars when ``ipywidgets`` is installed, text bars otherwise
  (no "IProgress not found" warning: widgets are an optional extra, not a promise).
- In a notebook executed non-interactively with ``FER_NB_PLAIN_PROGRESS=1`` (papermill under
  ``make book`` and ``make test``): no bar at all. Nobody watches those kernels, and every redraw
  would be stored in the executed notebook and drawn by Jupyter Book as a frozen bar in a grey box.
"""
from __future__ import annotations

import importlib.util
import os


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a terminal or plain script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def has_widgets() -> bool:
    """Whether ``ipywidgets`` is importable (tqdm's notebook bars need it)."""
    return importlib.util.find_spec("ipywidgets") is not None


def mode() -> str:
    """``"off"``, ``"widget"`` or ``"text"``: the kind of bar :func:`bar` draws here."""
    plain = bool(os.environ.get("FER_NB_PLAIN_PROGRESS"))
    if in_kernel():
        if plain:
            return "off"
        return "widget" if has_widgets() else "text"
    return "text"


def bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` of the kind :func:`mode` picks (``disable=True`` when ``"off"``)."""
    kind = mode()
    if kind == "widget":
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        if os.environ.get("FER_NB_PLAIN_PROGRESS"):
            kwargs.setdefault("mininterval", 5.0)
            kwargs.setdefault("ascii", True)
        if kind == "off":
            kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
