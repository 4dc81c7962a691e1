"""Check the whole book on a GPU: ``make gpu-check`` (``python -m fer_nb.gpu_check``).

1. every notebook at ``smoke`` with ``DEVICE="cuda"``, each in its own papermill kernel, timed, with the
   error's last line when one fails;
2. ``make bench`` on the same GPU (the papers' training steps as the benchmark builds them, as the
   chapters' own ``fer_nb.papers`` modules run them and, for the launch-bound ones, with a compiled network;
   the data pipeline; the losses);
3. every notebook at the larger scales asked for (``--scales smoke gpu``: the one-GPU scale);
4. a summary table on the terminal and ``<results-dir>/gpu_check/<device>.json`` with the device name,
   torch version, commit and every time measured, rewritten after each step (so a run stopped from outside
   keeps what it measured); ``make bench`` writes ``<results-dir>/<device>.json``.

``--budget-minutes M``: nothing new starts after ``M`` minutes (a skipped step is listed as
``skipped (budget)``), for a GPU lent by the hour or a job with a wall-time limit. The order above puts the
correctness checks and the throughput figures first. A notebook that fails does not stop the others; the
exit status is non-zero when any step failed.

On a GPU machine without internet, run it with the machine's own torch: ``PYTHONPATH=. python3 -m
fer_nb.gpu_check ...`` after installing the other requirements from carried wheels (the README's "Other scales,
a GPU, real data").
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from fer_nb.book import ROOT, execute, key_of, notebook_sources

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check"


def _last_error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not set(ln.strip()) <= {"-"}]
    return (lines[-1] if lines else type(exc).__name__)[:300]


class Budget:
    """A wall-clock budget: :meth:`allows` is False once ``minutes`` have passed since it was made
    (``None``: no limit)."""

    def __init__(self, minutes: float | None, clock: Callable[[], float] | None = None):
        self.minutes, self.clock = minutes, clock or (lambda: time.perf_counter())
        self.t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def allows(self) -> bool:
        return self.minutes is None or self.elapsed() < 60.0 * self.minutes


def run_notebook(src: Path, scale: str, out_root: Path) -> dict:
    """Execute ``src`` at ``scale`` with ``DEVICE="cuda"``; the row of the summary table."""
    work = out_root / f"{scale}-{src.stem}"
    params = {"SCALE": scale, "DEVICE": "cuda", "OUT_DIR": str(work / "run")}
    t0 = time.perf_counter()
    try:
        execute(src, work, params)
        status, error = "ok", ""
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the others still run
        status, error = "FAILED", _last_error_line(exc)
    seconds = time.perf_counter() - t0
    print(f"[gpu-check] {src.stem:24s} {scale:6s} {status:6s} {seconds:7.1f} s {error}", flush=True)
    return {"notebook": src.stem, "scale": scale, "status": status, "seconds": round(seconds, 1), "error": error}


def run_bench(only: list[str] | None, results_dir: Path | None = None) -> tuple[str, str]:
    from benchmarks import run as bench

    try:
        bench.main(["--device", "cuda", *(["--only", *only] if only else []),
                    *(["--results-dir", str(results_dir)] if results_dir is not None else [])])
        return "ok", ""
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return "FAILED", _last_error_line(exc)


def plan(scales: list[str], only: list[str] | None, bench: bool) -> list[tuple[str, Path | None]]:
    """The steps in order: ``("notebook", src)`` at ``smoke`` first, then ``("bench", None)``, then the
    notebooks at each larger scale; each step is ``(scale or "bench", src)``."""
    sources = [src for src in notebook_sources() if not only or key_of(src) in only]
    steps: list[tuple[str, Path | None]] = [("smoke", src) for src in sources] if "smoke" in scales else []
    if bench:
        steps.append(("bench", None))
    for scale in scales:
        if scale != "smoke":
            steps += [(scale, src) for src in sources]
    return steps


def summary_table(rows: list[dict], bench_status: tuple[str, str]) -> str:
    lines = ["| notebook | scale | result | seconds |", "|---|---|---|---|"]
    for r in rows:
        result = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        lines.append(f"| {r['notebook']} | {r['scale']} | {result} | {r['seconds']:.1f} |")
    status, error = bench_status
    lines.append(f"| make bench | full | {status}{': ' + error if error else ''} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", default=["smoke", "gpu"], choices=["smoke", "small", "gpu", "paper"])
    ap.add_argument("--only", nargs="*", help="notebook keys (e.g. caf udat_as); default: all")
    ap.add_argument("--no-bench", action="store_true", help="skip make bench")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="start nothing new after this many minutes (default: no limit)")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="where the JSON records go (default: benchmarks/results)")
    ap.add_argument("--out", type=Path, default=None, help="where the executed notebooks go (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    from fer_nb.device import describe
    from fer_nb.io import save_json
    from fer_nb.report import git_commit

    if not torch.cuda.is_available():
        print("[gpu-check] no CUDA GPU is visible: this check is for a machine with one "
              "(on a CPU, `make test` runs the fake-CUDA device tests instead)", file=sys.stderr)
        return 2
    os.environ.setdefault("FER_NB_PLAIN_PROGRESS", "1")
    device = describe(torch.device("cuda"))
    budget = Budget(args.budget_minutes)
    print(f"[gpu-check] {device}, torch {torch.__version__}, scales {args.scales}"
          f"{f', budget {args.budget_minutes:g} min' if args.budget_minutes else ''}", flush=True)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="fer_nb_gpu_check_"))
    results = RESULTS if args.results_dir is None else args.results_dir / "gpu_check"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    rows: list[dict] = []
    bench_status = ("skipped", "")

    def record() -> Path:
        return save_json({
            "device": device, "torch": torch.__version__, "commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "budget_minutes": args.budget_minutes, "notebooks": rows,
            "bench": {"status": bench_status[0], "error": bench_status[1]},
            "total_seconds": round(budget.elapsed(), 1),
        }, results / f"{slug}.json")

    for scale, src in plan(args.scales, args.only, not args.no_bench):
        if scale == "bench":
            bench_status = run_bench(None, args.results_dir) if budget.allows() else ("skipped (budget)", "")
        elif budget.allows():
            rows.append(run_notebook(src, scale, out_root))
        else:
            rows.append({"notebook": src.stem, "scale": scale, "status": "skipped (budget)", "seconds": 0.0,
                         "error": ""})
        record()
    table = summary_table(rows, bench_status)
    print("\n" + table)
    path = record()
    print(f"[gpu-check] wrote {path}; executed notebooks in {out_root}")
    failed = any(r["status"] == "FAILED" for r in rows) or bench_status[0] == "FAILED"
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
