"""Show library code inside a notebook, so readers see what a cell calls."""
from __future__ import annotations

import inspect


def show_source(obj, start: str | None = None) -> None:
    """Display the source of ``obj`` (function, class, method) with syntax highlighting.

    ``start``: show only from the first line containing this text (e.g. ``"def forward"``).
    """
    source = inspect.getsource(obj)
    if start is not None:
        lines = source.splitlines()
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"{start!r} not found in the source of {obj!r}")
        source = "\n".join(lines[hits[0]:])
    where = f"{inspect.getsourcefile(obj).split('fer_nb/')[-1]}"
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"`fer_nb/{where}`\n```python\n{source}\n```"))
    except ImportError:  # plain Python
        print(f"# fer_nb/{where}\n{source}")
