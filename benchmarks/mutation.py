"""Mutation score of the package's algorithms: mutmut over ``fer_nb/losses``, ``fer_nb/ssl``,
``fer_nb/io.py`` and the per-paper modules ``fer_nb/papers``, on a stratified random sample.

A mutant is a one-token change of the code (``<`` for ``<=``, ``0.0`` for ``1.0``, a string, a
dropped argument); it is *killed* when at least one of the tests that cover its function fails.
The score is the share killed, with the mutants that provably compute the same thing
("equivalent", listed with a reason in ``benchmarks/results/mutation/equivalent.yaml``) left out.

Why a sample: the four groups hold about 14,000 mutants and mutmut checks about one a second with
two workers on the 2-core CPU this book is developed on (the mutated package runs its tests about
3.7 times slower than the plain one), so a full run takes about four hours. A random sample of a
few hundred mutants per group estimates the score within a few points (the Wilson 95 % interval is
written beside it); mutant sampling is the standard way to cut this cost (Wong & Mathur 1995,
Zhang et al. ICSE 2013). The sample is proportional per source file (stratified), seeded, and its
mutant names are written to the result, so a run is reproducible and re-checkable by name.

Steps (each resumable; mutmut keeps its results in ``WORKDIR/mutants``)::

    pip install mutmut==3.8.1              # not a dependency of the book: only this benchmark uses it
    python -m benchmarks.mutation prepare  --workdir /tmp/mutall        # copy the tree, generate, map tests
    python -m benchmarks.mutation run      --workdir /tmp/mutall --sample losses=700,papers=700
    python -m benchmarks.mutation summary  --workdir /tmp/mutall --output benchmarks/results/mutation/sample.json
    python -m benchmarks.mutation verify   --workdir /tmp/mutall   # the tests of killed_after_run.yaml
    python -m benchmarks.mutation rerun    --workdir /tmp/mutall   # mutmut re-checks every survivor with the
                                                                   # tests as they are now (first pass kept)

``prepare`` copies the working tree (``fer_nb``, ``tests``, ``notebooks``, ``results``, ``book``) into
the work folder, so edits made meanwhile do not disturb the run; ``rerun`` copies ``tests`` again (from
``--tests-root``: a folder holding a ``tests/`` that still fits the copied code, when the repository's code
has moved on), keeps the first pass's verdicts in ``WORKDIR/first_pass`` and lets mutmut re-check every
sampled survivor with its covering tests; ``summary`` then reports both passes.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
EQUIVALENT = RESULTS / "equivalent.yaml"
#: tests written after the run: ``test id or test file -> [mutants it kills]``, checked by the ``verify`` step
VERIFIED = RESULTS / "killed_after_run.yaml"
#: where ``rerun`` keeps mutmut's verdicts of the first pass (inside the work folder)
FIRST_PASS = "first_pass"

#: group name -> path prefixes (relative to the repository) of the mutated files
GROUPS: dict[str, tuple[str, ...]] = {
    "losses": ("fer_nb/losses/",),
    "papers": ("fer_nb/papers/",),
    "ssl_io": ("fer_nb/ssl/", "fer_nb/io.py"),
}
ONLY_MUTATE = ("fer_nb/losses/", "fer_nb/ssl/", "fer_nb/io.py", "fer_nb/papers/")
#: the tests mutmut may run against a mutant (it runs, per mutant, those that cover its function).
#: Changing this list makes mutmut forget every result: add new tests to these files instead.
TESTS = (
    "tests/test_losses_angular.py", "tests/test_losses_caf.py", "tests/test_losses_center_island_lm.py",
    "tests/test_losses_contrastive_softmax.py", "tests/test_losses_course.py", "tests/test_losses_margin_mix.py",
    "tests/test_losses_robustness.py", "tests/test_losses_tuple.py", "tests/test_grl.py", "tests/test_ssl.py",
    "tests/test_ssl_pins.py", "tests/test_ssl_mutation_pins.py", "tests/test_papers_caf.py",
    "tests/test_papers_large_margin.py", "tests/test_papers_margin_mix.py", "tests/test_papers_nm_tuple.py",
    "tests/test_papers_udat_as.py", "tests/test_report_io.py", "tests/test_io_pins.py",
    "tests/test_train.py", "tests/test_reliability.py", "tests/test_device_discipline.py",
)
#: tests that read the package's source text, which mutmut's trampoline rewrites (not a property of the code)
DESELECT = ("tests/test_losses_robustness.py::test_show_source_compute_needs_no_offsets",)
#: functions that only draw figures or write the chapters' prose and timings; the chapters' smoke
#: runs execute them, but no unit test compares their output, so they are reported apart
PRESENTATION = ("plot_", "summary_and_verdicts", "paper_claims", "ordering_summary", "timing")
COPIED = ("fer_nb", "tests", "notebooks", "results", "pyproject.toml", "book")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def setup_cfg() -> str:
    """mutmut's configuration for the work folder."""
    lines = ["[mutmut]", "source_paths=fer_nb", "only_mutate="]
    lines += [f"    {p}*" if p.endswith("/") else f"    {p}" for p in ONLY_MUTATE]
    lines += ["pytest_add_cli_args_test_selection="] + [f"    {t}" for t in TESTS]
    lines += ["pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -p", "    no:xdist", "    -q",
              "    -m", "    not notebook"]
    for d in DESELECT:
        lines += ["    --deselect", f"    {d}"]
    lines += ["process_isolation=forkserver", "mutate_only_covered_lines=false", "also_copy="]
    lines += [f"    {c}" for c in COPIED if c not in ("fer_nb", "tests")]
    return "\n".join(lines) + "\n"


