"""Re-record the book's recorded runs: ``make record`` (``python -m fer_nb.record``).

A recorded run is a JSON file under ``results/`` that the book's own code wrote and that carries the
code fingerprint it was made with (``provenance.code``, see :mod:`fer_nb.fingerprint`). Each has one
recipe here:

* ``results/<key>/<scale>-<dataset>.json`` (a chapter's tables): the chapter executed with papermill at
  ``SCALE=<scale>``, the recorded seeds, ``DEVICE="cpu"`` and, for a real dataset, ``DATASET`` and
  ``DATA_ROOT``; its ``metrics.json`` is copied. A figure kept beside it as
  ``results/<key>/<scale>-<dataset>-<name>.png`` is refreshed from the run's ``<name>.png``.
* ``results/margin_mix/baseline-wrn28_2-ferplus.json``: ``benchmarks.ferplus_baseline`` with the
  recorded schedule (steps, epochs, batch size, seed).
* ``results/datasets/synthfacs-vs-ferplus.json``: ``benchmarks.synthfacs_vs_ferplus`` with the
  recorded protocol (budget, steps, seeds).

``--check`` lists every recording as current or stale (made by other code than the checkout's) and exits
1 when one is stale; ``tests/test_record.py`` runs it, so a change that can alter a recorded number does
not land without its re-recording. Without ``--check`` the stale recordings are re-run (``--all``: every
one; ``--only NAME ...``: those), ``--jobs`` at a time, longest first by the time each took when it
was last recorded (stored in the file as ``recording.seconds``). Each job runs with one CPU thread, as
the recorded times were measured.

The runs execute in a clean detached ``git worktree`` of ``HEAD``, so what is recorded is a commit (the
provenance names it) and the checkout can be edited meanwhile; each finished run's files are copied into
this checkout's ``results/`` at once. Uncommitted changes to the code are therefore *not* recorded: the
command says so, and ``--check`` afterwards reports the result against the files on disk.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fer_nb.fingerprint import ROOT, notebook_source, staleness

RESULTS = ROOT / "results"
REAL_DATASETS_HINT = ("DATA_ROOT holds the real datasets in their published layout (FER+: "
                      "DATA_ROOT/ferplus/FER2013{Train,Valid,Test}/; the Datasets chapter gives every layout and "
                      "where to request each dataset)")

#: results files written by a benchmark script rather than a chapter: path -> (script module, notebook key)
BENCHMARK_RECORDINGS = {
    "margin_mix/baseline-wrn28_2-ferplus.json": ("benchmarks.ferplus_baseline", "margin_mix"),
    "datasets/synthfacs-vs-ferplus.json": ("benchmarks.synthfacs_vs_ferplus", "margin_mix"),
}


@dataclass
class Recording:
    """One recorded run under ``results/`` and how to make it again."""

    name: str                      # path under results/, e.g. "caf/small-synthfacs.json"
    kind: str                      # "notebook" or "benchmark"
    notebook: str                  # chapter key whose code the fingerprint covers
    recorded: dict                 # the loaded JSON
    extra_sources: list[Path] = field(default_factory=list)
    results: Path = RESULTS        # the results folder it lives in

    @property
    def path(self) -> Path:
        return self.results / self.name

    @property
    def dataset(self) -> str:
        return self.recorded["provenance"]["dataset"]

    @property
    def scale(self) -> str:
        return self.recorded["provenance"]["scale"]

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.recorded["provenance"]["seeds"]]

    @property
    def needs_data(self) -> bool:
        return self.dataset != "synthfacs"

    @property
    def last_seconds(self) -> float:
        """How long the last recording took (0 when unknown)."""
        rec = self.recorded
        summary = rec.get("summary") or {}
        for value in ((rec.get("recording") or {}).get("seconds"), rec.get("seconds"), summary.get("seconds"),
                      summary.get("wall_seconds")):
            if isinstance(value, (int, float)):
                return float(value)
        return 0.0

    def staleness(self) -> str | None:
        """Why this file was not made by the checkout's code, or ``None`` when it was."""
        return staleness(self.recorded, self.notebook, self.extra_sources)

    def command(self, work: Path, data_root: Path | None) -> list[str]:
        """The process that makes this recording, writing into ``work``."""
        if self.kind == "notebook":
            return [sys.executable, "-m", "fer_nb.record", "--execute-notebook", self.notebook, "--scale", self.scale,
                    "--seeds", ",".join(map(str, self.seeds)), "--dataset", self.dataset, "--work", str(work),
                    *(["--data-root", str(data_root)] if self.needs_data else [])]
        module, _ = BENCHMARK_RECORDINGS[self.name]
        out = str(work / Path(self.name).name)
        if module == "benchmarks.ferplus_baseline":
            hp = self.recorded["config"]["hp"]
            return [sys.executable, "-m", module, "--data-root", str(data_root), "--steps", str(hp["steps"]),
                    "--epochs", str(hp["epochs"]), "--batch-size", str(hp["batch_size"]), "--seed",
                    str(self.seeds[0]), "--threads", "1", "--device", "cpu", "--out-dir", str(work / "run"),
                    "--output", out]
        protocol = self.recorded["protocol"]
        return [sys.executable, "-m", module, "--data-root", str(data_root), "--budget", str(protocol["budget"]),
                "--steps", str(protocol["steps"]), "--seeds", str(len(protocol["seeds"])), "--threads", "1",
                "--output", out]

    def outputs(self, work: Path) -> list[tuple[Path, Path]]:
        """``(file the run wrote, where it goes under results/)`` pairs."""
        if self.kind == "benchmark":
            return [(work / Path(self.name).name, self.path)]
        pairs = [(work / "run" / "metrics.json", self.path)]
        stem = self.path.stem
        for fig in sorted(self.path.parent.glob(f"{stem}-*.png")):
            pairs.append((work / "run" / f"{fig.stem[len(stem) + 1:]}.png", fig))
        return pairs


