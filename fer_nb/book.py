"""Build the book: execute every notebook with papermill, then Jupyter Book 1 without re-executing.

``python -m fer_nb.book --scale smoke --device auto`` (what ``make book`` runs):

1. each MyST notebook in ``notebooks/`` (then the computed pages ``book/scoreboard.md`` and
   ``book/performance.md``) is
   converted with jupytext to ``book/_generated/<name>.ipynb`` and executed there by papermill
   (kernel ``python3``) with ``SCALE``/``DEVICE``/``OUT_DIR``; a failing notebook fails the build;
   the executed notebook is then cleaned for reading (:func:`clean_outputs`: no progress bars or
   empty stderr boxes, papermill's injected-parameters cell removed, wide figures full-width);
2. MathJax 3 is installed from npm into ``.cache/`` (once) and copied into ``book/_static`` so math
   renders offline;
3. ``jupyter-book build book`` renders HTML into ``book/_build/html`` (execution is off there).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fer_nb.config import SCALES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
GENERATED = BOOK / "_generated"
CACHE = ROOT / ".cache"
MATHJAX_VERSION = "3.2.2"
#: book pages that are notebooks themselves, executed after the chapters
BOOK_PAGES = ("scoreboard.md", "performance.md")


def notebook_sources() -> list[Path]:
    """Every MyST notebook of the book, in reading order (file names sort into chapters)."""
    return sorted(NOTEBOOKS.glob("*.md"))


def key_of(path: Path) -> str:
    """``10_large_margin.md`` -> ``large_margin`` (the preset / results key)."""
    stem = path.stem
    return stem.split("_", 1)[1] if stem[:2].isdigit() and "_" in stem else stem


def _quiet_kernel_manager():
    """A kernel manager class whose kernel prints nothing a reader could take for a failure.

    Two messages used to reach the terminal of ``make book``: ipykernel's "Kernel is running over
    TCP without encryption" warning (avoided by talking to the kernel over local IPC sockets in the
    temp folder instead of TCP), and "[IPKernelApp] ERROR | KeyboardInterrupt caught in
    kernel": jupyter_client interrupts the kernel (SIGINT) before asking it to shut down, and a
    kernel that is idling in its event loop logs that interrupt as an error. The shutdown request
    that follows stops the kernel cleanly, so the interrupt is skipped while shutting down.
    """
    import tempfile
    import uuid

    from jupyter_client import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class QuietKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc" if os.name == "posix" else "tcp")

        @default("ip")
        def _ip_default(self) -> str:
            # IPC socket files <ip>-<port> in the temp folder: a Unix socket path must stay under
            # ~100 characters, which a connection file deep in a home folder could exceed
            if self.transport == "ipc":
                return os.path.join(tempfile.gettempdir(), f"fer-nb-{uuid.uuid4().hex[:12]}")
            return super()._ip_default()

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


_PROGRESS_RE = re.compile(r"^[^\n|]*\d+%\|.*\|\s*\d+/\S+ \[[^\]]*\]\s*$")


def _clean_stream(text: str) -> str:
    """Drop tqdm progress-bar lines (and the carriage-return redraws between them) from a stream."""
    keep = []
    for line in text.split("\n"):
        last = line.split("\r")[-1] if "\r" in line else line
        if _PROGRESS_RE.match(last.strip()):
            continue
        keep.append(last)
    return "\n".join(keep)


#: a figure wider than this (pixels) is drawn across the page margin (cell tag ``full-width``)
WIDE_FIGURE_PX = 1100


def png_width(data: str) -> int:
    """Width in pixels of a base64 PNG (from its IHDR header); 0 when it is not one."""
    import base64
    import struct

    try:
        head = base64.b64decode("".join(data.split())[:48])
    except ValueError:
        return 0
    return struct.unpack(">I", head[16:20])[0] if head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def clean_outputs(nb) -> dict:
    """Prepare an executed notebook for the HTML build, in place; returns counts of what changed.

    - progress-bar lines are removed from stream outputs, and stream outputs left empty (or empty to
      begin with) are dropped: Jupyter Book draws every stderr output as a grey box;
    - the cell papermill injects (tag ``injected-parameters``) gets the tag ``remove-cell``: readers
      see the notebook's own ``parameters`` cell, which documents the defaults;
    - stream outputs of the same name that became adjacent are merged;
    - a cell with a figure wider than :data:`WIDE_FIGURE_PX` gets the tag ``full-width``, so the
      theme lets it use the page's margin and its text is not shrunk to half size.
    """
    counts = {"progress_lines": 0, "empty_streams": 0, "hidden_cells": 0, "wide_figures": 0}
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            counts["hidden_cells"] += 1
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                cleaned = _clean_stream(text)
                counts["progress_lines"] += text.count("\n") - cleaned.count("\n") if cleaned != text else 0
                if not cleaned.strip():
                    counts["empty_streams"] += 1
                    continue
                if outputs and outputs[-1].get("output_type") == "stream" and outputs[-1].get("name") == out.get("name"):
                    outputs[-1]["text"] = outputs[-1]["text"].rstrip("\n") + "\n" + cleaned.lstrip("\n")
                    continue
                out["text"] = cleaned
            outputs.append(out)
        cell["outputs"] = outputs
        widths = [png_width(o.get("data", {}).get("image/png", "")) for o in outputs if "image/png" in o.get("data", {})]
        if widths and max(widths) > WIDE_FIGURE_PX and "full-width" not in tags:
            tags.append("full-width")
            counts["wide_figures"] += 1
    return counts


def execute(src: Path, dst_dir: Path, parameters: dict, cwd: Path = ROOT, log_output: bool = False) -> Path:
    """jupytext ``src`` -> ipynb, execute with papermill into ``dst_dir``; raise on failure.

    The executed notebook is cleaned for the book (:func:`clean_outputs`). ``log_output``: stream the
    cells' output (progress bars included) to this process's log as they run.
    """
    import jupytext
    import nbformat
    import papermill

    dst_dir.mkdir(parents=True, exist_ok=True)
    raw = dst_dir / f".{src.stem}.input.ipynb"
    out = dst_dir / f"{src.stem}.ipynb"
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, raw, fmt="ipynb")
    try:
        papermill.execute_notebook(str(raw), str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(cwd), progress_bar=False, log_output=log_output,
                                   kernel_manager_class=_quiet_kernel_manager())
    finally:
        raw.unlink(missing_ok=True)
    executed = nbformat.read(out, as_version=4)
    clean_outputs(executed)
    nbformat.write(executed, out)
    return out


def install_mathjax() -> None:
    """Copy MathJax 3 (from npm, cached in .cache/) into book/_static/mathjax for offline math."""
    target = BOOK / "_static" / "mathjax"
    if (target / "tex-mml-chtml.js").exists():
        return
    pkg = CACHE / "npm" / "node_modules" / "mathjax"
    if not (pkg / "es5" / "tex-mml-chtml.js").exists():
        if shutil.which("npm") is None:
            raise SystemExit("npm is needed once to fetch MathJax for offline math: install Node.js (apt-get install npm)")
        (CACHE / "npm").mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE / "npm"),
                        f"mathjax@{MATHJAX_VERSION}"], check=True)
    (target / "output" / "chtml").mkdir(parents=True, exist_ok=True)
    shutil.copy(pkg / "es5" / "tex-mml-chtml.js", target / "tex-mml-chtml.js")
    shutil.copytree(pkg / "es5" / "output" / "chtml" / "fonts", target / "output" / "chtml" / "fonts",
                    dirs_exist_ok=True)


#: parts of the table of contents: (caption, pages before the chapters, first digit of the chapters'
#: file names, pages after them). A notebook ``NN_name.md`` goes to the part whose digits hold N.
TOC_PARTS = (
    ("Getting started", ["toolkit"], "0", ["real_datasets"]),
    ("The papers", [], "12345", []),
    ("Course", [], "6789", []),
    ("Results and engineering", [], "", ["_generated/scoreboard", "reliability", "_generated/performance",
                                         "bibliography"]),
)


def toc_text() -> str:
    """``book/_toc.yml`` generated from the notebooks (a new chapter needs no hand-edited table of contents)."""
    lines = ["# Generated by fer_nb.book.toc_text() from notebooks/*.md: run `python -m fer_nb.book --toc`",
             "format: jb-book", "root: intro", "parts:"]
    for caption, before, digits, after in TOC_PARTS:
        chapters = [f"_generated/{src.stem}" for src in notebook_sources() if digits and src.stem[:1] in digits]
        lines += [f"  - caption: {caption}", "    chapters:"]
        lines += [f"      - file: {page}" for page in before + chapters + after]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_nb.book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="smoke", choices=SCALES)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", help="execute only these notebook stems (others must be built already)")
    ap.add_argument("--skip-html", action="store_true")
    ap.add_argument("--toc", action="store_true", help="only write book/_toc.yml from the notebooks")
    args = ap.parse_args(argv)
    (BOOK / "_toc.yml").write_text(toc_text())
    if args.toc:
        return 0
    os.environ.setdefault("FER_NB_PLAIN_PROGRESS", "1")
    GENERATED.mkdir(parents=True, exist_ok=True)
    for src in notebook_sources():
        if args.only and src.stem not in args.only:
            continue
        params = {"SCALE": args.scale, "DEVICE": args.device, "OUT_DIR": f"runs/{key_of(src)}"}
        t0 = time.perf_counter()
        print(f"[book] executing {src.relative_to(ROOT)} ({args.scale}, {args.device})", flush=True)
        try:
            execute(src, GENERATED, params)
        except Exception as exc:  # papermill's error names the failing cell
            print(f"[book] FAILED: {src.name}: {type(exc).__name__}: {str(exc)[-2000:]}", file=sys.stderr)
            return 1
        print(f"[book]   done in {time.perf_counter() - t0:.0f} s", flush=True)
    for page in BOOK_PAGES:  # pages computed from the runs above and from results/, benchmarks/
        execute(BOOK / page, GENERATED, {})
    if args.skip_html:
        return 0
    install_mathjax()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(BOOK), "--keep-going"]
    print("[book] " + " ".join(cmd), flush=True)
    res = subprocess.run(cmd)
    if res.returncode == 0:
        print(f"[book] open {BOOK / '_build' / 'html' / 'intro.html'}")
    return res.returncode


if __name__ == "__main__":
    raise SystemExit(main())
