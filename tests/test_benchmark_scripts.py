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


def test_train_and_test_is_the_chapters_run_one(tmp_path):
    """train_and_test trains through margin_mix.run_one (supervised, no checkpoint): the same accuracy,
    and a confusion matrix that is the row-normalised count of run_one's predictions; nothing written."""
    from fer_nb import config
    from fer_nb.data import synthfacs
    from fer_nb.papers import margin_mix as mm

    cfg = config.resolve("margin_mix", "small", "ferplus", str(tmp_path), "cpu", 1, str(tmp_path / "run"),
                         steps=3, epochs=1, ema_decay=0.97)
    common = dict(image_size=32, class_priors="ferplus", channels=1, with_contempt=True, domain="lab")
    train = synthfacs.generate(64, seed=11, n_subjects=40, subject_offset=0, **common)
    test = synthfacs.generate(32, seed=12, n_subjects=20, subject_offset=40, **common)
    got = svf.train_and_test(cfg, train, test, 16, 0)
    ref = mm.run_one(cfg, {"table3": (train, test)}, "table3", "supervised", 16, 0, checkpoint=False)
    assert (got["acc"], got["mean_acc"]) == (ref["acc"], ref["mean_acc"])
    counts = torch.zeros(8, 8, dtype=torch.float64)
    for t, p in zip(test.labels["expression"].tolist(), ref["predictions"].tolist()):
        counts[t, p] += 1
    rows = counts / counts.sum(1, keepdim=True).clamp_min(1)
    assert torch.allclose(torch.tensor(got["confusion"], dtype=torch.float64), rows, atol=5e-4)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ benchmarks/mutation.py (no mutmut needed)
def test_mutation_sample_is_proportional_seeded_and_whole_when_asked_for_everything():
    import numpy as np
    import pytest

    from benchmarks import mutation as mu

    population = {"a.py": [f"a{i}" for i in range(60)], "b.py": [f"b{i}" for i in range(30)], "c.py": ["c0"] * 0 + ["c0", "c1"]}
    one = mu.stratified_sample(population, 20, np.random.default_rng(0))
    # quotas 20 * (60, 30, 2) / 92 = 13.04, 6.52, 0.43: floors 13, 6, 0, the last seat to the largest remainder (b)
    assert [sum(m.startswith(k) for m in one) for k in "abc"] == [13, 7, 0]
    assert len(set(one)) == 20 and one == mu.stratified_sample(population, 20, np.random.default_rng(0))
    assert one != mu.stratified_sample(population, 20, np.random.default_rng(1))
    assert mu.stratified_sample(population, 500, np.random.default_rng(0)) == population["a.py"] + population["b.py"] + ["c0", "c1"]
    with pytest.raises(ValueError, match="sample size"):
        mu.stratified_sample(population, -1, np.random.default_rng(0))
    assert mu.parse_sizes("losses=700,papers=400") == {"losses": 700, "papers": 400}
    with pytest.raises(ValueError, match="GROUP=N"):
        mu.parse_sizes("loss=7")


def test_mutation_wilson_interval_and_names_by_hand():
    import pytest

    from benchmarks import mutation as mu

    lo, hi = mu.wilson(90, 100)
    # p = .9, n = 100, z^2 = 3.8415: centre (0.9 + 0.019207) / 1.038415 = 0.88521,
    # half 1.96 * sqrt(0.0009 + 0.000096) / 1.038415 = 0.05957
    assert abs(lo - 0.8256) < 1e-3 and abs(hi - 0.9448) < 1e-3
    assert mu.wilson(0, 0) == (0.0, 1.0) and mu.wilson(10, 10)[1] == pytest.approx(1.0)
    name = "fer_nb.papers.caf.xǁCAFStepsǁtrain_step__mutmut_12"
    assert mu.module_of(name) == "fer_nb.papers.caf" and mu.function_of(name) == "CAFSteps.train_step"
    assert mu.function_of("fer_nb.papers.caf.x_plot_trace__mutmut_3") == "plot_trace"
    assert mu.is_presentation("fer_nb.papers.caf.x_plot_trace__mutmut_3")
    assert not mu.is_presentation("fer_nb.papers.caf.x_train_caf__mutmut_3")
    assert not mu.is_presentation("fer_nb.losses.x_plot_thing__mutmut_1")
    assert mu.group_of("fer_nb/io.py") == "ssl_io" and mu.group_of("fer_nb/losses/npair.py") == "losses"
    assert mu.group_of("fer_nb/iox.py") is None