def recordings(results: Path | None = None) -> list[Recording]:
    """Every recorded run under ``results/`` (files with a configuration; device benchmarks have none)."""
    results = RESULTS if results is None else results
    found = []
    for path in sorted(results.glob("*/*.json")):
        rec = json.loads(path.read_text())
        if "config" not in rec or "provenance" not in rec:
            continue    # a throughput measurement of one machine, not a run of the book's code
        name = path.relative_to(results).as_posix()
        notebook = rec["provenance"].get("notebook") or path.parent.name
        if name in BENCHMARK_RECORDINGS:
            module, notebook = BENCHMARK_RECORDINGS[name]
            script = ROOT / (module.replace(".", "/") + ".py")
            found.append(Recording(name, "benchmark", notebook, rec, [script], results))
        elif isinstance(rec.get("tables"), dict):
            found.append(Recording(name, "notebook", notebook, rec, [], results))
        else:
            raise ValueError(f"results/{name} has a configuration but no recipe in fer_nb/record.py: add it to "
                             "BENCHMARK_RECORDINGS (the script that writes it) or give it a 'tables' key")
    return found


def check(results: Path | None = None) -> list[tuple[str, str]]:
    """``(name, why)`` of each stale recording (empty when every one is current)."""
    return [(r.name, why) for r in recordings(results) if (why := r.staleness()) is not None]


