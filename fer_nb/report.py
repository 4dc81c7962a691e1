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

from fer_nb.config import SCALES  # smallest to largest; a smoke run is never recorded
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


def recorded_runs(paper: str) -> list[dict]:
    """Every recorded run of ``paper`` (``results/<paper>/<scale>-<dataset>.json`` with tables)."""
    folder = RESULTS / paper
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        m = load_json(path)
        prov = m.get("provenance") or {}
        if isinstance(m.get("tables"), dict) and prov.get("scale") and prov.get("dataset"):
            m.setdefault("_path", str(path.relative_to(ROOT)))
            runs.append(m)
    return runs


def recorded_for(paper: str, scale: str | None, dataset: str | None) -> dict | None:
    """The recorded run to show beside a run of ``paper`` at ``scale`` on ``dataset``, or None.

    Only a run on the same dataset is ever shown (numbers on SynthFACS say nothing about RAF-DB
    and the reverse). The scale must match too, except for a ``smoke`` run: smoke runs are never
    recorded (they only show that the code runs), so beside one the recorded run of the same
    dataset at the largest recorded scale is shown, and :func:`compare` names its scale.
    """
    if dataset is None or scale is None:
        return None
    same = [m for m in recorded_runs(paper) if m["provenance"]["dataset"] == dataset]
    exact = [m for m in same if m["provenance"]["scale"] == scale]
    if exact:
        return exact[0]
    if scale == "smoke" and same:
        rank = {s: i for i, s in enumerate(SCALES)}
        return max(same, key=lambda m: rank.get(m["provenance"]["scale"], -1))
    return None


def paper_dataset(pub: Mapping, table: str, metric: str | None = None) -> str | None:
    """The ``DATASET`` value a paper table (or one of its metrics) was measured on, from paper.yaml.

    ``datasets: {table1: rafdb, table3: {"ckplus": ckplus, "mmi": mmi}}``: a table maps to one
    dataset, or its metrics (shell patterns such as ``cifar10_*``) map to one each.
    """
    import fnmatch

    entry = (pub.get("datasets") or {}).get(table)
    if isinstance(entry, str) or entry is None:
        return entry
    for pattern, name in entry.items():
        if metric is not None and fnmatch.fnmatchcase(str(metric), str(pattern)):
            return name
    return None


def record(cfg, paper: str | None = None) -> Path:
    """Copy this run's ``metrics.json`` to ``results/<paper>/<scale>-<dataset>.json``."""
    paper = paper or cfg.notebook
    dst = recorded_path(paper, cfg.scale, cfg.dataset)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg.out_dir) / "metrics.json", dst)
    return dst


def fmt_number(v: Any, sig: int = 3, max_decimals: int = 4) -> Any:
    """A number as text with ``sig`` significant digits (``73.1``, ``0.219``, ``440``); others unchanged.

    Integers and zero print without decimals; decimals are capped at ``max_decimals``.
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    if isinstance(v, int) or v == 0:
        return f"{int(v)}"
    if not math.isfinite(v):
        return str(v)
    decimals = max(0, min(max_decimals, sig - 1 - math.floor(math.log10(abs(v)))))
    return f"{v:.{decimals}f}"


def fmt_mean_std(v: Any, std: Any = None, sig: int = 3) -> Any:
    """``mean ± std`` with the spread at the mean's decimals (``73.1 ± 5.9``); the mean alone without one."""
    text = fmt_number(v, sig)
    if not isinstance(v, (int, float)) or not isinstance(std, (int, float)) or std == 0:
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text} ± {std:.{decimals}f}"


def run_label(m: Mapping | None, notebook: str | None = None) -> str:
    """``small · synthfacs · 3 seeds`` for a metrics.json / recorded run (``—`` for none); with ``notebook``,
    `` · other code`` is appended when the run was not made by that chapter's current code."""
    if not m:
        return "—"
    p = m.get("provenance") or {}
    seeds = p.get("seeds") or []
    label = f"{p.get('scale', '?')} · {p.get('dataset', '?')} · {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    if notebook is not None:
        from fer_nb.fingerprint import is_stale

        label += " · other code" if is_stale(m, notebook) else ""
    return label


