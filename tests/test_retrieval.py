"""Retrieval metrics (issue #21) on hand-made cases, against a loop reference and pytorch-metric-learning."""
import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_d
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from fer_nb import retrieval
from fer_nb.losses.cosface import CosFaceLoss
from fer_nb.losses.supcon import SupConLoss
from fer_nb.losses.triplet import TripletLoss


def test_hand_made_line():
    """Points on a line: query 0 at x=0 with classes [A A B A B] at x = 0, 1, 2, 3, 4 (leave-one-out).

    Query x=0 (A): other A's are at 1 and 3, so R = 2; ranking 1(A), 2(B), 3(A), 4(B):
    R-precision = 1/2, MAP@R = (1/1 + 0) / 2 = 1/2 (the second A comes at rank 3 > R), Recall@1 = 1.
    """
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([0, 0, 1, 0, 1])
    m = retrieval.retrieval_metrics(x[:1], y[:1], x[1:], y[1:], ks=(1, 2))
    assert m["recall@1"] == 100.0 and m["recall@2"] == 100.0
    assert m["r_precision"] == 50.0 and m["map@r"] == 50.0 and m["queries"] == 1.0


def test_hand_made_map_at_r_rewards_order():
    """Two rankings with the same R-precision but different MAP@R.

    Query at 0, class A, references: R = 3 A's. Ranking 1: A, A, B, A -> R-prec 2/3, MAP@R (1 + 1)/3.
    Ranking 2: B, A, A, A -> R-prec 2/3, MAP@R (1/2 + 2/3)/3.
    """
    q, qy = torch.tensor([[0.0]]), torch.tensor([0])
    refs1 = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y1 = torch.tensor([0, 0, 1, 0])
    y2 = torch.tensor([1, 0, 0, 0])
    m1 = retrieval.retrieval_metrics(q, qy, refs1, y1)
    m2 = retrieval.retrieval_metrics(q, qy, refs1, y2)
    assert math.isclose(m1["r_precision"], 200 / 3) and math.isclose(m2["r_precision"], 200 / 3)
    assert math.isclose(m1["map@r"], 100 * 2 / 3)
    assert math.isclose(m2["map@r"], 100 * (0.5 + 2 / 3) / 3)
    assert m2["recall@1"] == 0.0 and m1["recall@1"] == 100.0


def test_perfect_and_lone_queries():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [-9.0, 9.0]])
    y = torch.tensor([0, 0, 1, 1, 2])      # class 2 has a single item: skipped as a query
    m = retrieval.retrieval_metrics(x, y, ks=(1, 2))
    assert m["queries"] == 4.0
    assert m["recall@1"] == m["r_precision"] == m["map@r"] == 100.0


def test_metric_choice_changes_the_neighbours():
    """Cosine ignores the norm: a same-direction far point beats a near point in another direction."""
    q = torch.tensor([[1.0, 0.0]])
    refs = torch.tensor([[10.0, 0.1], [0.5, 0.5]])
    ry = torch.tensor([0, 1])
    cos = retrieval.retrieval_metrics(q, torch.tensor([0]), refs, ry, metric="cosine")
    euc = retrieval.retrieval_metrics(q, torch.tensor([0]), refs, ry, metric="euclidean")
    assert cos["recall@1"] == 100.0 and euc["recall@1"] == 0.0


@pytest.mark.parametrize("metric", retrieval.METRICS)
@pytest.mark.parametrize("seed", [0, 1])
def test_against_loop_reference(metric, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 3, generator=g)
    y = torch.randint(0, 5, (60,), generator=g)
    ref = torch.randn(40, 3, generator=g)
    ry = torch.randint(0, 5, (40,), generator=g)
    for args in ((x, y), (x, y, ref, ry)):
        a = retrieval.retrieval_metrics(*args, metric=metric, ks=(1, 3, 10), chunk=7)
        b = retrieval.retrieval_metrics_loop(*args, metric=metric, ks=(1, 3, 10))
        assert a.keys() == b.keys()
        for k in a:
            assert math.isclose(a[k], b[k], abs_tol=1e-9), (k, a[k], b[k])


