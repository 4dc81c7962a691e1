"""A fingerprint of the code that produces a run, so stale checkpoints and results are never trusted.

``code_fingerprint(notebook)`` is a SHA-256 over

* every source file of the ``fer_nb`` package (``*.py`` and the ``presets/*.yaml``), by relative
  path and content: the simplest honest choice, since a notebook's result may depend on any module
  it imports directly or indirectly;
* the code cells of the chapter ``notebooks/NN_<notebook>.md``, in order, **except** the cell
  tagged ``parameters`` (papermill replaces those values, and they are hashed separately through
  the configuration). Markdown prose does not enter the fingerprint.

:meth:`fer_nb.config.Config.run_hash` includes the fingerprint, so a checkpoint written by other
code has another file name and hash and is retrained, never reused; checkpoints store it (key
``code``) and ``metrics.json`` carries it in ``provenance.code``. :func:`is_stale` and
:func:`staleness` compare a recorded result with the code of the page that shows it.

Limits: the fingerprint covers the files on disk when :func:`fer_nb.config.resolve` runs. It does
not cover installed third-party packages (their versions are in the provenance), code typed into a
running kernel without saving the notebook, or a notebook that is not under ``notebooks/``
(then only the package part is hashed and ``notebook`` is ``None``).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

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


def package_fingerprint() -> str:
    """SHA-256 (hex) over the relative path and bytes of every file of :func:`package_files`."""
    h = hashlib.sha256()
    for p in package_files():
        h.update(p.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(p.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


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


def code_fingerprint(notebook: str | None = None) -> dict[str, Any]:
    """``{"code": <16 hex>, "package": <16 hex>, "notebook": <16 hex> | None, "notebook_file": name | None}``.

    ``code`` combines the package and the notebook parts; it is what :meth:`Config.run_hash` uses.
    """
    package = package_fingerprint()
    path = notebook_source(notebook) if notebook else None
    nb = notebook_fingerprint(path) if path is not None else None
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


def staleness(recorded: Mapping | None, cfg: Any) -> str | None:
    """Why ``recorded`` (a loaded ``metrics.json``) was not made by ``cfg``'s code, or ``None`` if it was.

    ``cfg`` is a :class:`~fer_nb.config.Config` or a notebook key such as ``"nm_tuple"`` (for pages
    without a configuration, e.g. the scoreboard: the chapter's current code is fingerprinted).

    A recorded result without a fingerprint (written before fingerprints existed) is stale: it
    was made by earlier code that can no longer be identified.
    """
    if recorded is None:
        return None
    current = code_fingerprint(cfg) if isinstance(cfg, str) else _code_of(cfg)
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
