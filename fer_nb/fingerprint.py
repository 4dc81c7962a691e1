"""A fingerprint of the code that produces a run, so stale checkpoints and results are never trusted.

``code_fingerprint(notebook)`` is a SHA-256 over

* the ``fer_nb`` modules the chapter can run: every module its code cells import, directly or
  through other ``fer_nb`` modules (found statically with :mod:`ast`: imports anywhere in a file,
  function-level ones included, plus each imported module's parent ``__init__.py``), by relative
  path and content, and the chapter's preset ``presets/<notebook>.yaml``;
* the code cells of the chapter ``notebooks/NN_<notebook>.md``, in order, **except** the cell
  tagged ``parameters`` (papermill replaces those values, and they are hashed separately through
  the configuration). Markdown prose does not enter the fingerprint;
* any ``extra_sources`` (a benchmark script that trains through the chapter's configuration): their
  bytes and their own ``fer_nb`` imports.

So a change to a module a chapter cannot reach (a loss it never imports) leaves that chapter's
recorded runs valid, and a change to anything it can reach makes them stale. ``fer_nb`` has no
dynamic imports (``importlib``/``__import__`` of its own modules); :func:`module_closure` would not
see them, and ``tests/test_reliability.py`` checks that none exist. A chapter whose code cells do
not parse as Python (a shell escape) falls back to the whole package.

:meth:`fer_nb.config.Config.run_hash` includes the fingerprint, so a checkpoint written by other
code has another file name and hash and is retrained, never reused; checkpoints store it (key
``code``) and ``metrics.json`` carries it in ``provenance.code``. :func:`is_stale` and
:func:`staleness` compare a recorded result with the code of the page that shows it.

Limits: the fingerprint covers the files on disk when :func:`fer_nb.config.resolve` runs. It does
not cover installed third-party packages (their versions are in the provenance), code typed into a
running kernel without saving the notebook, or a notebook that is not under ``notebooks/``
(then every package file is hashed and ``notebook`` is ``None``).
"""
from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
NOTEBOOKS = ROOT / "notebooks"
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
_FENCE = re.compile(r"^(`{3,})\{code-cell\}[^\n]*$")

#: run hash -> code fingerprint, filled by Config.run_hash so fit() can store it in checkpoints
_RUN_HASHES: dict[str, str] = {}


def package_files() -> list[Path]:
    """The package's source files that enter the fingerprint, sorted."""
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(PACKAGE).parts))
             and (p.suffix == ".py" or (p.suffix in (".yaml", ".yml") and "presets" in p.relative_to(PACKAGE).parts))]
    return sorted(files, key=lambda p: p.relative_to(PACKAGE).as_posix())