@pytest.mark.parametrize("seed", [0, 1])
def test_against_pytorch_metric_learning(seed):
    """AccuracyCalculator with a torch k-NN (CustomKNN, LpDistance / CosineSimilarity), leave-one-out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 4, generator=g)
    y = torch.randint(0, 4, (80,), generator=g)
    for metric, dist in (("euclidean", pml_d.LpDistance(p=2, power=1, normalize_embeddings=False)),
                         ("cosine", pml_d.CosineSimilarity())):
        calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                  knn_func=CustomKNN(dist), avg_of_avgs=False)
        theirs = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
        ours = retrieval.retrieval_metrics(x, y, metric=metric)
        assert math.isclose(ours["recall@1"], 100 * theirs["precision_at_1"], abs_tol=1e-6)
        assert math.isclose(ours["r_precision"], 100 * theirs["r_precision"], abs_tol=1e-6)
        assert math.isclose(ours["map@r"], 100 * theirs["mean_average_precision_at_r"], abs_tol=1e-6)


def test_ncm_accuracy_geometry():
    """Two cones: class 0 along +x (norms 1 and 10), class 1 at 30 degrees (norm 3). The Euclidean mean
    of class 0 lies at (5.5, 0): the short class-0 point is nearer class 1's mean; by angle it is not."""
    train = torch.tensor([[1.0, 0.0], [10.0, 0.0], [3 * math.cos(0.5), 3 * math.sin(0.5)]])
    ty = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.05]])
    assert retrieval.ncm_accuracy(train, ty, test, torch.tensor([0]), 2, "euclidean") == 0.0
    assert retrieval.ncm_accuracy(train, ty, test, torch.tensor([0]), 2, "cosine") == 100.0
    g = torch.Generator().manual_seed(0)
    a, ay, b, by = torch.randn(30, 3, generator=g), torch.randint(0, 3, (30,), generator=g), \
        torch.randn(20, 3, generator=g), torch.randint(0, 3, (20,), generator=g)
    for metric in retrieval.METRICS:
        assert math.isclose(retrieval.ncm_accuracy(a, ay, b, by, 3, metric),
                            retrieval.ncm_accuracy_loop(a, ay, b, by, 3, metric))


def test_metric_for_losses():
    assert retrieval.metric_for(CosFaceLoss(2, 3)) == "cosine"
    assert retrieval.metric_for(SupConLoss()) == "cosine"
    assert retrieval.metric_for(TripletLoss()) == "euclidean"
    from fer_nb import miners, reality_check
    assert retrieval.metric_for(miners.MinedTripletLoss("semi_hard", normalize=True)) == "cosine"
    assert retrieval.metric_for(miners.MinedTripletLoss("semi_hard", normalize=False)) == "euclidean"
    assert retrieval.metric_for(reality_check.Normalized(TripletLoss())) == "cosine"
    for spec in reality_check.LOSSES.values():  # the protocol's stated geometry is the loss's own
        assert retrieval.metric_for(spec.build(8, 3, spec.grid[0])) == spec.metric, spec.label


def test_errors():
    with pytest.raises(ValueError, match="metric"):
        retrieval.similarity(torch.zeros(1, 2), torch.zeros(1, 2), "manhattan")
    with pytest.raises(ValueError, match="reference_labels"):
        retrieval.retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="ks"):
        retrieval.retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), ks=(0,))
    with pytest.raises(TypeError, match="long"):
        retrieval.retrieval_metrics(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------------ the reality-check protocol (fer_nb.reality_check)

def test_balanced_batches_draw_every_class_per_batch():
    from fer_nb import reality_check

    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 10 + [-1] * 4)
    rows = reality_check.balanced_batches(labels, steps=20, classes=3, per_class=4, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (20, 12)
    for r in rows:
        counts = torch.bincount(labels[r].clamp_min(0), minlength=3)
        assert counts.tolist() == [4, 4, 4] and bool((labels[r] >= 0).all())
    with pytest.raises(ValueError, match="two classes"):
        reality_check.balanced_batches(torch.zeros(5, dtype=torch.long), 1, 2, 2, torch.Generator())


def test_pca_features_whiten_the_training_images():
    from fer_nb import reality_check

    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(200, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    pca = reality_check.PCAFeatures(dims=6, pool=2).fit(imgs)
    f = pca.transform(imgs)
    assert f.shape == (200, 6)
    assert torch.allclose(f.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(f.std(0), torch.ones(6), atol=0.05)   # whitened (randomised PCA: approximately)
    with pytest.raises(RuntimeError, match="fit"):
        reality_check.PCAFeatures(4).transform(imgs)


def test_run_protocol_selects_on_validation_and_reports_every_seed():
    """Three Gaussian classes in 6-D; two losses, two candidates each, two seeds."""
    from fer_nb import reality_check

    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, generator=g) * 3

    def split(n):
        y = torch.arange(n) % 3
        return means[y] + torch.randn(n, 6, generator=g), y

    splits = {"train": split(120), "val": split(60), "test": split(60)}
    out = reality_check.run_protocol(splits, 3, ["softmax", "supcon"], [0, 1], embed_dim=4, hidden=16, steps=30,
                                     classes_per_batch=3, per_class=4, lr=0.01, grid_size=2)
    assert len(out["tuning"]["supcon"]) == 2 and len(out["tuning"]["softmax"]) == 1
    best = max(out["tuning"]["supcon"], key=lambda r: r["val_map@r"])
    assert out["chosen"]["supcon"] == best["value"]
    assert len(out["test"]["supcon"]) == 2
    for runs in out["test"].values():
        for m in runs:
            assert set(m) == {"recall@1", "recall@4", "r_precision", "map@r", "ncm_acc"}
            assert m["ncm_acc"] > 60.0   # well-separated classes: every loss learns them
    with pytest.raises(KeyError, match="unknown loss"):
        reality_check.run_protocol(splits, 3, ["nope"], [0], embed_dim=4, hidden=8, steps=1, classes_per_batch=3,
                                   per_class=2, lr=0.01)
