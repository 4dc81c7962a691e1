"""Paper numbers beside ours, and ``metrics.json`` with provenance.

``results/<paper>/paper.yaml`` holds the published numbers::

    citation: "Author et al., Title, Venue Year"
    tables:
      table1:
        title: "Expression recognition on RAF-DB"
        source: "Table 1, page 7"
        units: "percent"
        rows:
          "AlexNet softmax (supervised)": {acc: 78.3, mean_acc: 67.0}

A notebook's ``metrics.json`` has the same ``tables -> row -> metric`` shape (values in the
paper's units; ``<metric>_std`` for the spread over seeds), plus ``provenance`` and ``config``.
Recorded runs are copies of it under ``results/<paper>/<scale>-<dataset>.json``.
"""
from __future__ import annotations

import datetime as _dt
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml

from fer_nb.io import check_finite, load_json, save_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def git_commit() -> str:
    """Current commit (``+dirty`` when the tree has uncommitted changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(cfg) -> dict[str, Any]:
    """Commit, date, device, versions, scale, dataset, seeds and code fingerprint of a run.

    ``code`` is :attr:`fer_nb.config.Config.code` (see :mod:`fer_nb.fingerprint`): a recorded run
    whose ``code`` differs from a page's own (or that has none) is labelled, not trusted.
    """
    from fer_nb.device import describe

    return {
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": describe(cfg.device),
        "device_type": cfg.device.type,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "notebook": cfg.notebook,
        "scale": cfg.scale,
        "dataset": cfg.dataset,
        "seeds": list(cfg.seeds),
        "code": dict(getattr(cfg, "code", None) or {}),
    }


def summarise_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over seeds of each metric, plus ``<metric>_std`` (sample std; 0 for one seed)."""
    if not runs:
        raise ValueError("no runs to summarise")
    out: dict[str, float] = {}
    for key in runs[0]:
        vals = torch.tensor([float(r[key]) for r in runs], dtype=torch.float64)
        out[key] = float(vals.mean())
        out[f"{key}_std"] = float(vals.std()) if len(vals) > 1 else 0.0
    return out


def write_metrics(cfg, tables: Mapping[str, Mapping[str, Mapping[str, float]]],
                  summary: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``OUT_DIR/metrics.json`` atomically; every number must be finite.

    A method that did not converge is reported as the string ``"nc"`` (as the papers do),
    never as NaN.
    """
    payload = {
        "provenance": provenance(cfg),
        "config": cfg.as_dict(),
        "tables": tables,
        "summary": dict(summary or {}),
        "extra": dict(extra or {}),
    }
    check_finite(payload)
    return save_json(payload, Path(cfg.out_dir) / "metrics.json")


def load_paper(paper: str) -> dict:
    path = RESULTS / paper / "paper.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no published numbers at {path}")
    with open(path) as fh:
        return yaml.safe_load(fh)


def recorded_path(paper: str, scale: str, dataset: str) -> Path:
    return RESULTS / paper / f"{scale}-{dataset}.json"


def load_recorded(paper: str, scale: str = "small", dataset: str = "synthfacs") -> dict | None:
    path = recorded_path(paper, scale, dataset)
    return load_json(path) if path.exists() else None


def record(cfg, paper: str | None = None) -> Path:
    """Copy this run's ``metrics.json`` to ``results/<paper>/<scale>-<dataset>.json``."""
    paper = paper or cfg.notebook
    dst = recorded_path(paper, cfg.scale, cfg.dataset)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg.out_dir) / "metrics.json", dst)
    return dst


def _fmt(v: Any, std: Any = None) -> Any:
    if isinstance(v, (int, float)) and std not in (None, 0, 0.0):
        return f"{v:.2f} ± {std:.2f}"
    if isinstance(v, float):
        return round(v, 2)
    return v


def compare(paper: str, table: str, ours: Mapping[str, Mapping[str, Any]] | None = None,
            recorded: Mapping | None = None, metrics: Sequence[str] | None = None):
    """DataFrame of one table: ``row | metric | paper | recorded | this run | delta``.

    ``ours``: this run's ``{row: {metric: value}}`` (with optional ``<metric>_std``).
    ``recorded``: a loaded recorded ``metrics.json`` (default: ``results/<paper>/small-synthfacs.json``).
    ``delta`` = this run - paper, where both are numbers. Rows present on either side are listed.
    """
    import pandas as pd

    pub = load_paper(paper)["tables"].get(table)
    if pub is None:
        raise KeyError(f"results/{paper}/paper.yaml has no table {table!r}")
    rec = recorded if recorded is not None else load_recorded(paper)
    rec_rows = (rec or {}).get("tables", {}).get(table, {})
    ours = ours or {}
    rows = list(dict.fromkeys([*pub["rows"], *ours, *rec_rows]))
    out = []
    for row in rows:
        p, o, r = pub["rows"].get(row, {}) or {}, ours.get(row, {}), rec_rows.get(row, {})
        keys = metrics or list(dict.fromkeys([k for k in (*p, *o, *r) if not str(k).endswith("_std")]))
        for m in keys:
            pv, ov, rv = p.get(m), o.get(m), r.get(m)
            delta = (ov - pv) if isinstance(ov, (int, float)) and isinstance(pv, (int, float)) else None
            out.append({
                "row": row, "metric": m, "paper": pv if pv is not None else "—",
                "recorded": _fmt(rv, r.get(f"{m}_std")) if rv is not None else "—",
                "this run": _fmt(ov, o.get(f"{m}_std")) if ov is not None else "—",
                "delta": round(delta, 2) if delta is not None and math.isfinite(delta) else "—",
            })
    frame = pd.DataFrame(out)
    frame.attrs["title"] = f"{pub.get('title', table)} ({pub.get('source', '')})"
    return frame
