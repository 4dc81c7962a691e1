"""Every loss against bad and hostile inputs, and the checks that killed reviewer mutations (#18, #19).

* Ignored rows (label ``-1``, or a Margin-Mix row without target) holding NaN/inf reach neither the
  value nor any gradient: the loss equals the loss of the batch without those rows.
* Bad inputs raise an error naming the loss and the fix (``BAD_INPUTS``: one line per case, the
  table of the book's reliability chapter); empty batches give a defined, finite 0.
* Targeted checks for the mutations a reviewer's hand-mutation run left alive: the ``sin`` floor of
  the angular margin, ``margin == 0`` scaling, no margin on ``-1`` rows, the centroid rate, the CAF
  default bandwidth (median), Margin-Mix's absent classes and its RBF / cosine distances.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fer_nb.losses.angular_margin import AngularMarginLoss, angular_margin_logits, reference_arcface
from fer_nb.losses.caf_critic import CAFCriticLoss, gaussian_mi, reference_caf_critic, reference_gaussian_mi
from fer_nb.losses.center import CenterLoss
from fer_nb.losses.contrastive import ContrastiveLoss
from fer_nb.losses.cosface import CosFaceLoss
from fer_nb.losses.coupled_clusters import CoupledClustersLoss
from fer_nb.losses.distances import normalise, pairwise_sq_distances
from fer_nb.losses.fisher_ipm import FisherIPMLoss
from fer_nb.losses.island import IslandLoss
from fer_nb.losses.large_margin_loss import LargeMarginLoss
from fer_nb.losses.margin_mix_loss import MarginMixLoss, reference_kernel_centroid_sq_distances, reference_margin_mix
from fer_nb.losses.mmd_critic import MMDCriticLoss
from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
from fer_nb.losses.softmax import SoftmaxLoss
from fer_nb.losses.triplet import TripletLoss
from fer_nb.losses.va_regression import VARegressionLoss

D64 = torch.float64


def _batch(n=12, d=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D64)
    y = torch.arange(n) % c
    return x, y


# ------------------------------------------------------------------ ignored rows holding NaN / inf
def _seeded(module):
    torch.manual_seed(0)
    return module.double().eval()


LOSSES_WITH_IGNORED_ROWS = {
    "CenterLoss": lambda: _seeded(CenterLoss(3, 4)),
    "CenterLoss(plain)": lambda: _seeded(CenterLoss(3, 4, squared=False)),
    "IslandLoss": lambda: _seeded(IslandLoss(3, 4, lambda1=0.5)),
    "LargeMarginLoss": lambda: _seeded(LargeMarginLoss(3, 4)),
    "SoftmaxLoss": lambda: _seeded(SoftmaxLoss(3, 4)),
    "AngularMarginLoss": lambda: _seeded(AngularMarginLoss(4, 3, scale=8.0)),
    "CosFaceLoss": lambda: _seeded(CosFaceLoss(4, 3, scale=8.0)),
    "ContrastiveLoss": lambda: ContrastiveLoss(neg_margin=2.0),
    "ContrastiveLoss(normalize)": lambda: ContrastiveLoss(neg_margin=1.0, normalize=True, reduction="mean_nonzero"),
    "TripletLoss": lambda: TripletLoss(margin=1.0, power=1),
    "TripletLoss(none)": lambda: TripletLoss(margin=1.0, reduction="none"),
    "NPlusOneTupleLoss": lambda: NPlusOneTupleLoss(margin=0.2),
    "CoupledClustersLoss": lambda: CoupledClustersLoss(margin=1.0),
    "NMTupleClustersLoss": lambda: NMTupleClustersLoss(reference=2.0, tau=1.0),
    "NMTupleClustersLoss(adaptive)": lambda: _seeded(NMTupleClustersLoss(adaptive=True, embedding_dim=4)),
    "MarginMixLoss(batch centroids)": lambda: MarginMixLoss(3),
    "MarginMixLoss(rbf)": lambda: MarginMixLoss(3, "rbf", gamma=0.5),
}


@pytest.mark.parametrize("name", list(LOSSES_WITH_IGNORED_ROWS))
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_poisoned_ignored_row_reaches_neither_value_nor_gradient(name, poison):
    x, y = _batch()
    y = y.clone()
    y[[2, 7]] = -1
    x_bad = x.clone()
    x_bad[2] = poison
    x_bad[7, 0] = -poison
    keep = y >= 0
    loss = LOSSES_WITH_IGNORED_ROWS[name]()
    clean = loss(x[keep], y[keep])
    xb = x_bad.clone().requires_grad_(True)
    out = loss(xb, y)
    if out.ndim == 0:
        torch.testing.assert_close(out, clean, rtol=1e-10, atol=1e-12)
    else:   # per-row or per-tuple values: the ignored rows' entries are 0 or absent
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(), clean.sum(), rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(xb.grad).all() and (xb.grad[~keep] == 0).all()
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_margin_mix_explicit_centroids_ignore_poisoned_untargeted_rows():
    x, y = _batch()
    t = F.one_hot(y, 3).to(D64)
    t[4] = 0
    x_bad = x.clone()
    x_bad[4] = float("nan")
    c = torch.randn(3, 4, dtype=D64, generator=torch.Generator().manual_seed(1))
    xb = x_bad.clone().requires_grad_(True)
    out = MarginMixLoss(3)(xb, t, centroids=c)
    keep = torch.arange(12) != 4
    torch.testing.assert_close(out, MarginMixLoss(3)(x[keep], t[keep], centroids=c))
    out.backward()
    assert torch.isfinite(xb.grad).all()


# ------------------------------------------------------------------ centroid buffers and non-finite rows
@pytest.mark.parametrize("cls", [CenterLoss, LargeMarginLoss, IslandLoss])
def test_non_finite_labelled_row_is_rejected_before_the_centroid_update(cls):
    loss = cls(3, 4).double().train()
    x, y = _batch()
    loss(x, y)                                   # centres from data
    before = loss.centers.clone()
    x_bad = x.clone()
    x_bad[5, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"{cls.__name__}: non-finite embeddings in labelled rows; rows \[5\]"):
        loss(x_bad, y)
    assert torch.equal(loss.centers, before)     # untouched: training can go on after the caller's fix
    y_ignored = y.clone()
    y_ignored[5] = -1                            # the same row, unlabelled: ignored, no error
    assert torch.isfinite(loss(x_bad, y_ignored))
    assert torch.isfinite(loss.centers).all()


def test_large_margin_moving_update_uses_the_full_centroid_rate():
    """Wen et al.'s Eq. 4 step with rate alpha, computed by hand for two seen classes."""
    alpha = 0.3
    loss = LargeMarginLoss(2, 2, alpha=alpha).double().train()
    start = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D64)
    loss.centers.copy_(start)
    loss.seen.fill_(True)
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=D64)
    y = torch.tensor([0, 1, 1])
    loss(x, y)
    delta0 = (start[0] - x[0]) / (1 + 1)                          # class 0: one sample
    delta1 = ((start[1] - x[1]) + (start[1] - x[2])) / (1 + 2)     # class 1: two samples
    want = torch.stack([start[0] - alpha * delta0, start[1] - alpha * delta1])
    torch.testing.assert_close(loss.centers, want)


