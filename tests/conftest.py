import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("FER_NB_PLAIN_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture
def dead_pid():
    """The pid of a process that has ended (for temp files of a killed writer)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tiny_cfg(tmp_path):
    from fer_nb import config

    return config.resolve("toolkit_tour", "smoke", device="cpu", out_dir=tmp_path / "run")


def pytest_collection_modifyitems(config, items):
    """The papermill runs of the chapters (minutes each) go first, so the two xdist workers share them and
    the unit tests fill the gaps, instead of one worker running a queue of chapters at the end."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("notebook") else 1)
