"""report.compare's recorded column and delta, the claims of the scoreboard, number formatting."""
import json

import pytest
import yaml

from fer_nb import report


@pytest.fixture
def demo(tmp_path, monkeypatch):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "paper.yaml").write_text(yaml.safe_dump({
        "citation": "Demo 2020",
        "datasets": {"t1": "realdb", "m": {"cm": "realdb"}},
        "claim": {"text": "A beats B", "table": "t1", "row": "A", "over": ["B"], "metrics": ["acc"],
                  "better": "higher"},
        "tables": {"t1": {"title": "Demo", "source": "Table 1", "rows": {"A": {"acc": 80.0}, "B": {"acc": 70.0}}},
                   "m": {"title": "Confusion", "source": "Table 2",
                         "rows": {"X": {"X": 90.0, "Y": 10.0}, "Y": {"X": 20.0, "Y": 80.0}}}},
    }))

    def write(scale, dataset, rows):
        m = {"provenance": {"scale": scale, "dataset": dataset, "seeds": [0, 1, 2]}, "tables": {"t1": rows}}
        (folder / f"{scale}-{dataset}.json").write_text(json.dumps(m))

    write("small", "synthfacs", {"A": {"acc": 60.0, "acc_std": 1.5}, "B": {"acc": 50.0, "acc_std": 2.0}})
    write("gpu", "synthfacs", {"A": {"acc": 65.5, "acc_std": 1.0}, "B": {"acc": 66.0, "acc_std": 0.5}})
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    return folder


def _row(frame, name):
    return frame[frame.row == name].iloc[0]


def test_recorded_column_is_same_dataset_and_scale(demo):
    ours = {"A": {"acc": 75.0}}
    small = report.compare("demo", "t1", ours, dataset="synthfacs", scale="small")
    assert _row(small, "A")["recorded"] == "60.0 ± 1.5" and small.attrs["recorded"].startswith("small · synthfacs")
    # a smoke run is never recorded: beside it, the largest recorded scale of the same dataset, named
    smoke = report.compare("demo", "t1", ours, dataset="synthfacs", scale="smoke")
    assert _row(smoke, "A")["recorded"] == "65.5 ± 1.0" and smoke.attrs["recorded"].startswith("gpu")
    # a run on a real dataset never shows SynthFACS numbers
    real = report.compare("demo", "t1", ours, dataset="realdb", scale="small")
    assert _row(real, "A")["recorded"] == "—" and real.attrs["recorded"] == "—"
    # nor at a scale that has no recording, nor when the caller does not say what the run is
    assert _row(report.compare("demo", "t1", ours, dataset="synthfacs", scale="paper"), "A")["recorded"] == "—"
    assert _row(report.compare("demo", "t1", ours), "A")["recorded"] == "—"
    with pytest.raises(ValueError, match="recorded run is on 'synthfacs'"):
        report.compare("demo", "t1", ours, dataset="realdb", scale="small",
                       recorded=report.load_recorded("demo", "small", "synthfacs"))


def test_delta_only_on_the_papers_dataset(demo):
    ours = {"A": {"acc": 75.0}}
    assert _row(report.compare("demo", "t1", ours, dataset="synthfacs", scale="small"), "A")["delta"] == "—"
    real = report.compare("demo", "t1", ours, dataset="realdb", scale="small")
    assert _row(real, "A")["delta"] == "-5.00" and _row(real, "A")["this run"] == "75.0"


def test_compare_accepts_a_config(demo, tiny_cfg):
    frame = report.compare("demo", "t1", {"A": {"acc": 75.0}}, cfg=tiny_cfg)
    assert frame.attrs["this_run"] == "smoke · synthfacs" and _row(frame, "A")["recorded"] == "65.5 ± 1.0"


def test_check_claim_and_summary(demo):
    small = report.check_claim("demo", report.load_recorded("demo", "small", "synthfacs"))
    assert small["verdict"] == "holds" and small["margin"] == pytest.approx(10.0) and not small["within_spread"]
    gpu = report.check_claim("demo", report.load_recorded("demo", "gpu", "synthfacs"))
    assert gpu["verdict"] == "does not hold" and gpu["within_spread"] and gpu["delta"] is None
    assert report.check_claim("demo", None)["verdict"] == "not run"
    summary = report.claims_summary(["demo"])
    row = summary.iloc[0]  # the largest recorded scale is the one summarised
    assert row["verdict"] == "does not hold (within the seed spread)" and row["run"].startswith("gpu")
    assert row["paper's number"] == "80.0 (acc, realdb)" and row["delta to paper"] == "—"


def test_detail_tables(demo):
    run = report.load_recorded("demo", "small", "synthfacs")
    wide = report.paper_vs_recorded("demo", "t1", run)
    assert list(wide.columns) == ["acc"]
    assert wide.loc[("A", "paper"), "acc"] == "80.0" and wide.loc[("A", "small · synthfacs · 3 seeds"), "acc"] == "60.0 ± 1.5"
    assert report.is_matrix(report.load_paper("demo")["tables"]["m"])
    paper_m, ours_m = report.matrix_pair("demo", "m", run)
    assert paper_m.shape == (2, 2) and paper_m.loc["Y", "X"] == "20.0" and ours_m is None


@pytest.mark.parametrize("value, text", [(0.370000, "0.370"), (0.2186, "0.219"), (73.1111, "73.1"),
                                         (440.0, "440"), (1234.56, "1235"), (0.0, "0"), (7, "7"),
                                         (0.000123456, "0.0001"), ("nc", "nc")])
def test_fmt_number(value, text):
    assert report.fmt_number(value) == text


def test_fmt_mean_std():
    assert report.fmt_mean_std(73.11, 5.874) == "73.1 ± 5.9"
    assert report.fmt_mean_std(0.2937, 0.0107) == "0.294 ± 0.011"
    assert report.fmt_mean_std(50.0, 0.0) == "50.0"


def test_every_claim_names_rows_of_its_table():
    for path in sorted(report.RESULTS.glob("*/paper.yaml")):
        pub = yaml.safe_load(path.read_text())
        claim = pub.get("claim")
        if not claim:
            continue
        rows = pub["tables"][claim["table"]]["rows"]
        assert claim["row"] in rows and all(r in rows for r in claim["over"]), path
        assert claim["better"] in ("higher", "lower") and claim["metrics"], path
        for table in pub.get("datasets", {}):
            assert table in pub["tables"], f"{path}: datasets names unknown table {table}"