# ------------------------------------------------------------------ empty batches
@pytest.mark.parametrize("make", [lambda: NMTupleClustersLoss(), lambda: NMTupleClustersLoss(mining=False),
                                  lambda: NMTupleClustersLoss(adaptive=True, embedding_dim=3),
                                  lambda: CoupledClustersLoss(), lambda: TripletLoss(), lambda: NPlusOneTupleLoss(),
                                  lambda: ContrastiveLoss()])
def test_empty_batch_gives_a_connected_zero(make):
    x = torch.zeros(0, 3, requires_grad=True)
    out = make()(x, torch.zeros(0, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert x.grad is not None and x.grad.shape == (0, 3)


def test_nm_tuple_all_unlabelled_and_groups_on_empty_batch():
    x = torch.randn(4, 3, requires_grad=True)
    out = NMTupleClustersLoss()(x, torch.full((4,), -1), groups=torch.tensor([0, 0, 1, 1]))
    assert out.item() == 0.0
    assert NMTupleClustersLoss()(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                                 groups=torch.zeros(0, dtype=torch.long)).item() == 0.0


# ------------------------------------------------------------------ bad inputs: error names loss and fix
def _x(n=6, d=4):
    return torch.randn(n, d)


BAD_INPUTS = [
    # (case, call, exception, message fragment)
    ("CAF critic labels 9 (class ids)", lambda: CAFCriticLoss()(_x(), torch.tensor([1, 0, 9, 1, 0, 1])),
     ValueError, r"CAFCriticLoss: labels must be a strong/weak indicator with values 0 \(weak\) or 1 \(strong\), got \[9\]"),
    ("CAF critic float intensities", lambda: CAFCriticLoss()(_x(), torch.tensor([0.4, 0.0, 1.0, 0.9, 0.0, 1.0])),
     ValueError, r"CAFCriticLoss: .* got \[0\.4"),
    ("CAF critic labels (B, 1)", lambda: CAFCriticLoss()(_x(), torch.ones(6, 1)), ValueError, r"CAFCriticLoss: labels must be a \(6,\)"),
    ("CAF critic embeddings 1-D", lambda: CAFCriticLoss()(torch.randn(6), torch.ones(6)), ValueError, r"CAFCriticLoss: embeddings must be \(B, d\)"),
    ("FisherIPM labels 2", lambda: FisherIPMLoss()(_x(), torch.tensor([2, 0, 1, 1, 0, 0])), ValueError, r"FisherIPMLoss: .*got \[2\]"),
    ("FisherIPM embeddings 3-D", lambda: FisherIPMLoss()(torch.randn(2, 3, 4), torch.ones(2)), ValueError, r"embeddings must be \(B,\) or \(B, d\)"),
    ("MMD critic labels -1", lambda: MMDCriticLoss()(_x(), torch.tensor([-1, 0, 1, 1, 0, 0])), ValueError, r"MMDCriticLoss: .*got \[-1\]"),
    ("MMD critic complex labels", lambda: MMDCriticLoss()(_x(), torch.ones(6, dtype=torch.complex64)), TypeError, r"MMDCriticLoss: labels must be a bool"),
    ("MarginMix class id 9 of 7", lambda: MarginMixLoss(7)(_x(), torch.tensor([0, 1, 9, 2, 3, 4])),
     ValueError, r"MarginMixLoss: class ids must lie in \[-1, 6\] .*got min 0, max 9; build the loss with num_classes=10"),
    ("MarginMix class id -2", lambda: MarginMixLoss(3)(_x(), torch.tensor([0, 1, -2, 2, 0, 1])), ValueError, r"MarginMixLoss: class ids must lie in \[-1, 2\]"),
    ("MarginMix float 1-D labels", lambda: MarginMixLoss(3)(_x(), torch.zeros(6)), TypeError, r"MarginMixLoss: labels as a 1-d tensor must be integer"),
    ("MarginMix negative soft target", lambda: MarginMixLoss(3)(_x(), -torch.ones(6, 3)), ValueError, r"MarginMixLoss: soft targets must be finite and >= 0"),
    ("MarginMix NaN soft target", lambda: MarginMixLoss(3)(_x(), torch.full((6, 3), float("nan"))), ValueError, r"MarginMixLoss: soft targets must be finite"),
    ("MarginMix integer soft targets", lambda: MarginMixLoss(3)(_x(), torch.ones(6, 3, dtype=torch.long)), TypeError, r"MarginMixLoss: soft targets .* must be floating point"),
    ("MarginMix soft targets (B, C+1)", lambda: MarginMixLoss(3)(_x(), torch.ones(6, 4)), ValueError, r"MarginMixLoss: labels must be \(N,\) class ids or \(N, 3\)"),
    ("MarginMix labels shorter than batch", lambda: MarginMixLoss(3)(_x(), torch.zeros(5, dtype=torch.long)), ValueError, r"MarginMixLoss: labels .* differ in length"),
    ("MarginMix memberships wrong shape", lambda: MarginMixLoss(3)(_x(), torch.zeros(6, dtype=torch.long), memberships=torch.ones(6, 2)),
     ValueError, r"MarginMixLoss: memberships must be \(6, 3\)"),
    ("MarginMix class_mask wrong shape", lambda: MarginMixLoss(3)(_x(), torch.zeros(6, dtype=torch.long), centroids=torch.randn(3, 4), class_mask=torch.ones(2, dtype=torch.bool)),
     ValueError, r"MarginMixLoss: class_mask must be \(3,\)"),
    ("MarginMix centroids wrong shape", lambda: MarginMixLoss(3)(_x(), torch.zeros(6, dtype=torch.long), centroids=torch.randn(3, 5)), ValueError, r"centroids must be \(3, 4\)"),
    ("MarginMix unknown distance", lambda: MarginMixLoss(3, "manhattan"), ValueError, r"MarginMixLoss: distance must be one of"),
    ("MarginMix one class", lambda: MarginMixLoss(1), ValueError, r"MarginMixLoss needs num_classes >= 2"),
    ("MarginMix embeddings 3-D", lambda: MarginMixLoss(3)(torch.randn(6, 2, 2), torch.zeros(6, dtype=torch.long)), ValueError, r"MarginMixLoss: embeddings must be \(batch, dim\)"),
    ("MarginMix reduction 'avg'", lambda: MarginMixLoss(3, reduction="avg"), ValueError, r"MarginMixLoss: reduction must be one of"),
    ("Center label 3 of 3", lambda: CenterLoss(3, 4)(_x(), torch.tensor([0, 1, 3, 2, 0, 1])), ValueError, r"CenterLoss: labels must lie in \[-1, 2\]"),
    ("Center float labels", lambda: CenterLoss(3, 4)(_x(), torch.zeros(6)), TypeError, r"CenterLoss: labels must be integer class ids \(use labels.long\(\)\)"),
    ("Center bool labels", lambda: CenterLoss(3, 4)(_x(), torch.zeros(6, dtype=torch.bool)), TypeError, r"CenterLoss: labels must be integer"),
    ("Center wrong embedding width", lambda: CenterLoss(3, 5)(_x(), torch.zeros(6, dtype=torch.long)), ValueError, r"CenterLoss: embeddings must be \(batch, 5\).*embedding_dim=4"),
    ("Center labels (B, 1)", lambda: CenterLoss(3, 4)(_x(), torch.zeros(6, 1, dtype=torch.long)), ValueError, r"CenterLoss: labels must be \(batch,\) = \(6,\)"),
    ("Center alpha 2", lambda: CenterLoss(3, 4, alpha=2.0), ValueError, r"CenterLoss: alpha \(centroid learning rate\) must be in \[0, 1\]"),
    ("Center update 'adam'", lambda: CenterLoss(3, 4, update="adam"), ValueError, r"CenterLoss: update must be one of"),
    ("Center NaN in a labelled row (train)", lambda: CenterLoss(3, 4).train()(torch.full((6, 4), float("nan")), torch.zeros(6, dtype=torch.long)),
     FloatingPointError, r"CenterLoss: non-finite embeddings in labelled rows; rows \[0, 1, 2, 3, 4, 5\]"),
    ("LargeMargin NaN in a labelled row (train)", lambda: LargeMarginLoss(3, 4).train()(torch.tensor([[float("nan")] * 4] + [[1.0] * 4] * 5), torch.zeros(6, dtype=torch.long)),
     FloatingPointError, r"LargeMarginLoss: non-finite embeddings in labelled rows; rows \[0\]"),
    ("LargeMargin one class", lambda: LargeMarginLoss(1, 4), ValueError, r"LargeMarginLoss needs num_classes >= 2"),
    ("LargeMargin pseudo_labels 5 of 3", lambda: LargeMarginLoss(3, 4)(_x(), torch.full((6,), -1), pseudo_labels=torch.full((6,), 5)),
     ValueError, r"LargeMarginLoss \(pseudo_labels\): labels must lie in \[-1, 2\]"),
    ("Island reduction none", lambda: IslandLoss(3, 4, reduction="none"), ValueError, r"IslandLoss has a batch-level island term"),
    ("Softmax label 4 of 3", lambda: SoftmaxLoss(3, 4)(_x(), torch.tensor([0, 1, 4, 2, 0, 1])), ValueError, r"SoftmaxLoss: labels must lie in \[-1, 2\]"),
    ("Softmax reduction 'max'", lambda: SoftmaxLoss(3, 4, reduction="max"), ValueError, r"SoftmaxLoss: reduction must be one of"),
    ("AngularMargin margin 30 (degrees)", lambda: AngularMarginLoss(4, 2, margin=30.0), ValueError, r"radians in \[0, pi\).*use math.radians"),
    ("AngularMargin overflow 'wrap'", lambda: AngularMarginLoss(4, 2, overflow="wrap"), ValueError, r"overflow must be one of"),
    ("AngularMargin scale 0", lambda: AngularMarginLoss(4, 2, scale=0.0), ValueError, r"scale s must be > 0"),
    ("AngularMargin domain label 2 of 2", lambda: AngularMarginLoss(4, 2)(_x(), torch.tensor([0, 1, 2, 0, 1, 0])), ValueError, r"AngularMarginLoss: labels must lie in \[-1, 1\]"),
    ("CosFace margin 3", lambda: CosFaceLoss(4, 3, margin=3.0), ValueError, r"cosine margin m must lie in \[0, 2\]"),
    ("Contrastive label -3", lambda: ContrastiveLoss()(_x(), torch.tensor([0, 1, -3, 2, 0, 1])), ValueError, r"ContrastiveLoss: labels must lie in >= -1"),
    ("Contrastive neg_margin < pos_margin", lambda: ContrastiveLoss(neg_margin=0.1, pos_margin=0.5), ValueError, r"neg_margin \(0.1\) must be >= pos_margin"),
    ("Contrastive power 3", lambda: ContrastiveLoss(power=3), ValueError, r"power must be 1"),
    ("Contrastive reduction 'median'", lambda: ContrastiveLoss(reduction="median"), ValueError, r"ContrastiveLoss: reduction must be one of \('mean_nonzero', 'mean', 'sum', 'none'\)"),
    ("Triplet embeddings 1-D", lambda: TripletLoss()(torch.randn(6), torch.zeros(6, dtype=torch.long)), ValueError, r"TripletLoss: embeddings must be \(batch, dim\).*flatten"),
    ("Triplet triplets (T, 2)", lambda: TripletLoss()(_x(), torch.zeros(6, dtype=torch.long), triplets=torch.zeros(3, 2, dtype=torch.long)), ValueError, r"TripletLoss: triplets must be \(T, 3\)"),
    ("Triplet triplet through a -1 row", lambda: TripletLoss()(_x(), torch.tensor([0, 0, 1, -1, 1, 0]), triplets=torch.tensor([[0, 1, 3]])),
     ValueError, r"TripletLoss: triplets use a row labelled -1"),
    ("Triplet power 3", lambda: TripletLoss(power=3), ValueError, r"TripletLoss: power must be 1 or 2"),
    ("(N+1) pairs and groups together", lambda: NPlusOneTupleLoss()(_x(), torch.zeros(6, dtype=torch.long), groups=torch.zeros(6, dtype=torch.long), pairs=torch.zeros(1, 2, dtype=torch.long)),
     ValueError, r"pass either groups or pairs"),
    ("(N+1) negative_mask wrong shape", lambda: NPlusOneTupleLoss()(_x(), torch.zeros(6, dtype=torch.long), pairs=torch.tensor([[0, 1]]), negative_mask=torch.ones(1, 5, dtype=torch.bool)),
     ValueError, r"negative_mask must be \(P, B\) = \(1, 6\)"),
    ("(N+1) pair through a -1 row", lambda: NPlusOneTupleLoss()(_x(), torch.tensor([0, -1, 1, 1, 0, 0]), pairs=torch.tensor([[0, 1]])),
     ValueError, r"NPlusOneTupleLoss: pairs or negative_mask use a row labelled -1"),
    ("(N+1) groups wrong shape", lambda: NPlusOneTupleLoss()(_x(), torch.zeros(6, dtype=torch.long), groups=torch.zeros(4, dtype=torch.long)),
     ValueError, r"groups must have the shape of labels \(6,\), got \(4,\)"),
    ("CoupledClusters groups wrong shape", lambda: CoupledClustersLoss()(_x(), torch.zeros(6, dtype=torch.long), groups=torch.zeros(5, dtype=torch.long)),
     ValueError, r"groups must have the shape of labels"),
    ("NMTuple adaptive without embedding_dim", lambda: NMTupleClustersLoss(adaptive=True), ValueError, r"needs embedding_dim="),
    ("NMTuple tau -1", lambda: NMTupleClustersLoss(tau=-1.0), ValueError, r"tau must be >= 0"),
    ("NMTuple form 'eq9'", lambda: NMTupleClustersLoss(adaptive=True, embedding_dim=4, form="eq9"), ValueError, r"form must be one of"),
    ("NMTuple float labels", lambda: NMTupleClustersLoss()(_x(), torch.zeros(6)), TypeError, r"NMTupleClustersLoss: labels must be integer"),
    ("VA regression (B, 3) predictions", lambda: VARegressionLoss()(torch.randn(6, 3), torch.randn(6, 3)), ValueError, r"VARegressionLoss: need predictions and va labels of shape \(B, 2\)"),
    ("CAF margin 'huge'", lambda: CAFCriticLoss(margin="huge"), ValueError, r"unknown margin 'huge'"),
    ("CAF positive_weight 0", lambda: CAFCriticLoss(positive_weight=0.0), ValueError, r"positive_weight must be > 0"),
]


@pytest.mark.parametrize("case,call,exc,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_indicator_accepts_bool_int_and_float_zero_one_alike():
    z, _ = _batch(n=8)
    lab = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0])
    for loss in (CAFCriticLoss(bandwidth=1.0), FisherIPMLoss(), MMDCriticLoss()):
        ref = loss(z, lab.bool())
        torch.testing.assert_close(loss(z, lab), ref)
        torch.testing.assert_close(loss(z, lab.double()), ref)


# ------------------------------------------------------------------ angular margin: mutations that survived
@pytest.mark.parametrize("overflow", ["arcface", "easy", "none"])
def test_angular_margin_gradient_finite_where_cos_is_plus_or_minus_one(overflow):
    cos = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, 0.2], [1.0, 1.0, -1.0]], dtype=D64, requires_grad=True)
    y = torch.tensor([0, 0, 2])     # the ground-truth cosine is +1, -1 and -1
    out = angular_margin_logits(cos, y, scale=4.0, margin=0.5, overflow=overflow)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()
    # and through the whole loss, an embedding on (or opposite to) its class weight
    loss = AngularMarginLoss(3, 2, scale=8.0, margin=0.5, overflow=overflow).double()
    w = loss.weight.detach()
    x = torch.stack([w[0], -w[1], 2 * w[1]]).requires_grad_(True)
    val = loss(x, torch.tensor([0, 1, 1]))
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("overflow", ["arcface", "easy", "none"])
@pytest.mark.parametrize("gap", [1e-9, 1e-12, 1e-15])
def test_angular_margin_gradient_stays_bounded_next_to_cos_plus_or_minus_one(overflow, gap):
    """``sin rho = sqrt(max(1 - cos^2, eps))``: next to ``cos = +-1`` the margin logit's slope is at most
    ``s (cos m + sin m)``; without the floor ``d sin / d cos = -cos / sin`` grows like ``1 / sqrt(gap)``."""
    cos = torch.tensor([[1.0 - gap, 0.1], [-1.0 + gap, 0.1]], dtype=D64, requires_grad=True)
    out = angular_margin_logits(cos, torch.tensor([0, 0]), scale=2.0, margin=0.5, overflow=overflow)
    out[:, 0].sum().backward()
    assert torch.isfinite(cos.grad).all()
    assert cos.grad.abs().max() <= 2.0 * (math.cos(0.5) + math.sin(0.5))