def group_of(path: str) -> str | None:
    """The group of a repository-relative source path (``None`` when it is not mutated)."""
    for group, prefixes in GROUPS.items():
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes):
            return group
    return None


def module_of(mutant: str) -> str:
    """``fer_nb.losses.npair.xǁNPairLossǁforward__mutmut_4`` -> ``fer_nb.losses.npair``."""
    return ".".join(p for p in mutant.split("__mutmut_")[0].split(".") if not p.startswith("x"))


def function_of(mutant: str) -> str:
    """``fer_nb.papers.caf.x_plot_trace__mutmut_3`` -> ``plot_trace``;
    ``...xǁCAFStepsǁtrain_step__mutmut_1`` -> ``CAFSteps.train_step``."""
    last = mutant.split("__mutmut_")[0].split(".")[-1]
    return last[2:] if last.startswith("x_") else ".".join(last.split("ǁ")[1:])


def is_presentation(mutant: str) -> bool:
    return module_of(mutant).startswith("fer_nb.papers.") and function_of(mutant).startswith(PRESENTATION)


def stratified_sample(population: Mapping[str, Sequence[str]], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` names drawn without replacement, allocated to the strata (source files) in proportion to
    their sizes by largest remainders, then drawn uniformly inside each stratum (strata in sorted
    order, from ``rng``). All names, and no draw, when ``n`` covers the population."""
    total = sum(len(v) for v in population.values())
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n >= total:
        return [m for k in sorted(population) for m in population[k]]
    quotas = {k: n * len(population[k]) / total for k in sorted(population)}
    alloc = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: -(quotas[k] - alloc[k]))[: n - sum(alloc.values())]:
        alloc[k] += 1
    picked: list[str] = []
    for k in sorted(population):
        picked += sorted(rng.choice(sorted(population[k]), size=alloc[k], replace=False).tolist())
    return picked


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95 % by default); ``(0, 1)`` when ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_results(workdir: Path) -> dict[str, dict[str, int | None]]:
    """``{source path: {mutant: exit code or None}}`` from mutmut's ``.meta`` files."""
    out = {}
    for meta in sorted((workdir / "mutants" / "fer_nb").rglob("*.py.meta")):
        rel = meta.relative_to(workdir / "mutants").as_posix()[: -len(".meta")]
        if group_of(rel):
            out[rel] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def status(code: int | None) -> str:
    return STATUS.get(code, "suspicious")


def score(statuses: Iterable[str], equivalent: int = 0) -> dict:
    """Counts of a list of statuses and the killed share with ``equivalent`` survivors left out."""
    c = collections.Counter(statuses)
    checked = sum(v for k, v in c.items() if k != "not checked")
    killable = checked - equivalent
    lo, hi = wilson(c["killed"], killable)
    return {"mutants": sum(c.values()), "checked": checked, **{k: c[k] for k in sorted(c)},
            "equivalent": equivalent, "score": round(c["killed"] / killable, 4) if killable else None,
            "wilson95": [round(lo, 4), round(hi, 4)]}


def summarise(results: Mapping[str, Mapping[str, int | None]], sample: Mapping[str, Sequence[str]],
              equivalent: Mapping[str, str], killed_after: Iterable[str] = ()) -> dict:
    """Per group, per module and (for the papers) training vs presentation: counts and scores of the
    sampled mutants; equivalent mutants (name -> reason) are left out of the score; a mutant named
    equivalent that did not survive is an error (the list is stale)."""
    codes = {m: c for per_file in results.values() for m, c in per_file.items()}
    codes |= {m: 1 for m in killed_after if m in codes}       # killed by a test written after the run
    wrong = sorted(m for m in equivalent if m in codes and status(codes[m]) == "killed")
    if wrong:
        raise ValueError(f"mutants listed as equivalent were killed (stale {EQUIVALENT.name}?): {wrong[:5]}")
    def n_equivalent(names):     # equivalent mutants among the checked ones (an unchecked one is in no count)
        return sum(1 for m in names if m in equivalent and status(codes.get(m)) != "not checked")

    out = {"groups": {}, "modules": {}}
    everything: list[str] = []
    for group, names in sample.items():
        st = [status(codes.get(m)) for m in names]
        out["groups"][group] = score(st, n_equivalent(names))
        everything += names
    out["overall"] = score([status(codes.get(m)) for m in everything], n_equivalent(everything))
    papers = sample.get("papers", [])
    for label, keep in (("training", False), ("presentation", True)):
        names = [m for m in papers if is_presentation(m) == keep]
        out["groups"][f"papers ({label})"] = score([status(codes.get(m)) for m in names],
                                                    n_equivalent(names))
    by_module = collections.defaultdict(list)
    for m in everything:
        by_module[module_of(m)].append(m)
    for mod, names in sorted(by_module.items()):
        out["modules"][mod] = score([status(codes.get(m)) for m in names], n_equivalent(names))
    out["survivors"] = sorted(m for m in everything if status(codes.get(m)) in ("survived", "no tests", "timeout",
                                                                                  "suspicious")
                              and m not in equivalent)
    return out


def load_verified(path: Path = VERIFIED) -> dict[str, list[str]]:
    """``{test id: [mutants]}`` of the tests written after the run (empty when there is no file)."""
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


#: run in a child interpreter inside ``WORKDIR/mutants``: each test of the JSON job list on stdin
#: once with no mutant, then once per mutant (``-x``), switching mutants with mutmut's own variable
#: ``MUTANT_UNDER_TEST``, which the mutated package reads on every call; prints the verdicts as JSON
_VERIFY_DRIVER = r"""
import contextlib, io, json, os, sys
import pytest
jobs = json.loads(sys.stdin.read())

def fails(test, mutant):
    os.environ.pop("MUTANT_UNDER_TEST", None)
    if mutant:
        os.environ["MUTANT_UNDER_TEST"] = mutant
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return int(pytest.main(test.split() + ["-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist"])) != 0

out = {"killed": [], "not_killed": [], "broken_tests": []}
for test, mutants in jobs:
    if fails(test, None):
        out["broken_tests"].append(test)
        continue
    for m in mutants:
        out["killed" if fails(test, m) else "not_killed"].append(m)
print("VERIFY-RESULT " + json.dumps(out))
"""


def verify(workdir: Path, verified: Mapping[str, Sequence[str]], workers: int = 2,
           tests_root: Path = ROOT) -> dict[str, list[str]]:
    """Run each test of ``verified`` (a test id ``tests/x.py::test_y``, a whole file ``tests/x.py``, or
    several files separated by spaces, under ``tests_root``: this repository, or ``workdir/mutants``
    when the repository's tests have since moved on with its code) against the mutated package in ``workdir/mutants``: once with no mutant (it
    must pass) and once per listed mutant (it must fail). ``workers`` child interpreters share the
    tests. Returns ``{"killed": [...], "not_killed": [...], "broken_tests": [...]}``."""
    import mutmut
    from concurrent.futures import ThreadPoolExecutor

    path = os.pathsep.join([str(Path(mutmut.__file__).resolve().parents[1]), str(workdir / "mutants")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    env.pop("MUTANT_UNDER_TEST", None)
    jobs = [[" ".join(str(tests_root / t) for t in test.split()), list(mutants)] for test, mutants in verified.items()]
    shares = [jobs[i::workers] for i in range(workers)]

    def child(share):
        done = subprocess.run([sys.executable, "-c", _VERIFY_DRIVER], cwd=workdir / "mutants", env=env,
                              input=json.dumps(share), capture_output=True, text=True)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("VERIFY-RESULT ")), None)
        if line is None:
            raise RuntimeError(f"verify child failed: {done.stderr[-2000:]}")
        return json.loads(line[len("VERIFY-RESULT "):])

    out: dict[str, list[str]] = {"killed": [], "not_killed": [], "broken_tests": []}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(child, [sh for sh in shares if sh]):
            for key in out:
                out[key] += part[key]
    out["broken_tests"] = [" ".join(str(Path(t).relative_to(tests_root)) for t in b.split()) for b in out["broken_tests"]]
    return out


def load_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {m: reason for reason, names in data.items() for m in names}


def _mutmut(workdir: Path, *args: str, workers: int | None = None) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mutmut", "run"] + ([f"--max-children={workers}"] if workers else []) + list(args)
    return subprocess.call(cmd, cwd=workdir, env=env)


def _require_mutmut() -> None:
    try:
        import mutmut  # noqa: F401
    except ImportError:
        sys.exit("benchmarks.mutation needs mutmut, which the book itself does not: pip install mutmut==3.8.1")


def prepare(workdir: Path) -> None:
    """Copy the tree into ``workdir``, write ``setup.cfg``, let mutmut generate the mutants and map
    each function to the tests that cover it (one full run of :data:`TESTS` under its tracer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = ROOT / name, workdir / name
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    (workdir / "setup.cfg").write_text(setup_cfg())
    # a filter that matches nothing: mutmut generates, collects the test map, then stops with an error
    _mutmut(workdir, "benchmarks-mutation-prepare-only*")
    if not (workdir / "mutants" / "mutmut-stats.json").is_file():
        sys.exit("mutmut did not map the tests (see its output above): the selected tests must pass unmutated")


def draw(workdir: Path, sizes: Mapping[str, int], seed: int,
         subsizes: Mapping[str, int] | None = None) -> dict[str, list[str]]:
    """The sample of every group: one generator seeded with ``seed``, groups in :data:`GROUPS` order.

    ``subsizes`` (a second stage): a stratified random subsample of that sample (per source file,
    generator seeded with ``seed + 1``), for a run that must be cut. It is drawn from the first
    sample alone, not from which mutants were already checked (mutmut checks the fast ones first), so
    it stays a random sample of the population."""
    results = read_results(workdir)
    rng = np.random.default_rng(seed)
    sample = {}
    for group in GROUPS:
        population = {f: sorted(ms) for f, ms in results.items() if group_of(f) == group and ms}
        total = sum(len(v) for v in population.values())
        sample[group] = stratified_sample(population, sizes.get(group, total), rng)
    if subsizes:
        rng2 = np.random.default_rng(seed + 1)
        file_of = {name: f for f, ms in results.items() for name in ms}
        for group in GROUPS:
            if group in subsizes:
                by_file = collections.defaultdict(list)
                for name in sample[group]:
                    by_file[file_of[name]].append(name)
                sample[group] = stratified_sample(dict(by_file), subsizes[group], rng2)
    return sample


def parse_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for part in filter(None, text.split(",")):
        group, _, n = part.partition("=")
        if group not in GROUPS or not n.isdigit():
            raise ValueError(f"--sample takes GROUP=N,... with GROUP in {sorted(GROUPS)}, got {part!r}")
        sizes[group] = int(n)
    return sizes


def main(argv: Sequence[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["prepare", "run", "summary", "rerun", "verify"])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--sample", default="losses=700,papers=700", help="GROUP=N,...; a group not named is taken whole")
    ap.add_argument("--subsample", default="", help="GROUP=N,...: second-stage sizes (see draw)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", type=Path, default=RESULTS / "sample.json")
    ap.add_argument("--tests-root", type=Path, default=ROOT,
                    help="verify and rerun: the folder holding the tests/ to use (default: this repository; "
                         "another folder when the repository's code has changed since prepare)")
    args = ap.parse_args(argv)
    plan = args.workdir / "sample.json"
    if args.step == "prepare":
        _require_mutmut()
        prepare(args.workdir)
        return None
    if args.step == "run":
        _require_mutmut()
        sample = draw(args.workdir, parse_sizes(args.sample), args.seed, parse_sizes(args.subsample))
        plan.write_text(json.dumps({"seed": args.seed, "sizes": args.sample, "subsample": args.subsample,
                                    "sample": sample}, indent=1))
        t0 = time.time()
        _mutmut(args.workdir, *[m for ms in sample.values() for m in ms], workers=args.workers)
        (args.workdir / "run_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
        return None
    if args.step == "rerun":
        _require_mutmut()
        first = args.workdir / FIRST_PASS
        if not first.exists():      # keep the first pass's verdicts: the re-run overwrites mutmut's files
            src = args.workdir / "mutants"
            for meta in (src / "fer_nb").rglob("*.py.meta"):
                dst = first / "mutants" / meta.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(meta, dst)
        for dst in (args.workdir / "tests", args.workdir / "mutants" / "tests"):
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(args.tests_root.resolve() / "tests", dst)
        sample = json.loads(plan.read_text())["sample"]
        survivors = summarise(read_results(args.workdir), sample, load_equivalent())["survivors"]
        t0 = time.time()
        _mutmut(args.workdir, *survivors, workers=args.workers)
        (args.workdir / "rerun_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
        return None
    if args.step == "verify":
        _require_mutmut()
        t0 = time.time()
        checked = verify(args.workdir, load_verified(), args.workers, args.tests_root.resolve())
        checked["seconds"] = round(time.time() - t0)
        (args.workdir / "verified.json").write_text(json.dumps(checked, indent=1))
        print({k: len(v) if isinstance(v, list) else v for k, v in checked.items()})
        return checked
    saved = json.loads(plan.read_text())
    results, equivalent = read_results(args.workdir), load_equivalent()
    payload = {"tool": "mutmut 3.8.1", "date": time.strftime("%Y-%m-%d"), "seed": saved["seed"],
               "sample_sizes": saved["sizes"],
               "subsample_sizes": saved.get("subsample", ""),
               "population": {g: sum(len(ms) for f, ms in results.items() if group_of(f) == g) for g in GROUPS},
               "tests": list(TESTS), "deselected": list(DESELECT), "presentation_functions": list(PRESENTATION)}
    checked_path = args.workdir / "verified.json"
    checked = json.loads(checked_path.read_text()) if checked_path.is_file() else {}
    after = checked.get("killed", [])
    if (args.workdir / FIRST_PASS).is_dir():
        first = summarise(read_results(args.workdir / FIRST_PASS), saved["sample"], equivalent)
        payload["first_pass"] = {"overall": first["overall"], "groups": first["groups"]}
    at_run = summarise(results, saved["sample"], equivalent)
    payload["at_run"] = {"overall": at_run["overall"], "groups": at_run["groups"]}
    how = checked.get("source") or (
        "tests written after the run, each run with the mutant switched on (python -m benchmarks.mutation "
        "verify); see killed_after_run.yaml" if after else
        "none: every verdict is mutmut's own (the rerun step re-checked every survivor with the tests as they are)")
    payload["killed_after_run"] = {"count": len(after), "how": how}
    payload |= summarise(results, saved["sample"], equivalent, after)
    payload["sample"] = saved["sample"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({"overall": payload["overall"], "groups": payload["groups"]}, indent=1))
    return payload


if __name__ == "__main__":
    main()