def compare(paper: str, table: str, ours: Mapping[str, Mapping[str, Any]] | None = None,
            recorded: Mapping | None = None, metrics: Sequence[str] | None = None, *,
            cfg=None, dataset: str | None = None, scale: str | None = None):
    """DataFrame of one table: ``row | metric | paper | recorded | this run | delta``.

    ``ours``: this run's ``{row: {metric: value}}`` (with optional ``<metric>_std``).
    ``cfg`` (or ``dataset`` and ``scale``): what this run is. They choose the ``recorded`` column
    (:func:`recorded_for`: a recorded run of the same dataset and scale, or for a smoke run the
    largest recorded scale of the same dataset; none otherwise) and whether there is a ``delta``.
    ``recorded``: a loaded recorded ``metrics.json`` to show instead; one whose provenance names
    another dataset than this run's is refused.
    ``delta`` = this run - paper, only where this run is on the dataset the paper measured that
    number on (``datasets:`` in paper.yaml). Rows present on either side are listed.
    ``frame.attrs``: ``title``, ``recorded`` (which recorded run, e.g. ``small · synthfacs · 3 seeds``)
    and ``this_run`` (``scale · dataset``).
    """
    import pandas as pd

    if cfg is not None:
        dataset, scale = dataset or cfg.dataset, scale or cfg.scale
    pub_all = load_paper(paper)
    pub = pub_all["tables"].get(table)
    if pub is None:
        raise KeyError(f"results/{paper}/paper.yaml has no table {table!r}")
    rec = recorded if recorded is not None else recorded_for(paper, scale, dataset)
    rec_dataset = ((rec or {}).get("provenance") or {}).get("dataset")
    if rec is not None and dataset is not None and rec_dataset is not None and rec_dataset != dataset:
        raise ValueError(f"the recorded run is on {rec_dataset!r} but this run is on {dataset!r}: "
                         f"pass recorded=None to show the recorded run of the same dataset, if any")
    rec_rows = (rec or {}).get("tables", {}).get(table, {})
    ours = ours or {}
    rows = list(dict.fromkeys([*pub["rows"], *ours, *rec_rows]))
    out = []
    for row in rows:
        p, o, r = pub["rows"].get(row, {}) or {}, ours.get(row, {}) or {}, rec_rows.get(row, {}) or {}
        keys = metrics or list(dict.fromkeys([k for k in (*p, *o, *r) if not str(k).endswith("_std")]))
        for m in keys:
            pv, ov, rv = p.get(m), o.get(m), r.get(m)
            same_data = dataset is not None and dataset == paper_dataset(pub_all, table, m)
            delta = (ov - pv) if same_data and isinstance(ov, (int, float)) and isinstance(pv, (int, float)) else None
            out.append({
                "row": row, "metric": m, "paper": pv if pv is not None else "—",
                "recorded": fmt_mean_std(rv, r.get(f"{m}_std")) if rv is not None else "—",
                "this run": fmt_mean_std(ov, o.get(f"{m}_std")) if ov is not None else "—",
                "delta": fmt_number(delta) if delta is not None and math.isfinite(delta) else "—",
            })
    frame = pd.DataFrame(out)
    frame.attrs["title"] = f"{pub.get('title', table)} ({pub.get('source', '')})"
    frame.attrs["recorded"] = run_label(rec, paper) if rec else "—"
    frame.attrs["this_run"] = f"{scale} · {dataset}" if dataset else "—"
    return frame


