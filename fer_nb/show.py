"""Show library code inside a notebook, so readers see what a cell calls."""
from __future__ import annotations

import inspect
from pathlib import Path


def show_source(obj, start: str | None = None) -> None:
    """Display the source of ``obj`` (function, class, method) with syntax highlighting.

    ``start``: show only from the first line containing this text (e.g. ``"def forward"``).
    """
    obj = inspect.unwrap(obj)  # decorated functions (e.g. @torch.no_grad) show their own source
    source = inspect.getsource(obj)
    if start is not None:
        lines = source.splitlines()
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"{start!r} not found in the source of {obj!r}")
        source = "\n".join(lines[hits[0]:])
    path = Path(inspect.getsourcefile(obj)).resolve()
    root = Path(__file__).resolve().parent.parent
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"`{where}`\n```python\n{source}\n```"))
    except ImportError:  # plain Python
        print(f"# {where}\n{source}")
