"""The README's set-up: `make` refuses to start installing .venv on a disk without room for it; the offline GPU check
(`make device-wheels` here, `bash benchmarks/gpu_session.sh` there) carries the tested versions and runs with them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_venv_set_up_names_the_fix_when_the_disk_is_too_full(tmp_path):
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(["make", "venv", "VENV_MIN_FREE_GB=1000000"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "needs about 1000000 GB free" in done.stderr and "free some space" in done.stderr, done.stderr
    assert not (tmp_path / ".venv").exists()   # refused before pip started


# ---- a GPU machine without internet: make device-wheels here, bash benchmarks/gpu_session.sh there ----

DEVICE_WHEELS = ROOT / "benchmarks" / "device_wheels.txt"
GPU_SESSION = ROOT / "benchmarks" / "gpu_session.sh"


def _pins(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return dict(ln.split("==") for ln in lines)


def test_device_wheels_are_the_versions_the_tested_stack_installs():
    """The wheels carried to a GPU machine are the ones `make test` runs with (and requirements.txt's pins)."""
    from importlib.metadata import version

    pins = _pins(DEVICE_WHEELS)
    assert len(pins) == 39 and {"papermill", "jupytext", "ipykernel", "umap-learn", "pytorch-metric-learning"} <= set(pins)
    assert {name: version(name) for name in pins} == pins
    required = {k: v for k, v in _pins(ROOT / "requirements.txt").items() if k in pins}
    assert required and all(pins[k] == v for k, v in required.items()), required
    assert "torch" not in pins and "torchvision" not in pins   # the GPU machine's own torch is used


def _scratch_repo(tmp_path: Path) -> Path:
    """A copy of the script beside a stand-in ``fer_nb.gpu_check`` that reports how it was started."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(GPU_SESSION, repo / "benchmarks" / "gpu_session.sh")
    (repo / "fer_nb").mkdir()
    (repo / "fer_nb" / "__init__.py").write_text("")
    (repo / "fer_nb" / "gpu_check.py").write_text(
        "import sys, carried_pkg\nprint('ARGS', sys.argv[1:], 'CARRIED', carried_pkg.VALUE)\n")
    return repo


def _wheel(folder: Path) -> None:
    """A minimal pure-Python wheel (``carried_pkg``), built without a network."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir(parents=True)
    files = {"carried_pkg/__init__.py": b"VALUE = 42\n",
             "carried_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: carried-pkg\nVersion: 1.0\n",
             "carried_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
                     for name, data in files.items()) + "carried_pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / "carried_pkg-1.0-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("carried_pkg-1.0.dist-info/RECORD", record)


def test_gpu_session_without_wheels_says_how_to_get_them(tmp_path):
    repo = _scratch_repo(tmp_path)
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "make device-wheels" in done.stderr and "copy .whl/" in done.stderr, done.stderr


def test_gpu_session_installs_the_carried_wheels_and_runs_the_gpu_check_with_them(tmp_path):
    import sys

    repo = _scratch_repo(tmp_path)
    _wheel(repo / ".whl")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "FER_NB_SITE": str(tmp_path / "site"),
           "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "5"], cwd=repo, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "carried_pkg" / "__init__.py").exists()
    assert f"ARGS ['--scales', 'smoke', 'gpu', '--budget-minutes', '5', '--results-dir', '{tmp_path / 'out'}'] CARRIED 42" \
        in done.stdout, done.stdout
