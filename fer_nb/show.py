"""Show library code inside a notebook, so readers see what a cell calls."""
from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path


def _strip_docstring(source: str) -> str:
    """``source`` of one function or class without its docstring (the lines it spans are dropped)."""
    tree = ast.parse(textwrap.dedent(source))
    node = tree.body[0] if tree.body else None
    body = getattr(node, "body", None)
    if not body or not isinstance(body[0], ast.Expr) or not isinstance(getattr(body[0], "value", None), ast.Constant) \
            or not isinstance(body[0].value.value, str):
        return source
    lines = source.splitlines()
    return "\n".join(lines[: body[0].lineno - 1] + lines[body[0].end_lineno:])


def show_source(obj, start: str | None = None, docstring: bool = True) -> str:
    """Display the source of ``obj`` (function, class, method) with syntax highlighting; return it.

    ``start``: show only from the first line containing this text (e.g. ``"def forward"``).
    ``docstring=False``: leave out ``obj``'s own docstring (the chapter's prose already says it).
    A loss's equations are its ``compute`` method: ``show_source(SomeLoss.compute)``.
    """
    obj = inspect.unwrap(obj)  # decorated functions (e.g. @torch.no_grad) show their own source
    source = inspect.getsource(obj)
    if not docstring:
        source = _strip_docstring(source)
    if start is not None:
        lines = source.splitlines()
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"{start!r} not found in the source of {obj!r}")
        source = "\n".join(lines[hits[0]:])
    source = source.rstrip("\n")
    path = Path(inspect.getsourcefile(obj)).resolve()
    root = Path(__file__).resolve().parent.parent
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"`{where}`\n```python\n{source}\n```"))
    except ImportError:  # plain Python
        print(f"# {where}\n{source}")
    return source
