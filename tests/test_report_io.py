import json
import math

import pytest
import torch
import yaml

from fer_nb import io, report


def test_save_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        io.save_json({"a": float("nan")}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    io.save_json({"v": 1}, path)

    class Boom:
        pass

    with pytest.raises(TypeError):
        io.save_json({"v": Boom()}, path)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_check_finite_names_the_place():
    with pytest.raises(ValueError, match=r"tables.t1.row.acc"):
        io.check_finite({"tables": {"t1": {"row": {"acc": math.inf}}}})


def test_write_metrics_has_provenance(tiny_cfg):
    path = report.write_metrics(tiny_cfg, {"t": {"row": {"acc": 50.0}}}, summary={"acc": 50.0})
    m = json.loads(path.read_text())
    for key in ("commit", "date", "device", "torch", "scale", "dataset", "seeds"):
        assert key in m["provenance"]
    assert m["provenance"]["scale"] == "smoke" and m["summary"] == {"acc": 50.0}
    assert m["config"]["hp"]["epochs"] == tiny_cfg.epochs


def test_write_metrics_refuses_nan(tiny_cfg):
    with pytest.raises(ValueError):
        report.write_metrics(tiny_cfg, {"t": {"row": {"acc": float("nan")}}}, summary={"x": 1.0})


def test_summarise_seeds():
    s = report.summarise_seeds([{"acc": 1.0}, {"acc": 3.0}])
    assert s["acc"] == 2.0 and s["acc_std"] == pytest.approx(math.sqrt(2))
    assert report.summarise_seeds([{"acc": 1.0}])["acc_std"] == 0.0


def test_compare_puts_paper_beside_ours(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "paper.yaml").write_text(yaml.safe_dump({
        "citation": "Demo 2020",
        "tables": {"t1": {"title": "Demo", "source": "Table 1", "rows": {"A": {"acc": 80.0}, "B": {"acc": 70.0}}}},
    }))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    recorded = {"tables": {"t1": {"A": {"acc": 60.0, "acc_std": 1.5}}}}
    frame = report.compare("demo", "t1", ours={"A": {"acc": 75.0}, "C": {"acc": 1.0}}, recorded=recorded)
    a = frame[frame.row == "A"].iloc[0]
    # no delta: the run does not say it is on the paper's dataset (tests/test_book_report.py)
    assert a["paper"] == 80.0 and a["this run"] == "75.0" and a["delta"] == "—" and a["recorded"] == "60.0 ± 1.5"
    b = frame[frame.row == "B"].iloc[0]
    assert b["this run"] == "—" and b["delta"] == "—"
    assert "C" in set(frame.row)  # our extra rows are shown, not dropped
    with pytest.raises(KeyError):
        report.compare("demo", "t9")


def test_every_paper_yaml_is_well_formed():
    for path in sorted(report.RESULTS.glob("*/paper.yaml")):
        pub = yaml.safe_load(path.read_text())
        assert pub.get("citation"), path
        for name, table in pub["tables"].items():
            assert table.get("source"), f"{path}: table {name} needs a source (table/page)"
            for row, vals in table["rows"].items():
                for metric, v in (vals or {}).items():
                    assert isinstance(v, (int, float, str)), f"{path}: {name}/{row}/{metric}"


def test_recorded_results_have_provenance():
    for path in sorted(report.RESULTS.glob("*/*.json")):
        m = json.loads(path.read_text())
        assert "provenance" in m, f"{path}: every recorded result names its provenance"
        keys = ("commit", "date", "device", "torch")
        if "config" in m:  # a notebook run: also its scale, dataset and seeds
            keys += ("scale", "dataset", "seeds")
        for key in keys:
            assert key in m["provenance"], f"{path} lacks {key}"
        io.check_finite(m)


def test_torch_load_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        io.load_torch(tmp_path / "evil.pt")


def test_checkpoints_with_numpy_scalars_still_load_weights_only(tmp_path):
    """An lr set with np.cos (a NumPy scalar in the optimizer state) must not make a checkpoint unloadable."""
    import numpy as np
    from fer_nb.io import load_torch, save_torch

    net = torch.nn.BatchNorm1d(3)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = 0.1 * 0.5 * (1 + np.cos(np.pi * 0.25))
    path = save_torch({"model": net.state_dict(), "opt": opt.state_dict(), "step": np.int64(3),
                       "pair": (np.float32(1.5), [np.bool_(True)])}, tmp_path / "ckpt.pt")
    back = load_torch(path)
    assert back["opt"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 0.25)))
    assert type(back["step"]) is int and back["pair"] == (1.5, [True])
    assert back["model"]._metadata == net.state_dict()._metadata
    torch.nn.BatchNorm1d(3).load_state_dict(back["model"])
