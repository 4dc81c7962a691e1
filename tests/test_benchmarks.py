"""The loss benchmark compares equal numbers: every loop reference gives the vectorised loss's value."""
import pytest
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


def test_launch_bound_chapter_steps_are_also_timed_compiled(monkeypatch):
    """``--compile`` times the Margin-Mix and (N+M) chapter steps with their network through
    ``benchmarks.steps.compiled`` (here an identity that records its calls, or a failure: recorded in the
    row, and the benchmark goes on). The compiled networks' numbers are tested in test_compiled_steps.py."""
    from benchmarks import run, steps

    calls = []

    def fake_compiled(model, device):
        calls.append(type(model).__name__)
        if type(model).__name__ == "InceptionFER":
            raise RuntimeError("no compiler here\nsecond line")
        return model

    monkeypatch.setattr(steps, "compiled", fake_compiled)
    assert {s.paper for s in steps.STEPS if s.compilable} == {"margin_mix", "nm_tuple"}
    rows = {r["paper"]: r for r in run.bench_steps(torch.device("cpu"), True, ["nm_tuple", "margin_mix"],
                                                    compile=True)}
    assert calls == ["InceptionFER", "WideResNet"]
    mm, nm = rows["margin_mix"], rows["nm_tuple"]
    assert mm["chapter_compiled_img_s"] > 0 and mm["chapter_compile_s"] > 0
    assert mm["ratio_chapter_compiled_over_fast"] == mm["chapter_compiled_img_s"] / mm["fast_img_s"]
    assert nm["chapter_compiled_error"] == "RuntimeError: no compiler here" and "chapter_compiled_img_s" not in nm
    assert nm["chapter_img_s"] > 0                         # the eager chapter step was still timed

    class Stop(Exception):
        pass

    def capture(device, quick, only, compile=False):
        seen.append(compile)
        raise Stop

    seen = []
    monkeypatch.setattr(run, "bench_steps", capture)
    for argv in (["--device", "cpu"], ["--device", "cpu", "--compile"]):
        with pytest.raises(Stop):
            run.main(argv)
    assert seen == [False, True]                           # off on a CPU unless asked (on by default on CUDA)


def test_time_per_launch_divides_each_measured_step_by_its_counted_launches(tmp_path):
    """``make bench`` joins its step times with benchmarks/kernel_launches.json: ms per step / launches."""
    import json

    from benchmarks import run

    counts = {"steps": {"margin_mix": {"fast": {"launches": 500}, "chapter": {"launches": 700},
                                       "chapter_compiled": {"launches": 300}},
                        "caf": {"fast": {"launches": 550}, "chapter": {"launches": 560}}}}
    (tmp_path / "launches.json").write_text(json.dumps(counts))
    rows = [{"paper": "margin_mix", "fast_ms_per_step": 15.0, "chapter_ms_per_step": 21.0,
             "chapter_compiled_ms_per_step": 12.0},
            {"paper": "caf", "fast_ms_per_step": 5.5},            # no chapter timing in this row
            {"paper": "udat_as", "fast_ms_per_step": 40.0}]       # not in the file
    run.add_time_per_launch(rows, tmp_path / "launches.json")
    assert rows[0]["fast_us_per_launch"] == pytest.approx(30.0)
    assert rows[0]["chapter_us_per_launch"] == pytest.approx(30.0)
    assert rows[0]["chapter_compiled_us_per_launch"] == pytest.approx(40.0)
    assert rows[0]["chapter_compiled_launches"] == 300
    assert rows[1]["fast_us_per_launch"] == pytest.approx(10.0) and "chapter_us_per_launch" not in rows[1]
    assert not any(k.endswith("_us_per_launch") for k in rows[2])
    run.add_time_per_launch(rows, tmp_path / "missing.json")   # no file (a checkout without it): nothing added


def test_the_benchmark_reads_the_recorded_launch_counts():
    from benchmarks import run
    from benchmarks.steps import STEPS

    rows = [{"paper": s.paper, "fast_ms_per_step": 1.0, "chapter_ms_per_step": 1.0} for s in STEPS]
    run.add_time_per_launch(rows)
    assert all(r["fast_us_per_launch"] > 0 and r["chapter_us_per_launch"] > 0 for r in rows)