def test_zero_margin_is_the_scaled_angular_softmax():
    x, y = _batch(c=2)
    loss = AngularMarginLoss(4, 2, scale=64.0, margin=0.0).double()
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    torch.testing.assert_close(loss.logits(x, y), 64.0 * cos)
    torch.testing.assert_close(angular_margin_logits(cos, y, scale=64.0, margin=0.0), 64.0 * cos)
    torch.testing.assert_close(loss(x, y), reference_arcface(x, loss.weight.detach(), y, 64.0, 0.0).mean())
    torch.testing.assert_close(loss(x, y), F.cross_entropy(64.0 * cos, y))


def test_unlabelled_rows_get_no_margin():
    x, y = _batch(c=2)
    y = y.clone()
    y[[1, 4]] = -1
    loss = AngularMarginLoss(4, 2, scale=16.0, margin=0.5).double()
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    for logits in (loss.logits(x, y), angular_margin_logits(cos, y, 16.0, 0.5)):
        torch.testing.assert_close(logits[[1, 4]], 16.0 * cos[[1, 4]])
        assert not torch.allclose(logits[[0, 2]], 16.0 * cos[[0, 2]])


# ------------------------------------------------------------------ CAF default bandwidth (median |z|)
def test_caf_default_bandwidth_is_the_median_of_abs_z():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 6, generator=g, dtype=D64) * torch.linspace(0.2, 3.0, 6, dtype=D64)  # mean |z| != median
    strong = torch.arange(16) % 2 == 0
    mi, eta = gaussian_mi(z[strong], z[~strong])
    want_mi, want_eta = reference_gaussian_mi(z, strong)
    assert eta.item() == pytest.approx(want_eta, rel=1e-9) and mi.item() == pytest.approx(want_mi, rel=1e-9)
    mean_sigma = float(z.abs().mean())
    assert abs(reference_gaussian_mi(z, strong, mean_sigma)[1] - want_eta) > 1e-3   # the test can tell them apart
    loss = CAFCriticLoss(margin="constant")
    got = loss(z, strong)
    want, alpha = reference_caf_critic(z, strong, margin="constant")
    assert loss.last["alpha"].item() == pytest.approx(alpha, rel=1e-9)
    assert got.item() == pytest.approx(float(want), rel=1e-9)


