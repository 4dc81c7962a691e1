"""The loss benchmark compares equal numbers: every loop reference gives the vectorised loss's value."""
import torch

from benchmarks import loss_loops


def test_every_loop_reference_matches_its_vectorised_loss():
    rows = loss_loops.run(torch.device("cpu"), batch=48, dim=24, quick=True)   # raises on any mismatch
    assert [r["loss"] for r in rows] == list(loss_loops.CASES)
    assert all(r["vectorised_ms"] > 0 and r["loop_ms"] > 0 for r in rows)


def test_each_chapter_step_runs_in_the_benchmark():
    """The benchmark times the chapters' own steps (fer_nb.papers), not only its copies of them."""
    from benchmarks.steps import STEPS

    with_chapter = [s for s in STEPS if s.build_chapter is not None]
    assert {s.paper for s in with_chapter} == {"large_margin", "nm_tuple", "caf", "udat_as", "margin_mix"}
    for spec in with_chapter:
        size = min(spec.image_size, 64)
        step, images = spec.build_chapter(torch.device("cpu"), 4, size)
        logs = step()
        assert images >= 4
        if isinstance(logs, dict):
            assert all(torch.isfinite(v).all() for v in logs.values()), spec.paper
