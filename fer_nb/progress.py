"""Progress bars: notebook widgets in JupyterLab, plain text under papermill/CI.

Set ``FER_NB_PLAIN_PROGRESS=1`` (the Makefile and tests do) for text bars that update at most
every few seconds, so executed notebooks stay small.
"""
from __future__ import annotations

import os


def bar(iterable=None, **kwargs):
    if os.environ.get("FER_NB_PLAIN_PROGRESS"):
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 5.0)
        kwargs.setdefault("ascii", True)
    else:
        from tqdm.auto import tqdm
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