# ------------------------------------------------------------------ Margin-Mix: absent classes, RBF, cosine
def test_margin_mix_absent_class_stays_out_of_the_push_term():
    g = torch.Generator().manual_seed(5)
    e = torch.randn(10, 4, generator=g, dtype=D64)
    y = torch.tensor([0, 1, 0, 3, 1, 3, 0, 1, 3, 3])          # classes 2 and 4 of 5 are absent
    t = F.one_hot(y, 5).to(D64)
    e_hat = normalise(e)
    cents = (t.T @ e_hat) / t.sum(0).clamp_min(1)[:, None]    # Eq. 1 centroids of the normalised rows
    want = reference_margin_mix(e, t, cents, squared=True, present=[0, 1, 3])
    torch.testing.assert_close(MarginMixLoss(5)(e, y), want)
    # the same absent class with explicit centroids and class_mask
    mask = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(MarginMixLoss(5)(e, y, centroids=cents, class_mask=mask), want)


@pytest.mark.parametrize("distance,gamma", [("rbf", 0.7), ("rbf", 2.0), ("cosine", 1.0), ("euclidean", 1.0)])
def test_margin_mix_eq4_distances_match_the_kernel_written_out(distance, gamma):
    g = torch.Generator().manual_seed(6)
    e = torch.randn(7, 3, generator=g, dtype=D64) * 2.0
    mu = torch.rand(7, 3, generator=g, dtype=D64)
    loss = MarginMixLoss(3, distance, normalize=False, gamma=gamma)
    d2, present = loss.distance_matrix(e, memberships=mu)
    torch.testing.assert_close(d2, reference_kernel_centroid_sq_distances(e, mu, distance, gamma))
    assert present.all()


def test_generalised_pairwise_distances_against_their_definitions():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(5, 3, generator=g, dtype=D64) * 3, torch.randn(4, 3, generator=g, dtype=D64) * 0.5
    sq = torch.cdist(a, b).pow(2)
    torch.testing.assert_close(pairwise_sq_distances(a, b), sq)
    torch.testing.assert_close(pairwise_sq_distances(a, b, "rbf", gamma=0.3), 2 - 2 * torch.exp(-0.3 * sq))
    cos = F.cosine_similarity(a[:, None], b[None], dim=-1)
    torch.testing.assert_close(pairwise_sq_distances(a, b, "cosine"), 2 - 2 * cos)
    self_d = pairwise_sq_distances(a, None, "rbf")
    assert (self_d.diagonal() == 0).all()
    with pytest.raises(ValueError, match="distance must be one of"):
        pairwise_sq_distances(a, b, "l1")


