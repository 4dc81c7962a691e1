"""The README's set-up: ``make`` refuses to start installing .venv on a disk without room for it."""
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
