"""fer_nb.course: the course chapter's cross-check tables and protocol summaries (issue #18)."""
import math

import pandas as pd
import pytest
import torch

from fer_nb import course, fingerprint, reality_check


@pytest.fixture(scope="module")
def batch():
    x, y, g = course.course_batch(4, 5, seed=0)
    return x, y, g, course.course_losses(4, 5, seed=0)


def test_course_batch_has_every_class_twice_and_is_seeded(batch):
    x, y, g, _ = batch
    assert x.dtype == torch.float64 and x.shape == (24, 5)
    assert y[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    x2, y2, _ = course.course_batch(4, 5, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, course.course_batch(4, 5, seed=1)[0])


def test_every_loss_matches_its_loop_reference(batch):
    x, y, _, losses = batch
    table = course.loop_reference_table(losses, x, y)
    assert len(table) == 10 and table["loss"].is_unique
    assert float(table["|value diff|"].max()) < 1e-10
    assert float(table["max |grad diff|"].max()) < 1e-10
    assert (table["vectorised"] > 0).all()


def test_every_loss_matches_pytorch_metric_learning(batch):
    pytest.importorskip("pytorch_metric_learning")
    x, y, _, losses = batch
    table, ours_pn = course.pml_cross_check_table(losses, x, y, 4, 5)
    assert len(table) == 10
    assert float(table["|value diff|"].max()) < 1e-8
    assert float(table["max |grad diff|"].max()) < 1e-8
    assert ours_pn.include_positive  # PML's ProxyNCA keeps the positive proxy in the denominator


def test_value_and_grad_leaves_its_input_alone():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    v, g = course.value_and_grad(lambda t: (t ** 2).sum(), x)
    assert v == 5.0 and g.tolist() == [2.0, 4.0] and not x.requires_grad


def test_fmt():
    st = {"map@r": 41.234, "map@r_std": 1.26}
    assert course.fmt(st, "map@r", 3) == "41.2 ± 1.3"
    assert course.fmt(st, "map@r", 1) == "41.2"
    assert course.fmt({"map@r": "nc"}, "map@r", 3) == "nc"
    # three significant digits, the spread at the mean's decimals (report.fmt_mean_std)
    assert course.fmt({"map@r": 5.6789, "map@r_std": 0.1234}, "map@r", 3) == "5.68 ± 0.12"
    assert course.fmt({"map@r": 5.6789, "map@r_std": 0.0}, "map@r", 3) == "5.68"


def _runs(base):
    return [{c: base + i for c in course.METRIC_COLS} for i in range(3)]


def test_protocol_table_means_stds_and_nc():
    rc = {"test": {"softmax": _runs(10.0), "supcon": []},
          "chosen": {"softmax": 0, "supcon": 0.1}, "seconds": {"softmax": 2.0, "supcon": 3.0}}
    table = course.protocol_table(rc, ["softmax", "supcon"])
    soft = table[reality_check.LOSSES["softmax"].label]
    assert soft["map@r"] == pytest.approx(11.0) and soft["map@r_std"] == pytest.approx(1.0)
    assert soft["seeds"] == 3 and soft["chosen"] == 0 and soft["seconds"] == 2.0
    sup = table[reality_check.LOSSES["supcon"].label]
    assert sup["chosen"] == "nc" and sup["seeds"] == 0 and sup["map@r"] == "nc"


def test_recorded_comparison_facts_by_hand():
    def st(m, sd, chosen):
        return {"map@r": m, "map@r_std": sd, "recall@1": m + 1, "recall@1_std": sd, "ncm_acc": m + 2,
                "ncm_acc_std": sd, "chosen": chosen}

    rec = {"SupCon": st(40.0, 1.0, 0.3), "softmax": st(39.0, 1.0, 0), "Circle": st(30.0, 1.0, 0.25),
           "ArcFace": {"map@r": "nc", "chosen": "nc"}}
    recorded = {"provenance": {"dataset": "ferplus", "scale": "small", "seeds": [0, 1, 2], "commit": "abcdef1234567890",
                               "device": "cpu"}, "tables": {"reality_check": rec}, "extra": {"rc_seconds": 12.0}}
    current = {"SupCon": {"map@r": 35.0, "map@r_std": 0.0, "seeds": 1}}
    header, table, facts = course.recorded_comparison(recorded, current, "this run")
    assert "ferplus" in header and "abcdef123456" in header and "12 s" in header
    assert list(table.index) == ["SupCon", "softmax", "Circle", "ArcFace"]
    assert table.loc["SupCon", "MAP@R this run"] == "35.0" and table.loc["softmax", "MAP@R this run"] == "—"
    assert table.loc["ArcFace", "MAP@R recorded"] == "nc"
    assert facts["best"] == "SupCon" and facts["pooled_std"] == pytest.approx(1.0)
    assert facts["within_two_std"] == ["SupCon", "softmax"]
    assert (facts["min_map@r"], facts["max_map@r"]) == (30.0, 40.0)
    # SupCon's temperature 0.3 is the top of its grid (0.05, 0.1, 0.3); Circle's m 0.25 is inside
    assert facts["at_grid_edge"] == ["SupCon (0.3)"]


def test_rank_correlation_by_hand():
    a = {"x": 3.0, "y": 2.0, "z": 1.0}
    assert course.rank_correlation(a, a) == (pytest.approx(1.0), 3)
    assert course.rank_correlation(a, {"x": 1.0, "y": 2.0, "z": 3.0, "w": 9.0})[0] == pytest.approx(-1.0)
    # ties take average ranks: ranks (3, 2, 1, 4) against (2.5, 2.5, 1, 4); centred (.5, -.5, -1.5, 1.5)
    # and (0, 0, -1.5, 1.5): rho = 4.5 / sqrt(5 * 4.5) = sqrt(0.9)
    rho, n = course.rank_correlation({"a": 3, "b": 2, "c": 1, "d": 4}, {"a": 2, "b": 2, "c": 1, "d": 4})
    assert n == 4 and rho == pytest.approx(0.9 ** 0.5)
    # a constant score map has no ranking: 0, not NaN
    assert course.rank_correlation(a, {"x": 1.0, "y": 1.0, "z": 1.0}) == (0.0, 3)


def test_mined_triplet_table_by_hand():
    # three points on a line: 0 and 1 are class 0, 2 is class 1
    pts = torch.tensor([[0.0], [1.0], [1.2]], dtype=torch.float64)
    d = torch.cdist(pts, pts)
    rows = course.mined_triplet_table(d, torch.tensor([0, 0, 1]), {"all": "all"}, margin=0.3, embed_dim=1)
    # triplets (a, p, n): (0, 1, 2): d_ap 1, d_an 1.2 -> hinge 0.1 > 0; (1, 0, 2): d_ap 1, d_an 0.2 -> violates
    assert rows["all"]["triplets with weight > 0"] == 2
    assert rows["all"]["of which violate the margin"] == 2
    assert rows["all"]["weight on violating triplets (%)"] == pytest.approx(100.0)


def test_frame_to_dict_drops_the_metric_column():
    frame = pd.DataFrame({"a": {"metric": "cosine", "map@r": 1}, "b": {"metric": "dot", "map@r": 2.5}}).T
    assert course.frame_to_dict(frame) == {"a": {"map@r": 1.0}, "b": {"map@r": 2.5}}


def test_no_chapter_has_more_than_350_lines_of_code():
    """Issue #18: chapters keep what a reader should see and change; plumbing lives in fer_nb."""
    for path in sorted(fingerprint.NOTEBOOKS.glob("*.md")):
        n = sum(len(src.splitlines()) for _, src in fingerprint.code_cells(path.read_text(encoding="utf-8")))
        assert n <= 350, f"{path.name}: {n} lines of code cells"