def test_show_source_compute_needs_no_offsets():
    """Each loss's equations sit in its compute method: show_source shows them without string offsets."""
    from fer_nb.show import show_source

    text = show_source(TripletLoss.compute, docstring=False)
    assert text.lstrip().startswith("def compute(") and "F.relu(d[a, p] - d[a, n] + self.margin)" in text
    assert '"""' not in text and "check_batch" not in text
    assert '"""The hinge' in show_source(TripletLoss.compute)
    start = show_source(TripletLoss, start="    def compute")
    assert start.startswith("    def compute") and "def forward" not in start


# ------------------------------------------------------------------ gaps found by the mutation run (mutmut)
@pytest.mark.parametrize("n,seed", [(11, 6), (9, 2), (2, 0)])
def test_caf_code_pairs_with_active_hinges(n, seed):
    """``pairs="code"``: (s_i, s_{m-1-i}) pulled, (s_i, w_{m-1-i}) pushed; a margin wide enough that
    every pushed pair is inside it, so each cross pair shows in the value (and ``m = 1`` is not empty)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=D64)
    lab = (torch.arange(n) % 2 == 0).long() if n > 2 else torch.tensor([1, 0])
    loss_fn = CAFCriticLoss(margin="constant", kappa=100.0, bandwidth=1.0, pairs="code")
    got = loss_fn(z, lab)
    alpha = loss_fn.last["alpha"].item()
    s = [i for i in range(n) if lab[i] == 1]
    w = [i for i in range(n) if lab[i] == 0]
    m = min(len(s), len(w))
    pos = [float((z[s[i]] - z[s[m - 1 - i]]).pow(2).sum()) for i in range(m) if i != m - 1 - i]
    neg = [alpha - float((z[s[i]] - z[w[m - 1 - i]]).pow(2).sum()) for i in range(m)]
    assert min(neg) > 0
    assert got.item() == pytest.approx(sum(pos) / max(1, len(pos)) + 0.5 * sum(neg) / m, rel=1e-9)


def test_confidence_delta_domain_and_dtype():
    from fer_nb.losses.caf_critic import confidence_delta

    one = confidence_delta(1, 1)
    assert one.dtype == D64 and one.item() == pytest.approx(math.log(1 / 0.05) / 2, rel=1e-15)
    for n, k in [(0, 1), (5, 0)]:
        with pytest.raises(ValueError, match="Delta"):
            confidence_delta(n, k)


def test_nplus1_groups_keep_class_zero_negatives_and_a_last_row_positive():
    x, _ = _batch(n=4)
    y = torch.tensor([1, 0, 2, 1])          # query 0 (class 1), its positive is the last row, negatives 1 and 2
    groups = torch.zeros(4, dtype=torch.long)

    def d(i, j):
        return float((x[i] - x[j]).pow(2).sum())

    want = math.log(1 + math.exp(d(0, 3) + 0.1 - d(0, 1)) + math.exp(d(0, 3) + 0.1 - d(0, 2)))
    assert NPlusOneTupleLoss(margin=0.1)(x, y, groups=groups).item() == pytest.approx(want, rel=1e-12)


def test_eq11_paper_variant_is_the_diagonal_of_the_normalisation_jacobian():
    from fer_nb.losses.margin_mix_loss import eq11_gradient

    g = torch.Generator().manual_seed(9)
    e = torch.randn(5, 4, dtype=D64, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    c = torch.randn(3, 4, dtype=D64, generator=g)
    e_hat = normalise(e).requires_grad_(True)
    c_hat = normalise(c)
    per = (e_hat[:, None] - c_hat[None]).pow(2).sum(-1)                 # squared distances (5, 3)
    own = per.gather(1, y[:, None]).squeeze(1)
    (g_hat,) = torch.autograd.grad((own - (per.sum(1) - own) / 2).sum(), e_hat)   # dL/de_hat
    diag = torch.stack([torch.autograd.functional.jacobian(normalise, e[i]).diagonal() for i in range(5)])
    torch.testing.assert_close(eq11_gradient(e, y, c, exact_jacobian=False), g_hat * diag)


def bad_input_table() -> str:
    """The Markdown rows ``| case | error |`` of :data:`BAD_INPUTS`, as the reliability page lists them."""
    rows = ["| loss input | error |", "|---|---|"]
    for case, call, exc, _ in BAD_INPUTS:
        try:
            call()
            message = "no error"
        except exc as err:
            message = f"`{type(err).__name__}`: {err}"
        rows.append(f"| {case} | {message.replace('|', '/')} |")
    return "\n".join(rows)


def test_bad_input_table_has_a_row_and_an_error_per_case():
    table = bad_input_table()
    assert table.count("\n") == len(BAD_INPUTS) + 1 and "no error" not in table and table.count("Error`: ") == len(BAD_INPUTS)


if __name__ == "__main__":      # python tests/test_losses_robustness.py  -> the table for book/reliability.md
    print(bad_input_table())


def test_the_reliability_page_lists_every_loss_case():
    """book/reliability.md shows every case of BAD_INPUTS (regenerate with python tests/test_losses_robustness.py)."""
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "book" / "reliability.md").read_text()
    missing = [case for case, *_ in BAD_INPUTS if f"| {case} |" not in page]
    assert not missing, f"book/reliability.md lacks these loss cases: {missing}"


# ------------------------------------------------------------------ loop references keep their loss's defaults
def _reference_default_cases():
    """(name, vectorised loss with its constructor defaults, loop reference with its own defaults)."""
    from fer_nb.losses import circle, contrastive, cosface, lifted_structure, multi_similarity, npair, proxy_anchor
    from fer_nb.losses import n_plus_one_tuple, nm_tuple_clusters, proxy_nca, softmax, sphereface, supcon, triplet
    from fer_nb.losses import center, coupled_clusters, large_margin_loss

    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, dtype=D64, generator=g)
    y = torch.arange(12) % 3

    def with_centres(loss):
        loss = loss.double().eval()
        loss.centers.copy_(torch.randn(3, 5, dtype=D64, generator=g))
        return loss

    arc, cos_ = AngularMarginLoss(5, 3).double(), CosFaceLoss(5, 3).double()
    ctr, lmg = with_centres(CenterLoss(3, 5)), with_centres(LargeMarginLoss(3, 5))
    pa, pn = proxy_anchor.ProxyAnchorLoss(5, 3).double(), proxy_nca.ProxyNCALoss(5, 3).double()
    sm, sf = softmax.SoftmaxLoss(3, 5).double(), sphereface.SphereFaceLoss(5, 3).double()
    y_pairs = torch.arange(6).repeat_interleave(2)
    pairs = torch.stack([torch.arange(0, 12, 2), torch.arange(1, 12, 2)], 1)
    return [
        ("arcface", lambda: arc(x, y), lambda: reference_arcface(x, arc.weight, y).mean()),
        ("cosface", lambda: cos_(x, y), lambda: cosface.reference_cosface(x, cos_.weight, y).mean()),
        ("center", lambda: ctr(x, y), lambda: center.reference_center(x, y, ctr.centers)),
        ("large margin", lambda: lmg(x, y), lambda: large_margin_loss.reference_large_margin(x, y, lmg.centers)),
        ("circle", lambda: circle.CircleLoss()(x, y), lambda: circle.circle_loop(x, y)),
        ("contrastive", lambda: ContrastiveLoss()(x, y), lambda: contrastive.reference_contrastive(x, y)),
        ("coupled clusters", lambda: CoupledClustersLoss()(x, y), lambda: coupled_clusters.reference_coupled_clusters(x, y)),
        ("lifted structure", lambda: lifted_structure.LiftedStructureLoss()(x, y),
         lambda: lifted_structure.lifted_structure_loop(x, y)),
        ("multi-similarity", lambda: multi_similarity.MultiSimilarityLoss()(x, y),
         lambda: multi_similarity.multi_similarity_loop(x, y)),
        ("(N+1)-tuple", lambda: NPlusOneTupleLoss()(x, y), lambda: n_plus_one_tuple.reference_n_plus_one(x, y)),
        ("(N+M)-tuple clusters", lambda: NMTupleClustersLoss()(x, y), lambda: nm_tuple_clusters.reference_nm_tuple(x, y)),
        ("triplet", lambda: TripletLoss()(x, y), lambda: triplet.reference_triplet(x, y)),
        ("SupCon", lambda: supcon.SupConLoss()(x, y), lambda: supcon.supcon_loop(x, y)),
        ("Proxy-Anchor", lambda: pa(x, y), lambda: proxy_anchor.proxy_anchor_loop(x, y, pa.proxies)),
        ("ProxyNCA", lambda: pn(x, y), lambda: proxy_nca.proxy_nca_loop(x, y, pn.proxies)),
        ("softmax", lambda: sm(x, y), lambda: softmax.reference_softmax(x, y, sm.weight, sm.bias)),
        ("SphereFace", lambda: sf(x, y), lambda: sphereface.sphereface_loop(x, y, sf.weight)),
        ("N-pair", lambda: npair.NPairLoss()(x, y_pairs), lambda: npair.npair_loop(x, pairs)),
        ("CAF critic", lambda: CAFCriticLoss()(x, (y == 0).long()), lambda: reference_caf_critic(x, y == 0)[0]),
    ]


@pytest.mark.parametrize("case", range(19))
def test_each_loop_reference_with_its_defaults_equals_its_loss_with_the_loss_defaults(case):
    """The loop references are the book's second implementation of each loss (the chapters and
    ``benchmarks/loss_loops.py`` call them with few arguments), so their defaults must be the loss's."""
    cases = _reference_default_cases()
    assert len(cases) == 19
    name, loss, loop = cases[case]
    torch.testing.assert_close(loss().double(), loop().double(), rtol=1e-9, atol=1e-12, msg=name)


