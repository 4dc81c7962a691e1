import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion

from fer_nb import metrics


@pytest.fixture
def cls_data():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (300,), generator=g)
    pred = torch.where(torch.rand(300, generator=g) < 0.6, target, torch.randint(0, 5, (300,), generator=g))
    return pred, target


def test_accuracy_and_confusion_match_sklearn(cls_data):
    pred, target = cls_data
    assert metrics.accuracy(pred, target) == pytest.approx(accuracy_score(target, pred))
    assert np.array_equal(metrics.confusion_matrix(pred, target, 5).numpy(), sk_confusion(target, pred, labels=range(5)))
    assert metrics.mean_per_class_accuracy(pred, target, 5) == pytest.approx(balanced_accuracy_score(target, pred))


def test_accuracy_accepts_logits(cls_data):
    pred, target = cls_data
    logits = torch.nn.functional.one_hot(pred, 5).float() * 3
    assert metrics.accuracy(logits, target) == metrics.accuracy(pred, target)


def test_empty_accuracy_is_an_error():
    with pytest.raises(ValueError):
        metrics.accuracy(torch.tensor([]), torch.tensor([]))


def test_f1_per_label_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(200, 6, generator=g) < 0.3
    pred = torch.rand(200, 6, generator=g) < 0.35
    pred[:, 5] = False
    target[:, 5] = False  # no positives at all -> 0 (zero_division=0)
    ours = metrics.f1_per_label(pred, target).numpy()
    ref = f1_score(target.numpy(), pred.numpy(), average=None, zero_division=0)
    assert np.allclose(ours, ref)


def test_f1_mask_excludes_unannotated():
    pred = torch.tensor([[1], [1], [0]])
    target = torch.tensor([[1], [0], [0]])
    mask = torch.tensor([[True], [False], [True]])
    assert metrics.f1_per_label(pred, target, mask).item() == pytest.approx(1.0)
    assert metrics.f1_per_label(pred, target).item() == pytest.approx(2 / 3)


def test_regression_metrics_hand_values():
    x = torch.tensor([0.5, -0.5, 0.0, 1.0])
    y = torch.tensor([0.5, 0.5, 0.0, 0.5])
    assert metrics.rmse(x, y) == pytest.approx(np.sqrt((0 + 1 + 0 + 0.25) / 4))
    # sign(0) == sign(0): the third pair agrees; the second does not
    assert metrics.sagr(x, y) == pytest.approx(0.75)
    # CCC by hand: mx=0.25, my=0.375, vx=0.3125, vy=0.046875, cov=0.03125
    assert metrics.ccc(x, y) == pytest.approx(2 * 0.03125 / (0.3125 + 0.046875 + 0.125**2))


def test_pcc_matches_scipy_and_ccc_bounds():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, generator=g)
    y = 0.6 * x + 0.4 * torch.randn(500, generator=g)
    assert metrics.pcc(x, y) == pytest.approx(pearsonr(x.numpy(), y.numpy())[0], rel=1e-9)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    xc = x - x.mean()
    assert metrics.ccc(xc, -xc) == pytest.approx(-1.0)  # exactly -1 only for zero-mean data
    assert abs(metrics.ccc(x, y)) <= abs(metrics.pcc(x, y)) + 1e-12  # CCC <= |PCC|
    assert metrics.ccc(x, x + 1) < 1.0  # a bias is penalised by CCC but not by PCC
    assert metrics.pcc(x, x + 1) == pytest.approx(1.0)


def test_constant_predictions_are_finite():
    x = torch.zeros(10)
    y = torch.randn(10)
    assert metrics.pcc(x, y) == 0.0
    assert np.isfinite(metrics.ccc(x, y))


def test_va_metrics_keys():
    out = metrics.va_metrics(torch.randn(20, 2), torch.randn(20, 2))
    assert set(out) == {f"{m}_{d}" for m in ("rmse", "sagr", "pcc", "ccc") for d in ("valence", "arousal")}
