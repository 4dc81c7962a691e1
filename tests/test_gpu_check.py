"""``make gpu-check`` on a machine without a GPU says so; its summary table and error lines are right."""
import torch

from fer_nb import gpu_check


def test_gpu_check_needs_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--no-bench"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_summary_and_error_line():
    err = RuntimeError("----\nTraceback ...\nRuntimeError: Expected all tensors to be on the same device\n----")
    assert gpu_check._last_error_line(err) == "RuntimeError: Expected all tensors to be on the same device"
    rows = [{"notebook": "30_caf", "scale": "smoke", "status": "ok", "seconds": 12.0, "error": ""},
            {"notebook": "40_udat_as", "scale": "gpu", "status": "FAILED", "seconds": 3.5, "error": "boom"}]
    table = gpu_check.summary_table(rows, ("ok", ""))
    assert "| 30_caf | smoke | ok | 12.0 |" in table
    assert "| 40_udat_as | gpu | FAILED: boom | 3.5 |" in table
    assert table.splitlines()[-1].startswith("| make bench | full | ok")


def test_plan_puts_smoke_then_bench_then_larger_scales():
    steps = gpu_check.plan(["smoke", "gpu"], ["caf", "margin_mix"], bench=True)
    assert [(scale, src.stem if src else None) for scale, src in steps] == [
        ("smoke", "30_caf"), ("smoke", "50_margin_mix"), ("bench", None), ("gpu", "30_caf"), ("gpu", "50_margin_mix")]
    assert [s for s, _ in gpu_check.plan(["gpu"], ["caf"], bench=False)] == ["gpu"]


def test_budget_stops_new_steps_and_each_step_is_recorded_at_once(monkeypatch, tmp_path):
    """With a budget, nothing starts after it runs out (listed as skipped); the record is rewritten after
    every step, in --results-dir, so a run killed from outside keeps what it measured."""
    import json

    from fer_nb import device as device_mod

    now = [0.0]
    ran, seen_records = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_mod, "describe", lambda d: "NVIDIA Test GPU")
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: now[0])

    def fake_notebook(src, scale, out_root):
        ran.append((scale, src.stem))
        now[0] += 100.0                                  # every notebook takes 100 s
        return {"notebook": src.stem, "scale": scale, "status": "FAILED" if src.stem == "30_caf" else "ok",
                "seconds": 100.0, "error": "boom" if src.stem == "30_caf" else ""}

    def fake_bench(only, results_dir):
        ran.append(("bench", str(results_dir)))
        now[0] += 50.0
        return "ok", ""

    from fer_nb import io

    real_save = io.save_json

    def spy_save(obj, path):
        seen_records.append((len(obj["notebooks"]), obj["bench"]["status"]))
        return real_save(obj, path)

    monkeypatch.setattr(gpu_check, "run_notebook", fake_notebook)
    monkeypatch.setattr(gpu_check, "run_bench", fake_bench)
    monkeypatch.setattr(io, "save_json", spy_save)
    code = gpu_check.main(["--only", "caf", "margin_mix", "--budget-minutes", "4", "--results-dir", str(tmp_path),
                           "--out", str(tmp_path / "nb")])
    # 0 s caf smoke, 100 s margin_mix smoke, 200 s bench, 250 s > 240 s: both gpu-scale runs are skipped
    assert ran == [("smoke", "30_caf"), ("smoke", "50_margin_mix"), ("bench", str(tmp_path))]
    assert code == 1                                      # caf failed
    rec = json.loads((tmp_path / "gpu_check" / "nvidia-test-gpu.json").read_text())
    assert [(r["notebook"], r["scale"], r["status"]) for r in rec["notebooks"]] == [
        ("30_caf", "smoke", "FAILED"), ("50_margin_mix", "smoke", "ok"),
        ("30_caf", "gpu", "skipped (budget)"), ("50_margin_mix", "gpu", "skipped (budget)")]
    assert rec["bench"]["status"] == "ok" and rec["budget_minutes"] == 4 and rec["total_seconds"] == 250.0
    assert seen_records[:3] == [(1, "skipped"), (2, "skipped"), (2, "ok")]   # one record per finished step