def test_gaussian_mi_reference_default_cap_and_the_eta_clamp():
    """Identical strong and weak features: eta = 1, so -1/2 log(1 - eta^2) is infinite without the
    clamp at 1 - 1e-6 (6.9 nats) and the default cap mi_max = 2.5 applies, in both implementations."""
    z = torch.randn(4, 6, dtype=D64, generator=torch.Generator().manual_seed(1))
    both = torch.cat([z, z])
    strong = torch.tensor([True] * 4 + [False] * 4)
    mi, eta = reference_gaussian_mi(both, strong)
    assert (mi, eta) == (2.5, pytest.approx(1.0))
    assert gaussian_mi(z, z)[0].item() == pytest.approx(2.5)
    mi, _ = reference_gaussian_mi(both, strong, mi_max=100.0)
    assert mi == pytest.approx(-0.5 * math.log(1e-6))


def test_npair_without_pairs_is_exactly_zero_and_keeps_the_graph():
    x = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    from fer_nb.losses.npair import NPairLoss

    out = NPairLoss()(x, torch.arange(4))          # four distinct labels: no anchor/positive pair
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_cosine_classifier_base_names_the_missing_method():
    from fer_nb.losses.angular_margin import CosineClassifierLoss

    class Bare(CosineClassifierLoss):
        pass

    with pytest.raises(NotImplementedError, match=r"^Bare must define margin_logits\(cosine, labels\)$"):
        Bare(4, 3, 1.0, "mean")(torch.randn(5, 4), torch.arange(5) % 3)


def test_island_repr_adds_lambda1_to_the_centre_loss_repr():
    loss = IslandLoss(3, 4, lambda1=0.25)
    assert repr(loss).endswith("alpha=0.5, lambda1=0.25)") and "num_classes=3" in repr(loss)


def test_kernel_centroid_reference_default_gamma_is_the_loss_default():
    g = torch.Generator().manual_seed(4)
    e, mu = torch.randn(6, 3, generator=g, dtype=D64), torch.rand(6, 2, generator=g, dtype=D64)
    d2, _ = MarginMixLoss(2, "rbf", normalize=False).distance_matrix(e, memberships=mu)
    torch.testing.assert_close(d2, reference_kernel_centroid_sq_distances(e, mu, "rbf"))


# ------------------------------------------------------------------ more gaps found by the sampled mutation run
def _named_losses():
    from fer_nb.losses.circle import CircleLoss
    from fer_nb.losses.normface import NormFaceLoss
    from fer_nb.losses.proxy_anchor import ProxyAnchorLoss
    from fer_nb.losses.proxy_nca import ProxyNCALoss
    from fer_nb.losses.supcon import SupConLoss

    return {"CircleLoss": CircleLoss(), "CoupledClustersLoss": CoupledClustersLoss(), "SupConLoss": SupConLoss(),
            "ProxyAnchorLoss": ProxyAnchorLoss(4, 3), "ProxyNCALoss": ProxyNCALoss(4, 3),
            "NormFaceLoss": NormFaceLoss(4, 3), "TripletLoss": TripletLoss(), "ContrastiveLoss": ContrastiveLoss()}


@pytest.mark.parametrize("name", ["CircleLoss", "CoupledClustersLoss", "SupConLoss", "ProxyAnchorLoss", "ProxyNCALoss",
                                  "NormFaceLoss", "TripletLoss", "ContrastiveLoss"])
def test_a_bad_batch_error_starts_with_the_loss_class_name(name):
    loss = _named_losses()[name]
    with pytest.raises(ValueError, match=rf"^{name}: embeddings must be "):
        loss(torch.randn(4, 4, 1), torch.arange(4) % 3)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        loss(torch.randn(4, 4), torch.arange(3))


def test_class_weight_losses_check_the_label_range_against_num_classes():
    from fer_nb.losses.normface import NormFaceLoss

    with pytest.raises(ValueError, match=r"^NormFaceLoss: "):
        NormFaceLoss(4, 3)(torch.randn(2, 4), torch.tensor([0, 3]))


def test_one_dimensional_embeddings_are_allowed_and_defaults_are_published_values():
    from fer_nb.losses.normface import NormFaceLoss
    from fer_nb.losses.sphereface import SphereFaceLoss

    assert NormFaceLoss(1, 3).embedding_dim == 1 and SoftmaxLoss(3, 1).embedding_dim == 1
    assert NormFaceLoss(4, 3).scale == pytest.approx(16.0)          # Wang et al. 2017's default s
    for bad in ({"lam": -1.0}, {"scale": 0.0}):
        with pytest.raises(ValueError, match="SphereFaceLoss"):
            SphereFaceLoss(4, 3, **bad)


def test_proxy_anchor_accepts_sum_and_inits_follow_their_published_scales():
    from fer_nb.losses.proxy_anchor import ProxyAnchorLoss
    from fer_nb.losses.proxy_nca import ProxyNCALoss

    x, y = torch.randn(6, 4), torch.arange(6) % 3
    pa = ProxyAnchorLoss(4, 3, reduction="sum")
    assert torch.isfinite(pa(x, y))
    torch.manual_seed(0)
    d = 256
    proxies = ProxyNCALoss(d, 50).proxies.detach()
    assert proxies.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.05)        # randn / sqrt(D)
    w = SoftmaxLoss(50, d).weight.detach()
    assert w.abs().max().item() <= 1 / math.sqrt(d) and w.abs().max().item() > 0.99 / math.sqrt(d)  # nn.Linear's U(-1/sqrt(D), 1/sqrt(D))