def test_mutation_summary_counts_equivalents_and_later_kills():
    import pytest

    from benchmarks import mutation as mu

    results = {"fer_nb/losses/x.py": {"fer_nb.losses.x.x_f__mutmut_1": 1, "fer_nb.losses.x.x_f__mutmut_2": 0,
                                      "fer_nb.losses.x.x_f__mutmut_3": 0, "fer_nb.losses.x.x_f__mutmut_4": 33,
                                      "fer_nb.losses.x.x_f__mutmut_5": None}}
    sample = {"losses": sorted(results["fer_nb/losses/x.py"])}
    out = mu.summarise(results, sample, {"fer_nb.losses.x.x_f__mutmut_2": "same thing"},
                       killed_after=["fer_nb.losses.x.x_f__mutmut_4"])
    g = out["groups"]["losses"]
    assert (g["mutants"], g["checked"], g["killed"], g["survived"], g["equivalent"]) == (5, 4, 2, 2, 1)
    assert g["score"] == pytest.approx(2 / 3, abs=1e-4)          # killed 1 and 4, survivor 3; 2 left out
    assert out["survivors"] == ["fer_nb.losses.x.x_f__mutmut_3"]
    with pytest.raises(ValueError, match="listed as equivalent were killed"):
        mu.summarise(results, sample, {"fer_nb.losses.x.x_f__mutmut_1": "wrong"})


def test_mutation_summary_reports_the_first_pass_kept_by_rerun(tmp_path):
    """``rerun`` keeps mutmut's first verdicts in WORKDIR/first_pass; ``summary`` reports both passes."""
    import json

    from benchmarks import mutation as mu

    names = [f"fer_nb.losses.x.x_f__mutmut_{i}" for i in range(1, 5)]

    def write(root, codes):
        meta = root / "mutants" / "fer_nb" / "losses" / "x.py.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": dict(zip(names, codes))}))

    write(tmp_path, [1, 1, 1, 0])                       # after the re-run: 3 of 4 killed
    write(tmp_path / mu.FIRST_PASS, [1, 0, 33, 0])      # first pass: 1 of 4
    (tmp_path / "sample.json").write_text(json.dumps({"seed": 1, "sizes": "losses=4", "sample": {"losses": names}}))
    out = mu.main(["summary", "--workdir", str(tmp_path), "--output", str(tmp_path / "out.json")])
    assert out["first_pass"]["groups"]["losses"]["killed"] == 1 and out["first_pass"]["overall"]["score"] == 0.25
    assert out["groups"]["losses"]["killed"] == 3 and out["overall"]["score"] == 0.75
    assert json.loads((tmp_path / "out.json").read_text())["first_pass"] == out["first_pass"]


def test_mutation_setup_keeps_the_selection_the_book_records():
    from benchmarks import mutation as mu

    cfg = mu.setup_cfg()
    for test in mu.TESTS:
        assert (mu.ROOT / test).is_file() and f"    {test}\n" in cfg
    assert "    fer_nb/papers/*\n" in cfg and "    fer_nb/io.py\n" in cfg and "process_isolation=forkserver" in cfg
    for reason, names in __import__("yaml").safe_load(mu.EQUIVALENT.read_text()).items():
        assert reason and names and all("__mutmut_" in n for n in names)
    for test, names in mu.load_verified().items():
        for one in test.split():                          # test ids, or whole test files
            path, _, func = one.partition("::")
            assert (mu.ROOT / path).is_file() and (not func or f"def {func}(" in (mu.ROOT / path).read_text()), test
        assert names and all("__mutmut_" in n for n in names)


def test_hand_mutations_still_apply_and_name_existing_tests():
    from benchmarks import hand_mutations as hm
    from benchmarks.mutation import ROOT

    assert len(hm.MUTATIONS) == len({m[0] for m in hm.MUTATIONS})
    for name, rel, old, new, tests in hm.MUTATIONS:
        assert (ROOT / rel).read_text().count(old) == 1, name
        assert old != new and all((ROOT / t).is_file() for t in tests.split()), name


def test_hand_mutations_run_applies_tests_and_restores(tmp_path, monkeypatch):
    from benchmarks import hand_mutations as hm

    (tmp_path / "m.py").write_text("X = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("import m\n\ndef test_x():\n    assert m.X == 1\n")
    monkeypatch.setattr(hm, "MUTATIONS", [("X is 2", "m.py", "X = 1", "X = 2", "tests/test_m.py"),
                                          ("X is 1.0", "m.py", "X = 1", "X = 1.0", "tests/test_m.py")])
    rows = hm.run(tmp_path)
    assert [r["killed"] for r in rows] == [True, False]
    assert rows[0]["by"] == "tests/test_m.py::test_x" and rows[1]["by"] is None
    assert (tmp_path / "m.py").read_text() == "X = 1\n"
