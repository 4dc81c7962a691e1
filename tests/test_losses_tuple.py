"""Triplet, (N+1)-tuple, coupled clusters and (N+M)-tuple clusters losses (Liu et al.).

Each loss against a loop-by-loop reference of its equation, float64 gradcheck, degenerate batches,
and pytorch-metric-learning where a counterpart exists (explicit distance and reducer).
"""
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from fer_nb.losses.coupled_clusters import CoupledClustersLoss, cluster_masks, reference_coupled_clusters
from fer_nb.losses.masks import group_queries
from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss, reference_n_plus_one
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss, reference_nm_tuple
from fer_nb.losses.triplet import TripletLoss, reference_triplet


def batch(n=12, d=5, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.arange(n) % k
    return x, y


def D(a, b, power=2):
    d2 = float(((a - b) ** 2).sum())
    return d2 if power == 2 else math.sqrt(d2)


# ---------------------------------------------------------------- triplet
@pytest.mark.parametrize("power", [1, 2])
def test_triplet_matches_loop_and_pml(power):
    x, y = batch()
    margin = 0.7
    ours = TripletLoss(margin=margin, power=power)(x, y)
    assert ours.item() == pytest.approx(float(reference_triplet(x, y, margin, power)), rel=1e-9)
    pml = pml_losses.TripletMarginLoss(margin=margin, distance=LpDistance(normalize_embeddings=False, p=2, power=power),
                                       reducer=MeanReducer(), triplets_per_anchor="all")
    assert ours.item() == pytest.approx(pml(x, y).item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", [0.0, 0.3, 5.0])
def test_triplet_sorted_path_matches_explicit_triplets_value_and_gradient(dtype, margin):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 6, generator=g, dtype=dtype)
    x[5] = x[6]                                           # ties between distances
    y = torch.randint(0, 4, (40,), generator=g)
    y[:3] = -1                                            # unlabelled rows take no part
    for reduction in ("mean", "sum"):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        fast = TripletLoss(margin=margin, reduction=reduction)(xa, y)
        per = TripletLoss(margin=margin, reduction="none")(xb, y)
        slow = per.mean() if reduction == "mean" else per.sum()
        fast.backward()
        slow.backward()
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        assert fast.dtype == dtype
        assert fast.item() == pytest.approx(slow.item(), rel=tol, abs=tol)
        assert torch.allclose(xa.grad, xb.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_n_plus_one_per_query_path_matches_explicit_negative_mask(margin):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(36, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (36,), generator=g)
    y[:2] = -1
    y[2:6] = 9                                            # a class whose queries still have negatives
    for reduction in ("mean", "sum", "none"):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        fast = NPlusOneTupleLoss(margin=margin, reduction=reduction)(xa, y)
        valid = y >= 0
        idx = torch.arange(len(y))
        pairs = ((y[:, None] == y[None, :]) & valid[:, None] & valid[None, :] & (idx[:, None] != idx[None, :])).nonzero()
        mask = (y[None, :] != y[pairs[:, 0]][:, None]) & valid[None, :]
        slow = NPlusOneTupleLoss(margin=margin, reduction=reduction)(xb, y, pairs=pairs, negative_mask=mask)
        assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-12)
        fast.sum().backward()
        slow.sum().backward()
        assert torch.allclose(xa.grad, xb.grad, rtol=1e-9, atol=1e-12)
    # one class only: no negatives, zero loss, finite zero gradient
    x1 = x.clone().requires_grad_(True)
    loss = NPlusOneTupleLoss(margin=margin)(x1, torch.zeros(36, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x1.grad).all()


def test_triplet_explicit_triplets_and_reductions():
    x, y = batch()
    loss = TripletLoss(margin=1.0, reduction="none")
    t = TripletLoss.all_triplets(y)
    per = loss(x, y)
    assert per.shape == (len(t),)
    assert torch.allclose(TripletLoss(reduction="sum")(x, y), per.sum())
    sub = t[:5]
    assert torch.allclose(TripletLoss(margin=1.0)(x, y, triplets=sub), per[:5].mean())


# ---------------------------------------------------------------- (N+1)-tuple
def test_nplus1_matches_loop():
    x, y = batch()
    assert NPlusOneTupleLoss(margin=0.3)(x, y).item() == pytest.approx(float(reference_n_plus_one(x, y, 0.3)), rel=1e-9)


def test_nplus1_eq2_rewrite_is_an_identity():
    x, y = batch()
    dqp, dqn, tau = D(x[0], x[3]), D(x[0], x[1]), 0.4
    for T in (-2.0, 0.0, 1.5):
        lhs = math.exp(dqp + tau - dqn)
        rhs = math.exp(dqp - T + tau / 2) * math.exp(T + tau / 2 - dqn)   # Eq. 2
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_nplus1_matches_pml_npairs():
    # two rows per class; pml keeps the first (anchor, positive) pair per class and uses the other
    # classes' positives as negatives: our Eq. 1 with margin 0 and those explicit tuples
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    pairs = torch.tensor([[i, i + 5] for i in range(5)])
    neg = torch.zeros(5, 10, dtype=torch.bool)
    for k in range(5):
        for j in range(5):
            if j != k:
                neg[k, j + 5] = True
    ours = NPlusOneTupleLoss(margin=0.0)(x, y, pairs=pairs, negative_mask=neg)
    pml = pml_losses.NPairsLoss(distance=LpDistance(normalize_embeddings=False, p=2, power=2), reducer=MeanReducer())
    assert ours.item() == pytest.approx(pml(x, y).item(), rel=1e-6)


def test_nplus1_groups_use_query_first_positive_and_negatives():
    x, y = batch(n=8)
    y = torch.tensor([0, 0, 0, 1, 2, 1, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ours = NPlusOneTupleLoss(margin=0.2)(x, y, groups=groups)
    # group 0: query 0, x+ = 1, negatives {3}; group 1: query 4 (label 2) has no positive -> skipped
    ref = math.log(1 + math.exp(D(x[0], x[1]) + 0.2 - D(x[0], x[3])))
    assert ours.item() == pytest.approx(ref, rel=1e-9)


# ---------------------------------------------------------------- coupled clusters
@pytest.mark.parametrize("use_groups", [False, True])
def test_ccl_matches_loop(use_groups):
    x, y = batch(n=14)
    groups = torch.arange(14) // 7 if use_groups else None
    ours = CoupledClustersLoss(margin=0.8)(x, y, groups=groups)
    assert ours.item() == pytest.approx(float(reference_coupled_clusters(x, y, 0.8, groups)), rel=1e-9)


def test_cluster_masks_groups():
    y = torch.tensor([2, 2, 0, 1, 1, 1, 0, -1])
    groups = torch.tensor([5, 5, 5, 5, 9, 9, 9, 9])
    pos, neg = cluster_masks(y, groups)
    # one slot per row (no host sync to learn how many groups there are): the two groups, then six empty slots
    assert pos.tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0]] + [[0] * 8] * 6
    assert neg.tolist() == [[0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0]] + [[0] * 8] * 6


@pytest.mark.parametrize("seed", range(20))
def test_group_queries_rank_groups_as_unique_does(seed):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(-3, 6, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
    inverse, first = group_queries(groups)
    uniq, want = torch.unique(groups, return_inverse=True)
    assert torch.equal(inverse, want) and len(first) == len(groups)
    firsts = [next(i for i, v in enumerate(groups.tolist()) if v == u) for u in uniq.tolist()]
    assert first.tolist() == firsts + [len(groups)] * (len(groups) - len(uniq))   # empty slots: past the end


# ---------------------------------------------------------------- (N+M)-tuple clusters
@pytest.mark.parametrize("use_groups", [False, True])
@pytest.mark.parametrize("mining", [True, False])
def test_nm_fixed_matches_loop(use_groups, mining):
    x, y = batch(n=14)
    groups = torch.arange(14) // 7 if use_groups else None
    ours = NMTupleClustersLoss(reference=3.0, tau=1.5, mining=mining)(x, y, groups=groups)
    assert ours.item() == pytest.approx(float(reference_nm_tuple(x, y, 3.0, 1.5, groups, mining)), rel=1e-9)


def test_mining_keeps_all_when_every_positive_is_beyond_the_nearest_negative():
    # centre of the positives is 5/3; the negative at 2 is nearer than every positive -> fallback keeps all
    x = torch.tensor([[0.0], [0.0], [5.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    g = torch.zeros(4, dtype=torch.long)
    mined = NMTupleClustersLoss(reference=1.0, tau=0.0, mining=True)(x, y, groups=g)
    plain = NMTupleClustersLoss(reference=1.0, tau=0.0, mining=False)(x, y, groups=g)
    assert mined.item() == pytest.approx(plain.item(), rel=1e-12)
    assert mined.item() == pytest.approx(float(reference_nm_tuple(x, y, 1.0, 0.0, g)), rel=1e-12)


def test_mining_changes_the_centre():
    x = torch.tensor([[0.0], [0.4], [4.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    groups = torch.zeros(4, dtype=torch.long)
    mined = NMTupleClustersLoss(reference=1.0, tau=0.0, mining=True)(x, y, groups=groups)
    plain = NMTupleClustersLoss(reference=1.0, tau=0.0, mining=False)(x, y, groups=groups)
    # c0 = 1.467; neg at 3 -> d = 2.35; positive at 4 has d = 6.4 > 2.35 -> dropped; c+ = 0.2
    c = 0.2
    ref = ((max(0, c ** 2 - 1) + max(0, (0.4 - c) ** 2 - 1)) / 2) + max(0, 1 - (3 - c) ** 2)
    assert mined.item() == pytest.approx(ref, abs=1e-12)
    assert plain.item() != pytest.approx(mined.item())


@pytest.mark.parametrize("form", ["metric", "eq8"])
@pytest.mark.parametrize("use_groups", [False, True])
def test_nm_adaptive_matches_loop_with_explicit_matrices(form, use_groups):
    x, y = batch(n=14, d=4)
    groups = torch.arange(14) // 7 if use_groups else None
    loss = NMTupleClustersLoss(adaptive=True, embedding_dim=4, form=form).double()
    with torch.no_grad():  # move away from the initialisation
        for p in loss.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    ours = loss(x, y, groups=groups)
    assert ours.item() == pytest.approx(float(reference_nm_tuple(x, y, groups=groups, matrices={k: v.detach() for k, v in loss.H.matrices().items()})), rel=1e-9)


def test_adaptive_metric_form_starts_at_fixed_loss():
    x, y = batch(n=12, d=6)
    adaptive = NMTupleClustersLoss(adaptive=True, embedding_dim=6, init_reference=2.5).double()
    # Eq. 10 with H = T - D, T = 2.5, tau/2 = 1: the Eq. 3 hinges, weighted by 1/(N + M*) jointly
    # H = 2.5 - ||f1 - f2||^2 written as Eq. 7's explicit matrices: A = -2I, B = 2I, c = 0, b = 2.5
    eye = torch.eye(6, dtype=torch.float64)
    mats = {"A": -2 * eye, "B": 2 * eye, "c": torch.zeros(6, dtype=torch.float64), "b": torch.tensor(2.5)}
    # (sqrt(2) of the initial L_A, L_B is stored in float32: agreement to ~1e-7)
    assert adaptive(x, y).item() == pytest.approx(float(reference_nm_tuple(x, y, matrices=mats)), rel=1e-6)
    # H = b - ||f1 - f2||^2 at the initialisation (Eq. 8 with L_A = L_B = sqrt(2) I, c = 0)
    h = adaptive.H(x, x[:3])
    assert torch.allclose(h, 2.5 - ((x[None, :3] - x[:, None]) ** 2).sum(-1).T, rtol=1e-6, atol=1e-6)


def test_eq9_literal_would_push_positives_away():
    # Eq. 9's positive term max(0, H + 1) is zero only for far positives; Eq. 10's max(0, -H + 1) for near ones
    T = 2.0
    near, far = 0.1, 9.0  # squared distances
    h_near, h_far = T - near, T - far
    assert max(0, -h_near + 1) == 0 and max(0, -h_far + 1) > 0      # Eq. 10: near positive is fine
    assert max(0, h_near + 1) > 0 and max(0, h_far + 1) == 0        # Eq. 9 literal: the opposite


# ---------------------------------------------------------------- shared properties
def all_losses(d=4):
    return {
        "triplet": TripletLoss(margin=0.5),
        "triplet_p1": TripletLoss(margin=0.5, power=1),
        "nplus1": NPlusOneTupleLoss(margin=0.5),
        "ccl": CoupledClustersLoss(margin=0.5),
        "nm_fixed": NMTupleClustersLoss(reference=1.0, tau=1.0),
        "nm_adaptive": NMTupleClustersLoss(adaptive=True, embedding_dim=d).double(),
    }


@pytest.mark.parametrize("name", list(all_losses()))
def test_gradcheck_float64(name):
    loss = all_losses()[name]
    x, y = batch(n=9, d=4)
    x = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list(all_losses()))
@pytest.mark.parametrize("case", ["single_class", "empty_class_label", "zeros", "one", "unlabelled"])
def test_degenerate_batches_finite(name, case):
    loss = all_losses()[name]
    x, y = batch(n=6, d=4)
    if case == "single_class":
        y = torch.zeros(6, dtype=torch.long)
    elif case == "empty_class_label":
        y = torch.tensor([0, 0, 2, 2, 2, 0])   # class 1 has no member
    elif case == "zeros":
        x = torch.zeros_like(x)
    elif case == "one":
        x, y = x[:1], y[:1]
    elif case == "unlabelled":
        y = torch.full((6,), -1)
    x = x.clone().requires_grad_(True)
    out = loss(x, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list(all_losses()))
def test_float32_under_autocast_and_bf16_input(name):
    loss = all_losses()[name].float()
    x, y = batch(n=8, d=4, dtype=torch.float32)
    ref = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(x.bfloat16(), y)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=0.05, abs=0.05)


def test_bad_inputs_name_the_fix():
    x, y = batch()
    with pytest.raises(TypeError, match="long"):
        TripletLoss()(x, y.float())
    with pytest.raises(ValueError, match="reduction"):
        NMTupleClustersLoss(reduction="avg")
    with pytest.raises(ValueError, match="embedding_dim"):
        NMTupleClustersLoss(adaptive=True)
    with pytest.raises(ValueError, match="power"):
        TripletLoss(power=3)


def test_n_plus_one_refuses_a_negative_mask_on_an_unlabelled_row():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, -1])
    pairs = torch.tensor([[0, 1]])
    loss = NPlusOneTupleLoss()
    ok = torch.tensor([[False, False, True, False]])
    assert torch.isfinite(loss(x, y, pairs=pairs, negative_mask=ok))
    with pytest.raises(ValueError, match=r"^NPlusOneTupleLoss: pairs or negative_mask use a row labelled -1 "
                                         r"\(ignored\); drop it from the tuples or give the row a label$"):
        loss(x, y, pairs=pairs, negative_mask=torch.tensor([[False, False, True, True]]))


def test_nm_tuple_names_itself_in_a_bad_reduction_and_inits_its_reference():
    from fer_nb.losses.nm_tuple_clusters import ReferenceDistance

    with pytest.raises(ValueError, match="NMTupleClustersLoss"):
        NMTupleClustersLoss(reduction="median")
    metric, eq8 = ReferenceDistance(5, rank=3), ReferenceDistance(5, rank=3, form="eq8")
    assert (metric.sign_a, eq8.sign_a) == (-1.0, 1.0)
    for ref in (metric, eq8):
        for lin in (ref.L_A, ref.L_B):
            assert lin.bias is None
            torch.testing.assert_close(lin.weight.detach(), torch.eye(3, 5) * math.sqrt(2.0))