def test_softmax_logits_stay_float32_under_bf16_autocast_and_take_bf16_features():
    loss = SoftmaxLoss(3, 4)
    x = torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss.logits(x).dtype == torch.float32
    out = loss.logits(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.bfloat16().float() @ loss.weight.T + loss.bias)


def test_cosface_uses_its_own_margin():
    from fer_nb.losses.cosface import reference_cosface

    loss = CosFaceLoss(4, 3, scale=8.0, margin=0.2)
    x, y = torch.randn(6, 4, dtype=D64), torch.arange(6) % 3
    loss = loss.double()
    torch.testing.assert_close(loss(x, y), reference_cosface(x, loss.weight, y, 8.0, 0.2).mean())


def test_multi_similarity_mining_matches_its_loop_on_an_asymmetric_batch():
    from fer_nb.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loop

    g = torch.Generator().manual_seed(12)
    x = torch.randn(15, 6, dtype=D64, generator=g)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 1])
    for eps in (0.1, 0.5):
        torch.testing.assert_close(MultiSimilarityLoss(mining=True, epsilon=eps)(x, y),
                                   multi_similarity_loop(x, y, mining=True, epsilon=eps))


def test_multi_similarity_mining_drops_a_positive_exactly_as_similar_as_the_hardest_negative():
    """The strict inequality of Wang et al. (Eq. 5): S_ip < max_k S_ik + eps keeps a positive."""
    from fer_nb.losses.multi_similarity import ms_pair_mining

    sim = torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.2], [0.5, 0.2, 1.0]])
    pos = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    neg = torch.tensor([[False, False, True], [False, False, True], [True, True, False]])
    keep_pos, keep_neg = ms_pair_mining(sim, pos, neg, epsilon=0.0)
    assert not keep_pos[0, 1] and not keep_neg[0, 2]      # 0.5 < 0.5 and 0.5 > 0.5 are both false
    assert not keep_pos[1, 0] and not keep_neg[1, 2]      # an easy positive (0.5 > 0.2) and an easy negative
    keep_pos, keep_neg = ms_pair_mining(sim, pos, neg, epsilon=0.01)
    assert keep_pos[0, 1] and keep_neg[0, 2]


def test_caf_critic_with_two_strong_rows_matches_its_reference_and_the_collapse_test_runs():
    """Two strong rows: one strong-strong pair (the smallest batch the loss and the collapse test accept)."""
    from fer_nb.losses.caf_critic import collapse_eigenvalue

    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 3, dtype=D64, generator=g)
    strong = torch.tensor([1, 0, 0, 1, 0, 0])
    want, _ = reference_caf_critic(z, strong.bool())
    torch.testing.assert_close(CAFCriticLoss()(z, strong), want)
    value = collapse_eigenvalue(torch.randn(6, 2, dtype=D64, generator=g), strong)
    assert torch.isfinite(value) and value > 0


def test_fisher_ipm_default_rho_and_fp32_math_under_autocast():
    loss = FisherIPMLoss()
    assert loss.rho == 1e-6
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 4, generator=g), torch.tensor([0, 1] * 5)
    plain = FisherIPMLoss()(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = FisherIPMLoss()(x, y)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain, rtol=1e-6, atol=1e-7)


def test_island_loss_messages_and_its_term_in_fp32_for_bf16_centres():
    with pytest.raises(ValueError, match=r"^IslandLoss has a batch-level island term; use reduction='mean' or 'sum'$"):
        IslandLoss(3, 4, reduction="none")
    loss = IslandLoss(3, 4).to(torch.bfloat16)
    term = loss.island_term()
    assert term.dtype == torch.float32
    from fer_nb.losses.island import reference_island_term

    torch.testing.assert_close(term, reference_island_term(loss.centers.float()), rtol=1e-5, atol=1e-6)


def test_lifted_structure_normalize_option_is_the_loop_on_unit_vectors():
    from fer_nb.losses.lifted_structure import LiftedStructureLoss, lifted_structure_loop

    x, y = torch.randn(10, 4, dtype=D64, generator=torch.Generator().manual_seed(8)), torch.arange(10) % 3
    torch.testing.assert_close(LiftedStructureLoss(normalize=True)(x, y),
                               lifted_structure_loop(F.normalize(x, dim=1), y))


def test_multi_similarity_refuses_a_zero_beta_with_its_message():
    from fer_nb.losses.multi_similarity import MultiSimilarityLoss

    with pytest.raises(ValueError, match=r"^MultiSimilarityLoss: alpha and beta must be > 0, got 2.0, 0.0$"):
        MultiSimilarityLoss(beta=0.0)


def test_supcon_reductions_sum_and_none_against_its_loop():
    from fer_nb.losses.supcon import SupConLoss, supcon_loop

    x = torch.randn(9, 4, dtype=D64, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, -1])          # class 3 and the -1 row have no positive
    mean = supcon_loop(x, y)
    anchors = 7
    torch.testing.assert_close(SupConLoss(reduction="sum")(x, y), mean * anchors)
    per = SupConLoss(reduction="none")(x, y)
    assert per.shape == (9,) and per[7] == 0 and per[8] == 0
    torch.testing.assert_close(per.sum() / anchors, mean)


def test_loop_references_handle_unlabelled_rows_empty_batches_and_reductions():
    """The references' own edge cases (they are the oracles of the vectorised losses, so they must
    be right there too): -1 rows in the middle, an empty batch, one labelled row, reduction="none"."""
    from fer_nb.losses.center import reference_center
    from fer_nb.losses.softmax import reference_softmax
    from fer_nb.losses.supcon import supcon_loop
    from fer_nb.losses.triplet import reference_triplet

    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4, dtype=D64, generator=g)
    y = torch.tensor([0, -1, 2, -1, 1])
    arc = AngularMarginLoss(4, 3, scale=4.0, margin=0.3, reduction="none").double()
    per = reference_arcface(x, arc.weight, y, 4.0, 0.3)
    torch.testing.assert_close(per, arc(x, y))
    assert per.shape == (5,) and per[1] == 0 and per[3] == 0 and per[4] > 0

    sm = SoftmaxLoss(3, 4, bias=False, reduction="none").double()
    torch.testing.assert_close(reference_softmax(x, y, sm.weight, None, reduction="none"), sm(x, y))
    one = torch.tensor([-1, -1, 2, -1, -1])
    torch.testing.assert_close(reference_softmax(x, one, sm.weight, None), sm(x, one).sum())
    empty = x[:0]
    assert reference_softmax(empty, y[:0], sm.weight, None, reduction="none").shape == (0,)
    assert reference_softmax(empty, y[:0], sm.weight, None).item() == 0.0
    assert reference_center(empty, y[:0], torch.zeros(3, 4, dtype=D64), reduction="none").shape == (0,)

    yt = torch.tensor([0, 0, 1, 1, 0])
    tl = TripletLoss(margin=1.0, reduction="none")(x, yt)
    torch.testing.assert_close(reference_triplet(x, yt, reduction="none"), tl)

    no_pos = supcon_loop(x, torch.arange(5))
    assert no_pos.shape == () and no_pos.item() == 0.0


