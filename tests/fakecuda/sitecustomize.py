"""Loaded by notebook kernels in the fake-CUDA tests (via PYTHONPATH): the whole kernel runs with
fake CUDA tensors (``tests/fake_cuda.py``), so ``DEVICE="cuda"`` works on a machine without a GPU and a
device slip in any cell fails as it would on a GPU. The network block of ``tests/netblock`` applies too."""
import os
import runpy
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
runpy.run_path(str(_TESTS / "netblock" / "sitecustomize.py"))
sys.path.insert(0, str(_TESTS))

import fake_cuda  # noqa: E402

# bf16 autocast off in whole chapters (no bf16 instructions on this CPU: ~5x slower); the bf16 paths are
# tested step by step (tests/test_device_discipline.py, tests/test_papers_*.py); FER_NB_FAKE_CUDA_BF16=1 turns it on
fake_cuda.enter_for_process(bf16=os.environ.get("FER_NB_FAKE_CUDA_BF16", "") not in ("", "0"))

# FER_NB_SYNC_REPORT=path: every fit() of the kernel records its per-step host syncs there (tests/test_notebooks.py)
if os.environ.get("FER_NB_SYNC_REPORT"):
    fake_cuda.record_fit_syncs(os.environ["FER_NB_SYNC_REPORT"])
