"""Check the whole book on a GPU: ``make gpu-check`` (``python -m fer_nb.gpu_check``).

1. every notebook at ``smoke`` with ``DEVICE="cuda"`` (then, with ``--scales smoke gpu``, at the one-GPU
   scale too), each in its own papermill kernel, timed, with the error's last line when one fails;
2. ``make bench`` on the same GPU (the papers' training steps as the benchmark builds them and as the
   chapters' own ``fer_nb.papers`` modules run them, the data pipeline, the losses);
3. a summary table on the terminal and ``benchmarks/results/gpu_check/<device>.json`` with the device name,
   torch version, commit and every time measured.

A notebook that fails does not stop the others; the exit status is non-zero when any step failed.
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

from fer_nb.book import ROOT, execute, key_of, notebook_sources

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check"


def _last_error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not set(ln.strip()) <= {"-"}]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def run_notebooks(scales: list[str], only: list[str] | None, out_root: Path) -> list[dict]:
    rows = []
    for scale in scales:
        for src in notebook_sources():
            if only and key_of(src) not in only:
                continue
            work = out_root / f"{scale}-{src.stem}"
            params = {"SCALE": scale, "DEVICE": "cuda", "OUT_DIR": str(work / "run")}
            t0 = time.perf_counter()
            try:
                execute(src, work, params)
                status, error = "ok", ""
            except Exception as exc:  # noqa: BLE001 - every failure is reported, the others still run
                status, error = "FAILED", _last_error_line(exc)
            seconds = time.perf_counter() - t0
            rows.append({"notebook": src.stem, "scale": scale, "status": status, "seconds": round(seconds, 1),
                         "error": error})
            print(f"[gpu-check] {src.stem:24s} {scale:6s} {status:6s} {seconds:7.1f} s {error}", flush=True)
    return rows


def run_bench(only: list[str] | None) -> tuple[str, str]:
    from benchmarks import run as bench

    try:
        bench.main(["--device", "cuda", *(["--only", *only] if only else [])])
        return "ok", ""
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return "FAILED", _last_error_line(exc)


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
    print(f"[gpu-check] {device}, torch {torch.__version__}, scales {args.scales}", flush=True)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="fer_nb_gpu_check_"))
    t0 = time.perf_counter()
    rows = run_notebooks(args.scales, args.only, out_root)
    bench_status = ("skipped", "") if args.no_bench else run_bench(None)
    table = summary_table(rows, bench_status)
    print("\n" + table)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    path = save_json({
        "device": device, "torch": torch.__version__, "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "notebooks": rows, "bench": {"status": bench_status[0], "error": bench_status[1]},
        "total_seconds": round(time.perf_counter() - t0, 1),
    }, RESULTS / f"{slug}.json")
    print(f"[gpu-check] wrote {path}; executed notebooks in {out_root}")
    failed = any(r["status"] != "ok" for r in rows) or bench_status[0] == "FAILED"
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