def test_lifted_structure_loop_with_a_single_positive_pair():
    from fer_nb.losses.lifted_structure import LiftedStructureLoss, lifted_structure_loop

    x = torch.randn(5, 3, dtype=D64, generator=torch.Generator().manual_seed(9))
    y = torch.tensor([0, 0, 1, 2, 3])
    want = lifted_structure_loop(x, y)
    torch.testing.assert_close(LiftedStructureLoss()(x, y), want)
    assert want > 0


def test_margin_mix_reference_normalises_targets_that_do_not_sum_to_one():
    g = torch.Generator().manual_seed(10)
    e, c = torch.randn(4, 3, dtype=D64, generator=g), torch.randn(3, 3, dtype=D64, generator=g)
    t = torch.rand(4, 3, dtype=D64, generator=g) * 3          # row sums far from 1
    got = reference_margin_mix(e, t, c)
    unit = reference_margin_mix(e, t / t.sum(1, keepdim=True), c)
    torch.testing.assert_close(got, unit)


def test_mmd_critic_one_strong_row_and_a_small_median_bandwidth_by_hand():
    z = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.4]], dtype=D64)      # pairwise distances 0.3, 0.4, 0.5
    strong = torch.tensor([1, 0, 0])
    sigma = 0.4                                                             # their median (< 1)
    k = lambda a, b: math.exp(-((a - b) ** 2).sum().item() / (2 * sigma ** 2))  # noqa: E731
    k_pp = 1.0
    k_qq = (2 + 2 * k(z[1], z[2])) / 4
    k_qp = (k(z[1], z[0]) + k(z[2], z[0])) / 2
    got = MMDCriticLoss(kind="mmd")(z, strong)
    assert got.item() == pytest.approx(-(k_pp + k_qq - 2 * k_qp), rel=1e-12)


def test_npair_checks_given_pairs():
    from fer_nb.losses.npair import NPairLoss

    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^NPairLoss: pairs must be \(N, 2\) anchor/positive rows, got \(2,\)$"):
        NPairLoss()(x, y, pairs=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="each pair must share a label"):
        NPairLoss()(x, torch.arange(4), pairs=torch.tensor([[0, 1], [2, 3]]))   # anchor 0 and positive 1 differ


def test_check_batch_names_the_loss():
    from fer_nb.losses.common import check_batch

    with pytest.raises(ValueError, match=r"^PairLoss: labels must be"):
        check_batch(torch.randn(3, 2), torch.zeros(2, dtype=torch.long), "PairLoss")
    with pytest.raises(ValueError, match=r"^PairLoss: embeddings must be"):
        check_batch(torch.randn(3), torch.zeros(3, dtype=torch.long), "PairLoss")


def test_triplet_error_for_unlabelled_rows_in_given_triplets():
    with pytest.raises(ValueError, match=r"^TripletLoss: triplets use a row labelled -1 \(ignored\); drop those "
                                         r"triplets or give the row a label$"):
        TripletLoss()(torch.randn(3, 2), torch.tensor([0, 0, -1]), triplets=torch.tensor([[0, 1, 2]]))


def test_circle_loop_matches_the_loss_at_a_small_scale_where_the_one_in_log1p_matters():
    from fer_nb.losses.circle import CircleLoss, circle_loop

    x = torch.randn(8, 3, dtype=D64, generator=torch.Generator().manual_seed(13))
    y = torch.arange(8) % 3
    torch.testing.assert_close(CircleLoss(m=0.25, gamma=1.0)(x, y), circle_loop(x, y, 0.25, 1.0), rtol=1e-12, atol=0)


def test_mmd_critic_with_one_group_only_is_zero_with_a_zero_gradient():
    z = torch.randn(4, 3, dtype=D64, requires_grad=True)
    for strong in (torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)):
        for kind in ("mmd", "gramnet"):
            out = MMDCriticLoss(kind=kind)(z, strong)
            assert out.item() == 0.0
            (grad,) = torch.autograd.grad(out, z)
            assert torch.equal(grad, torch.zeros_like(z))


@pytest.mark.parametrize("scale", [0.15, 0.3, 1.0])
def test_caf_critic_adaptive_margin_walk_matches_its_reference_when_many_distances_are_small(scale):
    """Eq. 8's walk ``d_(k) < MI + Delta(N, k)`` over the sorted strong-weak distances: at small scales
    many distances pass the first thresholds, so K > 1 and each threshold's ``2 (k + 1)`` matters."""
    z = scale * torch.randn(12, 5, dtype=D64, generator=torch.Generator().manual_seed(21))
    strong = (torch.arange(12) % 3 == 0).long()
    loss_fn = CAFCriticLoss()
    got = loss_fn(z, strong)
    want, alpha = reference_caf_critic(z, strong.bool())
    torch.testing.assert_close(got, want)
    assert loss_fn.last["alpha"].item() == pytest.approx(alpha, rel=1e-12)


@pytest.mark.parametrize("make", [lambda: CosFaceLoss(6, 3, scale=8.0, margin=0.2),
                                  lambda: AngularMarginLoss(6, 3, scale=8.0, margin=0.3)])
def test_cosine_classifier_logits_are_float32_cosines_with_or_without_autocast(make):
    """``logits`` switches autocast off (Eq. 13-14 in fp32): on float32 features, inside a bf16
    autocast region or not, the logits are the float32 ``s * cos`` to fp32 precision (a bf16 matmul
    would be off by ~1e-2 at s = 8)."""
    loss = make()
    x = torch.randn(7, 6)
    want = 8.0 * F.normalize(x.double(), dim=1) @ F.normalize(loss.weight.detach().double(), dim=1).T
    y = torch.arange(7) % 3
    for region in (torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False)):
        with region:
            out = loss.logits(x)
            with_margin = loss.logits(x, y)
        assert out.dtype == torch.float32 and with_margin.dtype == torch.float32
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
        other = torch.ones_like(out, dtype=torch.bool)
        other[torch.arange(7), y] = False
        torch.testing.assert_close(with_margin.double()[other], want[other], atol=1e-5, rtol=1e-5)


def test_rbf_distance_default_gamma_is_one():
    """``"rbf"``: ``2 - 2 exp(-gamma ||a - b||^2)`` with gamma = 1 unless given, against a loop."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 3, dtype=D64, generator=g), torch.randn(5, 3, dtype=D64, generator=g)
    want = torch.tensor([[2 - 2 * math.exp(-float(((ai - bj) ** 2).sum())) for bj in b] for ai in a], dtype=D64)
    torch.testing.assert_close(pairwise_sq_distances(a, b, "rbf"), want)
    want_half = torch.tensor([[2 - 2 * math.exp(-0.5 * float(((ai - bj) ** 2).sum())) for bj in b] for ai in a],
                             dtype=D64)
    torch.testing.assert_close(pairwise_sq_distances(a, b, "rbf", gamma=0.5), want_half)


def test_centre_initialisation_is_small():
    """Centres start at N(0, 0.01^2) (the moving update then sets a class to its first batch mean)."""
    torch.manual_seed(0)
    c = CenterLoss(50, 40).centers
    assert c.std().item() == pytest.approx(0.01, rel=0.1)
