"""What a reader should make of a page's numbers at each scale, shown under the set-up cell."""
from __future__ import annotations

import html
import re

from fer_nb.report import RESULTS

SCALE_MEANING = {
    "smoke": ("The numbers on this page only show that the pipeline runs",
              "At `smoke` every experiment trains for seconds on a few hundred images, so the "
              "tables and figures below test the code, not the method. The recorded runs "
              "(`small` or larger, several seeds) are the results to read."),
    "small": ("CPU scale: orderings of methods over seeds",
              "At `small` the networks and schedules are cut to fit a CPU; read the ordering of the "
              "methods and the spread over seeds, not the absolute numbers."),
    "gpu": ("One-GPU scale: the papers' networks, schedules cut to minutes",
            "At `gpu` the papers' networks, input sizes and batch sizes run with schedules cut so "
            "each chapter finishes in about 10 minutes on one H100-class GPU (see the Deviations box)."),
    "paper": ("The papers' own schedules", "At `paper` the schedules are the published ones."),
}


def recorded_runs(notebook: str) -> list[str]:
    """File names of the recorded runs of ``notebook`` under ``results/<notebook>/``."""
    folder = RESULTS / notebook
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def recorded_runs_text(cfg) -> str:
    """`` Recorded runs of this chapter: `results/<key>/<run>.json` (...), ...`` with, for each, whether this
    page's code made it (its code fingerprint, :mod:`fer_nb.fingerprint`); empty when there are none."""
    from fer_nb.fingerprint import staleness
    from fer_nb.io import load_json

    runs = recorded_runs(cfg.notebook)
    if not runs:
        return ""
    parts = []
    for r in runs:
        note = staleness(load_json(RESULTS / cfg.notebook / r), cfg)
        state = "made by this page's code" if note is None else (
            "made by earlier code without a fingerprint" if "without a code fingerprint" in note
            else "made by other code than this page's")
        parts.append(f"`results/{cfg.notebook}/{r}` ({state})")
    return " Recorded runs of this chapter: " + ", ".join(parts) + "."


def scale_notice_text(cfg) -> str:
    """Markdown of the notice for ``cfg.scale`` (and the recorded runs that exist)."""
    title, body = SCALE_MEANING[cfg.scale]
    return f"**{title}.** {body}{recorded_runs_text(cfg)}"


#: admonition class per scale (sphinx-book-theme colours: caution = orange, note = blue)
ADMONITION_CLASS = {"smoke": "caution", "small": "note", "gpu": "note", "paper": "note"}


def _inline_html(markdown: str) -> str:
    """The little Markdown the notices use (``code``, **bold**) as escaped HTML."""
    text = html.escape(markdown, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def scale_notice_html(cfg) -> str:
    """The notice as an HTML admonition: Jupyter Book styles it like a MyST ``{admonition}``."""
    title, body = SCALE_MEANING[cfg.scale]
    where = recorded_runs_text(cfg)
    kind = ADMONITION_CLASS.get(cfg.scale, "note")
    return (f'<div class="admonition {kind}"><p class="admonition-title">'
            f"{_inline_html(title)} (<code>SCALE = &quot;{html.escape(cfg.scale)}&quot;</code>)</p>"
            f"<p>{_inline_html(body + where)}</p></div>")


def scale_notice(cfg) -> None:
    """Display the notice for ``cfg.scale``: an admonition in a notebook or the book, text elsewhere."""
    text = scale_notice_text(cfg)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display({"text/html": scale_notice_html(cfg), "text/markdown": f"> {text}", "text/plain": text}, raw=True)
