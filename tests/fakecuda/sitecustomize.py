"""Loaded by notebook kernels in the fake-CUDA tests (via PYTHONPATH): the whole kernel runs with
fake CUDA tensors (``tests/fake_cuda.py``), so ``DEVICE="cuda"`` works on a machine without a GPU and a
device slip in any cell fails as it would on a GPU. The network block of ``tests/netblock`` applies too."""
import runpy
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
runpy.run_path(str(_TESTS / "netblock" / "sitecustomize.py"))
sys.path.insert(0, str(_TESTS))

import fake_cuda  # noqa: E402

fake_cuda.enter_for_process()
