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
