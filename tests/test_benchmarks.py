"""The loss benchmark compares equal numbers: every loop reference gives the vectorised loss's value."""
import torch

from benchmarks import loss_loops


def test_every_loop_reference_matches_its_vectorised_loss():
    rows = loss_loops.run(torch.device("cpu"), batch=48, dim=24, quick=True)   # raises on any mismatch
    assert [r["loss"] for r in rows] == list(loss_loops.CASES)
    assert all(r["vectorised_ms"] > 0 and r["loop_ms"] > 0 for r in rows)