def execute_notebook(notebook: str, scale: str, seeds: list[int], dataset: str, work: Path,
                     data_root: Path | None) -> None:
    """Run one chapter recording (the ``--execute-notebook`` child process, in the worktree).

    SIGTERM (the parent stopping) exits through papermill's clean-up, which shuts the kernel down."""
    from fer_nb.book import execute

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # papermill logs the cells' output at INFO

    params = {"SCALE": scale, "SEEDS": seeds, "DEVICE": "cpu", "OUT_DIR": str(work / "run")}
    if dataset != "synthfacs":
        params.update(DATASET=dataset, DATA_ROOT=str(data_root))
    source = notebook_source(notebook)
    if source is None:
        raise FileNotFoundError(f"no notebooks/NN_{notebook}.md in {ROOT}")
    execute(source, work, params, log_output=True)   # the cells' output and progress go to log.txt


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def _finish(rec: Recording, work: Path, seconds: float, commit: str) -> None:
    """Copy a finished run's files into ``results/``, with how long it took."""
    for src, dst in rec.outputs(work):
        if not src.exists():
            raise FileNotFoundError(f"{rec.name}: the run finished but wrote no {src.name} ({src})")
        if dst.suffix == ".json":
            payload = json.loads(src.read_text())
            payload["recording"] = {"seconds": round(seconds, 1), "threads": 1, "commit": commit,
                                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            dst.write_text(json.dumps(payload, indent=1) + "\n")
        else:
            shutil.copyfile(src, dst)


def run_all(chosen: list[Recording], jobs: int, data_root: Path | None, keep: bool = False) -> list[str]:
    """Re-record ``chosen`` from a worktree of HEAD, ``jobs`` at a time; the names that failed."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "fer_nb", "notebooks", "benchmarks")
    if dirty:
        print(f"[record] note: uncommitted changes to the code are not recorded; recording HEAD {commit[:12]}:\n"
              f"{dirty}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="fer_nb_record_"))
    tree = base / "src"
    _git("worktree", "add", "--detach", str(tree), commit)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FER_NB_PLAIN_PROGRESS": "1", "PYTHONHASHSEED": "0"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the cleanup below on `kill`
    queue = sorted(chosen, key=lambda r: -r.last_seconds)
    running: dict[str, tuple[subprocess.Popen, Recording, Path, float]] = {}
    failed: list[str] = []
    t_start = time.perf_counter()
    try:
        while queue or running:
            while queue and len(running) < jobs:
                rec = queue.pop(0)
                work = base / rec.name.replace("/", "__").removesuffix(".json")
                work.mkdir(parents=True)
                with open(work / "log.txt", "w") as log:   # the child keeps its own copy of the descriptor
                    proc = subprocess.Popen(rec.command(work, data_root), cwd=tree, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
                running[rec.name] = (proc, rec, work, time.perf_counter())
                est = f"last time {rec.last_seconds / 60:.0f} min" if rec.last_seconds else "no earlier time"
                # its progress: tail -f the log (the chapter's cells print there as they run)
                print(f"[record] {dt.datetime.now():%H:%M:%S} start {rec.name} ({est}); log {work / 'log.txt'}",
                      flush=True)
            time.sleep(2.0)
            for name, (proc, rec, work, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                seconds = time.perf_counter() - t0
                try:
                    if proc.returncode != 0:
                        raise RuntimeError(f"exit status {proc.returncode}")
                    _finish(rec, work, seconds, commit)
                    print(f"[record] {dt.datetime.now():%H:%M:%S} done  {name} in {seconds / 60:.1f} min", flush=True)
                except Exception as exc:  # noqa: BLE001 - the other recordings go on
                    failed.append(name)
                    tail = (work / "log.txt").read_text().strip().splitlines()[-15:]
                    print(f"[record] FAILED {name} ({exc}); end of {work / 'log.txt'}:\n  " + "\n  ".join(tail),
                          flush=True)
    finally:   # also on Ctrl-C and on SIGTERM: a stopped job must not leave kernels training
        for proc, *_ in running.values():   # each child shuts its kernel down on SIGTERM (execute_notebook)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, *_ in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        if not keep and not failed:
            shutil.rmtree(base, ignore_errors=True)
    print(f"[record] {len(chosen) - len(failed)} of {len(chosen)} recorded in "
          f"{(time.perf_counter() - t_start) / 60:.1f} min" + (f"; work files kept in {base}" if failed or keep else ""),
          flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="list current/stale recordings; exit 1 if one is stale")
    ap.add_argument("--all", action="store_true", help="re-record every recording, stale or not")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these recordings (path under results/, or a key)")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                    help="recordings at a time, each on one CPU thread (default: CPU count, at most 4)")
    ap.add_argument("--data-root", type=Path, default=None, help="real datasets, for recordings on them")
    ap.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    ap.add_argument("--keep", action="store_true", help="keep the executed notebooks and logs")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: results/)")
    for hidden in ("--execute-notebook", "--scale", "--seeds", "--dataset"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.execute_notebook:   # one chapter recording, in the child process
        execute_notebook(args.execute_notebook, args.scale, [int(s) for s in args.seeds.split(",")], args.dataset,
                         args.work, args.data_root)
        return 0
    every = recordings(args.results)
    stale = {r.name: r.staleness() for r in every}   # one fingerprint per recording, used below
    if args.check:
        for r in every:
            print(f"{'STALE  ' if stale[r.name] else 'current'} results/{r.name}"
                  + (f": {stale[r.name]}" if stale[r.name] else ""))
        n = sum(1 for why in stale.values() if why)
        print(f"{n} of {len(every)} recordings stale" + ("; re-record them with `make record`" if n else ""))
        return 1 if n else 0
    if args.only:
        unknown = [n for n in args.only if not any(r.name == n or r.name.startswith(n + "/") for r in every)]
        if unknown:
            raise SystemExit(f"no recording named {', '.join(unknown)}; known: {', '.join(r.name for r in every)}")
        chosen = [r for r in every if any(r.name == n or r.name.startswith(n + "/") for n in args.only)]
    else:
        chosen = every if args.all else [r for r in every if stale[r.name]]
    if not chosen:
        print("[record] every recording is current; nothing to do (--all re-records them anyway)")
        return 0
    needing = [r.name for r in chosen if r.needs_data]
    if needing and (args.data_root is None or not args.data_root.is_dir()):
        raise SystemExit(f"[record] {', '.join(needing)} run on real data: pass --data-root DATA_ROOT "
                         f"(got {args.data_root}). {REAL_DATASETS_HINT}. Or leave them out with --only.")
    total = sum(r.last_seconds for r in chosen)
    print(f"[record] {len(chosen)} recording(s), {args.jobs} at a time; their last recordings took "
          f"{total / 60:.0f} CPU-min in all:")
    for r in sorted(chosen, key=lambda r: -r.last_seconds):
        print(f"  results/{r.name}  ({r.last_seconds / 60:.0f} min)" + (f"  [{stale[r.name]}]" if stale[r.name] else ""))
    if args.dry_run:
        return 0
    failed = run_all(chosen, max(1, args.jobs), args.data_root, args.keep)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
