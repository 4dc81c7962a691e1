"""Every notebook under notebooks/ runs under papermill at smoke scale, with the network blocked,
and writes a metrics.json of finite numbers with provenance (discovered: a new notebook is tested)."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fer_nb.book import execute, key_of, notebook_sources

NETBLOCK = Path(__file__).parent / "netblock"
FAKE_CUDA = Path(__file__).parent / "fakecuda"   # netblock + fake CUDA tensors in the kernel
NOTEBOOKS = notebook_sources()


def test_notebooks_are_discovered():
    assert len(NOTEBOOKS) >= 1
    for src in NOTEBOOKS:
        text = src.read_text()
        assert "name: python3" in text, f"{src.name}: kernelspec must be python3"
        assert "tags: [parameters]" in text, f"{src.name}: needs a parameters cell"
        if key_of(src) not in ("toolkit_tour", "datasets", "loss_geometry"):
            assert "Deviations from the paper" in text, f"{src.name}: needs the deviations box"


def test_network_is_blocked_in_kernels():
    env = dict(os.environ, PYTHONPATH=str(NETBLOCK))
    code = "import socket\ntry:\n socket.create_connection(('93.184.216.34', 80), timeout=2)\nexcept OSError as e:\n print('blocked' if 'blocked' in str(e) else 'other')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "blocked"


def _smoke(src: Path, tmp_path: Path, monkeypatch, device: str, site: Path) -> float:
    """Run ``src`` at smoke on ``device`` with ``site`` (a sitecustomize folder) first on the kernel's path;
    check its metrics.json; return the wall time."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FER_NB_PLAIN_PROGRESS", "1")
    out_dir = tmp_path / "run"
    t0 = time.perf_counter()
    execute(src, tmp_path, {"SCALE": "smoke", "DEVICE": device, "OUT_DIR": str(out_dir)})
    seconds = time.perf_counter() - t0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    prov = metrics["provenance"]
    assert prov["scale"] == "smoke" and prov["notebook"] == key_of(src)
    assert prov["device_type"] == device
    assert metrics["summary"], "summary must not be empty"

    def finite(obj):
        if isinstance(obj, float):
            assert math.isfinite(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                finite(v)
        elif isinstance(obj, list):
            for v in obj:
                finite(v)

    finite(metrics)
    return seconds


@pytest.mark.notebook
@pytest.mark.parametrize("src", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(src, tmp_path, monkeypatch):
    seconds = _smoke(src, tmp_path, monkeypatch, "cpu", NETBLOCK)
    print(f"{src.name}: {seconds:.0f} s")


#: The host-device synchronisations that each chapter's training loop still makes in every step on CUDA,
#: as ``file: code`` (``benchmarks/host_syncs.json``; the performance page shows it). Recorded on fake CUDA
#: (``tests/fake_cuda.py::host_syncs``); a sync that appears or disappears fails ``test_notebook_on_fake_cuda``:
#: remove a site from the file when it is fixed, and never add one without a reason.
HOST_SYNCS = Path(__file__).resolve().parent.parent / "benchmarks" / "host_syncs.json"
PER_STEP_HOST_SYNCS = {k: set(v) for k, v in json.loads(HOST_SYNCS.read_text()).items() if not k.startswith("_")}
#: chapters whose training runs compile the network on CUDA (``fer_nb.compiled``, preset ``compile_network: auto``:
#: the launch-bound WRN at 32 px and Inception net at 48 px); fake CUDA records the request and runs eager
COMPILED_ON_CUDA = {"margin_mix", "nm_tuple"}


def per_step_syncs(report: Path) -> tuple[set[str], list[str]]:
    """The sync sites hit at least once per step by some training run of ``report``, and a printable
    inventory of every run (sites hit less often, such as a snapshot every k steps, are listed, not pinned)."""
    every_step, lines = set(), []
    for run in json.loads(report.read_text()) if report.exists() else []:
        lines.append(f"{run['desc']}: {run['steps']} steps")
        for kind in ("step_syncs", "batch_syncs"):
            for site, count in sorted(run[kind].items()):
                lines.append(f"   {kind[:-6]:5s} {count / max(run['steps'], 1):5.2f}/step  {site}")
                if run["steps"] and count >= run["steps"]:
                    every_step.add(site)
    return every_step, lines


@pytest.mark.notebook
@pytest.mark.parametrize("src", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_on_fake_cuda(src, tmp_path, monkeypatch):
    """The whole chapter with DEVICE="cuda" on fake CUDA tensors (tests/fake_cuda.py): a tensor made on the
    CPU beside CUDA inputs, a CPU generator fed to a CUDA op or ``.numpy()`` of a CUDA tensor fails here as on
    a GPU. (bf16 autocast is off here for speed; each training step's bf16 path has its own unit test.)
    Every training run records its per-step host syncs; they must be exactly the chapter's entry of
    :data:`HOST_SYNCS`. (Drawing the batches makes none in any chapter: the data lives on the device.)"""
    report = tmp_path / "host_syncs.json"
    monkeypatch.setenv("FER_NB_SYNC_REPORT", str(report))
    seconds = _smoke(src, tmp_path, monkeypatch, "cuda", FAKE_CUDA)
    print(f"{src.name} on fake CUDA: {seconds:.0f} s")
    every_step, lines = per_step_syncs(report)
    assert key_of(src) in PER_STEP_HOST_SYNCS, f"add {key_of(src)!r} (its per-step host syncs) to {HOST_SYNCS}"
    expected = PER_STEP_HOST_SYNCS[key_of(src)]
    assert every_step == expected, (
        f"per-step host syncs changed: new {sorted(every_step - expected)}, gone {sorted(expected - every_step)}\n"
        + "\n".join(lines))
    runs = json.loads(report.read_text()) if report.exists() else []
    asked = {(run["desc"], cls, mode) for run in runs for cls, mode in run["compiled"]}
    if key_of(src) in COMPILED_ON_CUDA:   # every training run of the chapter trains a network compiled for CUDA graphs
        assert runs and all(run["compiled"] for run in runs), [(r["desc"], r["compiled"]) for r in runs]
        assert {mode for *_, mode in asked} == {"reduce-overhead"}, asked
    else:
        assert not asked, f"{key_of(src)} compiles a network; add it to COMPILED_ON_CUDA: {sorted(asked)}"


DETERMINISM = [p for p in NOTEBOOKS if key_of(p) in ("large_margin", "caf")]


@pytest.mark.notebook
@pytest.mark.parametrize("src", DETERMINISM, ids=[p.stem for p in DETERMINISM])
def test_same_seed_same_metrics_on_cpu(src, tmp_path, monkeypatch):
    """Two runs of a notebook's training path with the same seed and scale give identical tables."""
    monkeypatch.setenv("FER_NB_PLAIN_PROGRESS", "1")
    tables = []
    for run in ("a", "b"):
        out_dir = tmp_path / run
        execute(src, tmp_path / f"nb_{run}", {"SCALE": "smoke", "DEVICE": "cpu", "OUT_DIR": str(out_dir)})
        m = json.loads((out_dir / "metrics.json").read_text())
        timing = ("second", "time", "_ms", "img_s", "per_s")
        summary = {k: v for k, v in m["summary"].items() if not any(t in k for t in timing)}
        tables.append((m["tables"], summary))
    assert any(isinstance(v, float) for v in tables[0][1].values()), "nothing numeric to compare"
    assert tables[0] == tables[1]


@pytest.mark.notebook
@pytest.mark.parametrize("page", ["scoreboard.md", "performance.md"])
def test_computed_book_pages_execute(page, tmp_path, monkeypatch):
    """The book's computed pages (scoreboard, performance) run on whatever results/ and benchmarks/results/
    hold, so make book cannot stop on a record of another shape."""
    from fer_nb.book import BOOK, BOOK_PAGES

    assert page in BOOK_PAGES
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NETBLOCK), os.environ.get("PYTHONPATH", "")]))
    execute(BOOK / page, tmp_path, {})