def _claim_metrics(claim: Mapping, rec_rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The claim's metric names present in a recorded table (patterns such as ``acc_*`` expanded)."""
    import fnmatch

    names = list(dict.fromkeys(k for vals in rec_rows.values() for k in (vals or {})
                               if not str(k).endswith("_std")))
    out: list[str] = []
    for pattern in claim.get("metrics", []):
        out += [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in out]
    return out


def check_claim(paper: str, run: Mapping | None = None) -> dict[str, Any]:
    """Test ``results/<paper>/paper.yaml``'s ``claim`` (an ordering of rows) on a recorded run.

    The claim holds when, for every claim metric in the run, the claim's ``row`` beats each of the
    ``over`` rows the run has, by mean (``better: higher`` or ``lower``). Returns ``verdict``
    (``holds``, ``does not hold``, ``not run``), the paper's number, ours (mean ± std), ``margin``
    (our row minus its best competitor, worst case over the metrics, signed so that > 0 = holds),
    ``within_spread`` (that margin is smaller than the larger seed std of the two rows),
    ``missing`` rows, the ``run`` label and whether the run is on the paper's dataset (``delta``
    only then).
    """
    pub = load_paper(paper)
    claim = pub.get("claim")
    if not claim:
        raise KeyError(f"results/{paper}/paper.yaml has no claim")
    table, row, sign = claim["table"], claim["row"], 1.0 if claim.get("better", "higher") == "higher" else -1.0
    paper_metric = claim.get("paper_metric") or claim["metrics"][0]
    paper_value = (pub["tables"][table]["rows"].get(row) or {}).get(paper_metric)
    result: dict[str, Any] = {
        "paper": paper, "text": claim["text"], "table": table, "row": row, "metric": paper_metric,
        "paper_value": paper_value, "paper_dataset": paper_dataset(pub, table, paper_metric),
        "run": run_label(run, paper) if run else "—", "verdict": "not run", "ours": None, "ours_std": None,
        "ours_metric": None, "margin": None, "missing": [], "delta": None, "within_spread": False,
    }
    rec_rows = ((run or {}).get("tables") or {}).get(table) or {}
    ours = rec_rows.get(row) or {}
    metrics = [m for m in _claim_metrics(claim, rec_rows) if isinstance(ours.get(m), (int, float))]
    if not metrics:
        return result
    result["missing"] = [r for r in claim["over"] if not isinstance((rec_rows.get(r) or {}).get(metrics[0]), (int, float))]
    rivals = [r for r in claim["over"] if r not in result["missing"]]
    if not rivals:
        return result
    margins, spreads = [], []
    for m in metrics:
        scored = [(sign * rec_rows[r][m], r) for r in rivals if isinstance(rec_rows[r].get(m), (int, float))]
        best_rival, rival = max(scored)
        margins.append(sign * ours[m] - best_rival)
        spreads.append(max(float(ours.get(f"{m}_std") or 0.0), float(rec_rows[rival].get(f"{m}_std") or 0.0)))
    worst = min(range(len(margins)), key=margins.__getitem__)
    shown = paper_metric if paper_metric in metrics else metrics[0]
    dataset = ((run or {}).get("provenance") or {}).get("dataset")
    result.update({
        "verdict": "holds" if margins[worst] > 0 else "does not hold",
        "within_spread": abs(margins[worst]) < spreads[worst],
        "ours": ours[shown], "ours_std": ours.get(f"{shown}_std"), "ours_metric": shown,
        "margin": min(margins), "metrics_tested": metrics,
    })
    if dataset is not None and dataset == result["paper_dataset"] and isinstance(paper_value, (int, float)):
        result["delta"] = ours[shown] - paper_value
    return result


def claims_summary(papers: Sequence[str] | None = None):
    """One row per paper with a ``claim``: the claim, the paper's number, our recorded run's, verdict.

    Every recorded run of a paper is tested; the row shows the run at the largest scale (real data
    before SynthFACS at equal scale), since the claims are about the papers' settings.
    """
    import pandas as pd

    papers = papers or sorted(p.parent.name for p in RESULTS.glob("*/paper.yaml"))
    rank = {s: i for i, s in enumerate(SCALES)}
    rows = []
    for paper in papers:
        pub = load_paper(paper)
        if not pub.get("claim"):
            continue
        runs = sorted(recorded_runs(paper), key=lambda m: (rank.get(m["provenance"]["scale"], -1),
                                                            m["provenance"]["dataset"] != "synthfacs"))
        checks = [check_claim(paper, m) for m in runs] or [check_claim(paper, None)]
        tested = [c for c in checks if c["verdict"] != "not run"]
        c = (tested or checks)[-1]
        pv = c["paper_value"]
        rows.append({
            "paper": paper,
            "claim": c["text"],
            "paper's number": f"{pv} ({c['metric']}, {c['paper_dataset'] or '?'})" if pv is not None else "—",
            "ours (recorded)": (f"{fmt_mean_std(c['ours'], c['ours_std'])} ({c['ours_metric']})"
                                if c["ours"] is not None else "—"),
            "run": c["run"],
            "verdict": c["verdict"] + (" (within the seed spread)" if c["within_spread"] else ""),
            "margin": fmt_number(c["margin"]) if c["margin"] is not None else "—",
            "delta to paper": fmt_number(c["delta"]) if c["delta"] is not None else "—",
        })
    return pd.DataFrame(rows)


def is_matrix(pub_table: Mapping) -> bool:
    """Whether a paper table is a confusion matrix (its rows and its metrics are the same classes)."""
    rows = pub_table.get("rows") or {}
    cols = {k for vals in rows.values() for k in (vals or {})}
    return bool(rows) and cols <= set(rows)


def _as_cell(v: Any, std: Any = None, printed: bool = False) -> str:
    """Table cell text: a paper's number as printed (``printed``), ours at 3 significant digits."""
    if v is None:
        return ""
    if printed or not isinstance(v, (int, float)):
        return str(v)
    return str(fmt_mean_std(v, std))


def paper_vs_recorded(paper: str, table: str, run: Mapping | None):
    """Wide DataFrame of one paper table: per method a ``paper`` line and a line for the recorded run.

    Index ``(method, source)``; one column per metric (named as in paper.yaml's ``metrics:`` when it
    labels them); numbers at 3 significant digits (ours as ``mean ± std`` over seeds); metrics
    empty on both sides dropped, as are the recorded run's ``*_std`` and bookkeeping columns
    that the paper does not have (``*_nc_runs``, ``converged_seeds``, ...) unless they are all the run has.
    """
    import pandas as pd

    pub = load_paper(paper)["tables"][table]
    rec_rows = ((run or {}).get("tables") or {}).get(table) or {}
    label = run_label(run) if run else "ours"
    pub_metrics = list(dict.fromkeys(k for vals in pub["rows"].values() for k in (vals or {})))
    rec_metrics = list(dict.fromkeys(k for vals in rec_rows.values() for k in (vals or {})
                                     if not str(k).endswith("_std")))
    extra = [m for m in rec_metrics if m not in pub_metrics]
    keep_extra = [m for m in extra if not any(t in m for t in ("nc_runs", "converged", "image_level", "status"))]
    metrics = pub_metrics + keep_extra
    records, index = [], []
    for row in dict.fromkeys([*pub["rows"], *rec_rows]):
        p, r = pub["rows"].get(row) or {}, rec_rows.get(row) or {}
        if p:
            index.append((row, "paper"))
            records.append({m: _as_cell(p.get(m), printed=True) for m in metrics})
        if r:
            index.append((row, label))
            records.append({m: _as_cell(r.get(m), r.get(f"{m}_std")) for m in metrics})
    frame = pd.DataFrame(records, index=pd.MultiIndex.from_tuples(index, names=["method", "source"]))
    frame = frame.loc[:, [c for c in frame.columns if (frame[c] != "").any()]]
    names = pub.get("metrics") or {}
    return frame.rename(columns={k: v for k, v in names.items() if isinstance(v, str) and len(v) <= 24})


def matrix_pair(paper: str, table: str, run: Mapping | None):
    """A confusion-matrix table as two square DataFrames (rows = actual, columns = predicted): paper, ours."""
    import pandas as pd

    pub = load_paper(paper)["tables"][table]
    classes = list(pub["rows"])
    rec_rows = ((run or {}).get("tables") or {}).get(table) or {}

    def square(rows, printed=False):
        return pd.DataFrame([[_as_cell((rows.get(a) or {}).get(b), printed=printed) for b in classes] for a in classes],
                            index=pd.Index(classes, name="actual"), columns=classes)

    return square(pub["rows"], printed=True), (square(rec_rows) if rec_rows else None)