def package_fingerprint(files: Iterable[Path] | None = None) -> str:
    """SHA-256 (hex) over the relative path and bytes of ``files`` (default: :func:`package_files`)."""
    h = hashlib.sha256()
    chosen = package_files() if files is None else sorted(set(files), key=lambda p: p.relative_to(PACKAGE).as_posix())
    for p in chosen:
        h.update(p.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(p.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def module_file(name: str) -> Path | None:
    """The source file of the ``fer_nb`` module or package ``name`` (``None`` when it is not one)."""
    parts = name.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [PACKAGE.name, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str | None = None, is_package: bool = False) -> set[str]:
    """Names of the modules ``source`` imports anywhere (resolving relative imports inside ``module``,
    a package's ``__init__`` when ``is_package``).

    ``from pkg import name`` yields ``pkg`` and ``pkg.name`` (the latter counts only when it is a
    module). Raises :class:`SyntaxError` when ``source`` is not Python.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and module:
                parts = module.split(".")
                anchor = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def module_closure(sources: Iterable[str]) -> set[Path]:
    """The ``fer_nb`` files that running ``sources`` (Python texts) can execute: their imports, the
    imports of those, and the ``__init__.py`` of every package on the way."""
    seen: set[Path] = set()
    todo: list[tuple[str, str | None, bool]] = [(src, None, False) for src in sources]
    while todo:
        src, module, is_package = todo.pop()
        for name in imported_modules(src, module, is_package):
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                path = module_file(".".join(parts[:k]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append((path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"))
    return seen


def chapter_files(notebook: str | None, extra_sources: Iterable[str | Path] = ()) -> list[Path]:
    """The package files that enter ``notebook``'s fingerprint (see the module docstring)."""
    path = notebook_source(notebook) if notebook else None
    if path is None:
        return package_files()
    texts = [src for tags, src in code_cells(path.read_text(encoding="utf-8"))]
    texts += [Path(p).read_text(encoding="utf-8") for p in extra_sources]
    try:
        files = module_closure(texts)
    except SyntaxError:
        return package_files()
    preset = PACKAGE / "presets" / f"{notebook}.yaml"
    if preset.is_file():
        files.add(preset)
    return sorted(files, key=lambda p: p.relative_to(PACKAGE).as_posix())


def notebook_source(notebook: str, folder: Path | None = None) -> Path | None:
    """``notebooks/NN_<notebook>.md`` (or ``<notebook>.md``), or ``None`` when there is none."""
    folder = NOTEBOOKS if folder is None else Path(folder)
    hits = sorted(p for p in folder.glob("*.md")
                  if p.stem == notebook or (p.stem[:2].isdigit() and p.stem.split("_", 1)[-1] == notebook))
    if len(hits) > 1:
        raise ValueError(f"several notebooks match {notebook!r}: {[h.name for h in hits]}; rename one")
    return hits[0] if hits else None


def code_cells(text: str) -> list[tuple[list[str], str]]:
    """The ``{code-cell}`` blocks of a MyST notebook as ``(tags, source)``; options lines removed."""
    cells: list[tuple[list[str], str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        tags: list[str] = []
        if body and body[0].strip() == "---":  # YAML options block
            end = next((j for j in range(1, len(body)) if body[j].strip() == "---"), 0)
            opts, body = body[1:end], body[end + 1:]
        else:
            n = 0
            while n < len(body) and body[n].startswith(":"):
                n += 1
            opts, body = body[:n], body[n:]
        for opt in opts:
            key, _, value = opt.lstrip(":").partition(":")
            if key.strip() == "tags":
                tags = [t.strip().strip("'\"") for t in value.strip().strip("[]").split(",") if t.strip()]
        cells.append((tags, "\n".join(ln.rstrip() for ln in body).strip("\n")))
    return cells


def notebook_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) over the code cells of a MyST notebook, the ``parameters`` cell left out."""
    h = hashlib.sha256()
    for tags, src in code_cells(Path(path).read_text(encoding="utf-8")):
        if "parameters" in tags:
            continue
        h.update(src.encode() + b"\0\0")
    return h.hexdigest()


def parameter_names(notebook: str) -> list[str]:
    """Names assigned in the chapter's ``parameters`` cell (``[]`` when the chapter is not found)."""
    path = notebook_source(notebook)
    if path is None:
        return []
    names: list[str] = []
    for tags, src in code_cells(path.read_text(encoding="utf-8")):
        if "parameters" in tags:
            names += re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=\n]*)?=", src, flags=re.M)
    return names


def code_fingerprint(notebook: str | None = None, extra_sources: Iterable[str | Path] = ()) -> dict[str, Any]:
    """``{"code": <16 hex>, "package": <16 hex>, "notebook": <16 hex> | None, "notebook_file": name | None}``.

    ``package`` hashes :func:`chapter_files` (the modules the chapter can reach, or every package
    file without a chapter), ``notebook`` the chapter's code cells and the bytes of
    ``extra_sources``; ``code`` combines the two and is what :meth:`Config.run_hash` uses.
    """
    extra = [Path(p) for p in extra_sources]
    package = package_fingerprint(chapter_files(notebook, extra))
    path = notebook_source(notebook) if notebook else None
    nb = notebook_fingerprint(path) if path is not None else None
    if extra:
        h = hashlib.sha256((nb or "").encode())
        for p in extra:
            h.update(b"\0" + p.name.encode() + b"\0" + p.read_bytes().replace(b"\r\n", b"\n"))
        nb = h.hexdigest()
    code = hashlib.sha256(f"{package}\0{nb}".encode()).hexdigest()
    return {"code": code[:16], "package": package[:16], "notebook": nb[:16] if nb else None,
            "notebook_file": path.name if path is not None else None}


def register_run_hash(run_hash: str, code: str) -> None:
    """Remember which code fingerprint a run hash was made with (see :func:`code_of_run_hash`)."""
    _RUN_HASHES[run_hash] = code


def code_of_run_hash(run_hash: str) -> str | None:
    """The code fingerprint behind a hash from :meth:`Config.run_hash` in this process, else ``None``."""
    return _RUN_HASHES.get(run_hash)


def _code_of(obj: Any) -> dict | None:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        if "provenance" in obj:
            obj = obj["provenance"]
        code = obj.get("code") if isinstance(obj, Mapping) else None
        if isinstance(code, Mapping) and code.get("code"):
            return dict(code)
        return None
    code = getattr(obj, "code", None)  # a Config
    return dict(code) if isinstance(code, Mapping) else None


def staleness(recorded: Mapping | None, cfg: Any, extra_sources: Iterable[str | Path] = ()) -> str | None:
    """Why ``recorded`` (a loaded ``metrics.json``) was not made by ``cfg``'s code, or ``None`` if it was.

    ``cfg`` is a :class:`~fer_nb.config.Config` or a notebook key such as ``"nm_tuple"`` (for pages
    without a configuration, e.g. the scoreboard: the chapter's current code is fingerprinted, with
    ``extra_sources`` such as a benchmark script, as :func:`code_fingerprint` takes them).

    A recorded result without a fingerprint (written before fingerprints existed) is stale: it
    was made by earlier code that can no longer be identified.
    """
    if recorded is None:
        return None
    current = code_fingerprint(cfg, extra_sources) if isinstance(cfg, str) else _code_of(cfg)
    if current is None:
        raise TypeError(f"cfg must be a Config from fer_nb.config.resolve (with .code) or a notebook key, "
                        f"got {type(cfg).__name__}")
    theirs = _code_of(recorded)
    prov = recorded.get("provenance", {}) if isinstance(recorded, Mapping) else {}
    when = f"commit {str(prov.get('commit', 'unknown'))[:12]}, {prov.get('date', 'date unknown')}"
    if theirs is None:
        return (f"recorded by earlier code without a code fingerprint ({when}); its numbers may not "
                f"match this page's code: re-run and record it to refresh")
    if theirs["code"] == current["code"]:
        return None
    parts = [name for name in ("package", "notebook") if theirs.get(name) != current.get(name)]
    return (f"recorded with different code ({' and '.join(parts) or 'code'} changed since: fingerprint "
            f"{theirs['code']} vs this page's {current['code']}; {when}): re-run and record it to refresh")


def is_stale(recorded: Mapping | None, cfg: Any) -> bool:
    """True when ``recorded`` was made by code other than ``cfg``'s (or carries no fingerprint)."""
    return staleness(recorded, cfg) is not None
