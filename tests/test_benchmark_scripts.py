"""The real-data measurement scripts of benchmarks/ run on a FER+ fixture in the published layout,
and their measures give the values worked out by hand."""
import json

import torch

from benchmarks import ferplus_baseline, synthfacs_vs_ferplus as svf
from fer_nb.data.schema import FaceArrays
from tests.papers_fixtures import make_ferplus


def _arrays(images: torch.Tensor, labels: list[int], num_classes: int = 2) -> FaceArrays:
    return FaceArrays(images=images, labels={"expression": torch.tensor(labels)},
                      class_names=tuple(f"c{i}" for i in range(num_classes)), name="toy")


def test_pixel_measures_by_hand():
    a = torch.zeros(1, 2, 2, dtype=torch.uint8)
    a[0, 0, 0] = 200                        # a bright top-left pixel
    b = torch.zeros(1, 2, 2, dtype=torch.uint8)
    b[0, 1, 1] = 200                        # a bright bottom-right pixel
    train = _arrays(torch.stack([a, b, b]), [0, 1, 1])
    test = _arrays(torch.stack([a, b]), [1, 1])   # the first test image looks like class 0
    assert svf.nn_same_expression(train, test) == 50.0
    assert abs(svf.chance_agreement(train, test) - 100 * (2 / 3)) < 1e-9     # p_train(1) * p_test(1) = 2/3 * 1
    # two classes whose images are identical within a class: within-class spread 0 -> separation inf;
    # with one odd image per class the ratio is finite and positive
    c = (a.float() + b.float()).div(2).to(torch.uint8)
    sep = svf.class_separation(_arrays(torch.stack([a, a, c, b, b, c]), [0, 0, 0, 1, 1, 1]))
    assert 0 < sep < float("inf")
    same = svf.class_separation(_arrays(torch.stack([a, b, a, b]), [0, 0, 1, 1]))
    assert same < 1e-6                      # identical class means: no separation


def test_synthfacs_vs_ferplus_runs_on_the_fixture(tmp_path, monkeypatch):
    make_ferplus(tmp_path, per_split=(48, 8, 24))
    monkeypatch.setattr(svf, "SETTINGS", svf.SETTINGS[:1])
    out = tmp_path / "svf.json"
    payload = svf.main(["--data-root", str(tmp_path), "--budget", "16", "--steps", "2", "--seeds", "1",
                        "--synth-train", "64", "--synth-test", "32", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert [r["setting"] for r in saved["rows"]] == ["FER+ (real)", "SynthFACS lab"]
    real = saved["rows"][0]
    assert real["n_train"] == 48 and real["n_test"] == 24 and len(real["classes"]) == 8
    assert len(real["confusion_seed0"]) == 8 and all(0 <= r["acc"] <= 100 for r in saved["rows"])
    assert saved["provenance"]["dataset"] == "ferplus" and payload["closest_to_ferplus"] == "SynthFACS lab"


def test_ferplus_baseline_runs_on_the_fixture(tmp_path):
    make_ferplus(tmp_path, per_split=(32, 8, 16))
    out = tmp_path / "baseline.json"
    payload = ferplus_baseline.main(["--data-root", str(tmp_path), "--steps", "1", "--epochs", "1",
                                     "--batch-size", "8", "--device", "cpu", "--out-dir", str(tmp_path / "run"),
                                     "--output", str(out)])
    saved = json.loads(out.read_text())
    assert "tables" not in saved                     # never read as a recorded run of the chapter's tables
    assert saved["config"]["hp"]["depth"] == 28 and saved["config"]["hp"]["widen_factor"] == 2
    assert saved["summary"]["n_train"] == 32 and saved["summary"]["steps"] == 1
    assert 0 <= payload["summary"]["acc"] <= 100 and saved["provenance"]["dataset"] == "ferplus"
