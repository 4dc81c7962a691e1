"""Margin-Mix's large-margin loss (Florea et al., Eq. 3-5, 11) against loop references."""
import pytest
import torch

from fer_nb.losses.large_margin_loss import LargeMarginLoss
from fer_nb.losses.margin_mix_loss import (MarginMixLoss, centroid_sq_distances, eq11_gradient, pairwise_sq_distances,
                                     reference_margin_mix)

D64 = torch.float64


def test_soft_targets_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(9, 5, dtype=D64, generator=g)
    c = torch.randn(4, 5, dtype=D64, generator=g)
    t = torch.softmax(torch.randn(9, 4, dtype=D64, generator=g), 1)
    t[3] = 0  # ignored row
    for squared in (True, False):
        for norm_c in (True, False):
            loss = MarginMixLoss(4, squared=squared, normalize_centroids=norm_c)(e, t, centroids=c)
            assert torch.allclose(loss, reference_margin_mix(e, t, c, squared, norm_c))


def test_hard_labels_equal_large_margin_loss_of_eq3():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(12, 6, dtype=D64, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    y[0] = -1
    c = torch.randn(3, 6, dtype=D64, generator=g)
    for squared in (True, False):
        lm = LargeMarginLoss(3, 6, reduction="mean", squared=squared).double().eval()
        lm.centers.copy_(c)
        ours = MarginMixLoss(3, squared=squared, normalize_centroids=True)(e, y, centroids=c)
        assert torch.allclose(ours, lm(e, y))


def test_eq4_5_implicit_centroids_equal_explicit_weighted_means():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(10, 3, dtype=D64, generator=g)
    mu = torch.rand(10, 4, dtype=D64, generator=g)
    A = pairwise_sq_distances(e, e)
    centres = (mu.t() @ e) / mu.sum(0)[:, None]
    ref = torch.stack([torch.stack([((e[i] - centres[k]) ** 2).sum() for k in range(4)]) for i in range(10)])
    assert torch.allclose(centroid_sq_distances(A, mu), ref)
    # the quadratic form of Eq. 4 itself, w = s_c - b_i
    s = mu[:, 1] / mu[:, 1].sum()
    w = s.clone()
    w[7] -= 1
    assert abs(float(w.sum())) < 1e-12
    assert torch.allclose(-0.5 * w @ A @ w, ref[7, 1])


def test_eq4_kernel_distance_is_feature_space_distance():
    # for the linear kernel k(x, y) = x.y the kernel-induced A is the Euclidean one;
    # for RBF, compare with an explicit random-Fourier-free check: the distance to a centroid made
    # of a single point equals the point-to-point kernel distance.
    g = torch.Generator().manual_seed(3)
    e = torch.randn(6, 2, dtype=D64, generator=g)
    A = pairwise_sq_distances(e, e, "rbf", gamma=0.7)
    mu = torch.zeros(6, 2, dtype=D64)
    mu[2, 0] = 1.0
    mu[4, 1] = 3.0
    d = centroid_sq_distances(A, mu)
    assert torch.allclose(d[:, 0], A[:, 2]) and torch.allclose(d[:, 1], A[:, 4])
    assert (centroid_sq_distances(A, torch.rand(6, 2, dtype=D64, generator=g)) >= 0).all()


def test_eq11_gradient_vs_autograd():
    g = torch.Generator().manual_seed(4)
    e = torch.randn(8, 5, dtype=D64, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (8,), generator=g)
    c = torch.randn(4, 5, dtype=D64, generator=g)
    loss = MarginMixLoss(4, normalize_centroids=True, reduction="sum")(e, y, centroids=c)
    (grad,) = torch.autograd.grad(loss, e)
    assert torch.allclose(grad, eq11_gradient(e.detach(), y, c), atol=1e-12)
    # the paper's diagonal-only Jacobian (1 - e_hat^2)/||e|| is not the gradient
    assert not torch.allclose(grad, eq11_gradient(e.detach(), y, c, exact_jacobian=False), atol=1e-3)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "rbf"])
@pytest.mark.parametrize("explicit", [True, False])
def test_gradcheck(distance, explicit):
    g = torch.Generator().manual_seed(5)
    e = torch.randn(6, 3, dtype=D64, generator=g, requires_grad=True)
    t = torch.softmax(torch.randn(6, 3, dtype=D64, generator=g), 1)
    c = torch.randn(3, 3, dtype=D64, generator=g)
    loss = MarginMixLoss(3, distance, gamma=0.5)
    assert torch.autograd.gradcheck(lambda x: loss(x, t, centroids=c if explicit else None), (e,))


def test_degenerate_batches_are_finite():
    loss = MarginMixLoss(3, squared=False)
    c = torch.randn(3, 4)
    cases = [
        (torch.randn(5, 4), torch.zeros(5, dtype=torch.long)),   # single class
        (torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 0])),        # class 2 without members
        (torch.zeros(5, 4), torch.tensor([0, 1, 2, 0, 1])),        # zero embeddings
        (torch.randn(1, 4), torch.tensor([2])),                    # batch of one
        (torch.randn(3, 4), torch.full((3,), -1)),                 # nothing labelled
    ]
    for e, y in cases:
        for cent in (c, None):
            x = e.clone().requires_grad_(True)
            out = loss(x, y, centroids=cent)
            out.backward()
            assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    # a centroid sitting exactly on an embedding, non-squared distance
    x = c.clone().requires_grad_(True)
    out = loss(x, torch.tensor([0, 1, 2]), centroids=c)
    out.backward()
    assert torch.isfinite(x.grad).all()


def test_reductions_and_autocast_dtype():
    e = torch.randn(4, 3).to(torch.bfloat16)
    y = torch.tensor([0, 1, 2, -1])
    c = torch.randn(3, 3)
    per = MarginMixLoss(3, reduction="none")(e, y, centroids=c)
    assert per.dtype == torch.float32 and per.shape == (4,) and per[3] == 0
    s = MarginMixLoss(3, reduction="sum")(e, y, centroids=c)
    m = MarginMixLoss(3, reduction="mean")(e, y, centroids=c)
    assert torch.allclose(s, per.sum()) and torch.allclose(m, per.sum() / 3)


def test_class_mask_leaves_classes_out():
    g = torch.Generator().manual_seed(6)
    e = torch.randn(5, 3, generator=g)
    c = torch.randn(3, 3, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0])
    mask = torch.tensor([True, True, False])
    masked = MarginMixLoss(3, reduction="none")(e, y, centroids=c, class_mask=mask)
    # with class 2 gone, the push term averages over the single other class
    eh = e / e.norm(dim=1, keepdim=True)
    d = ((eh[:, None] - c[None]) ** 2).sum(-1)
    ref = d[torch.arange(5), y] - d[torch.arange(5), 1 - y]
    assert torch.allclose(masked, ref, atol=1e-6)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        MarginMixLoss(1)
    with pytest.raises(ValueError, match="distance"):
        MarginMixLoss(3, "manhattan")
    with pytest.raises(ValueError, match="centroids must be"):
        MarginMixLoss(3)(torch.randn(2, 4), torch.tensor([0, 1]), centroids=torch.randn(3, 5))
    with pytest.raises(TypeError):
        MarginMixLoss(3)(torch.randn(2, 4), torch.tensor([0.0, 1.0]))


def test_margin_mix_messages_name_the_loss_and_the_row_counts():
    loss = MarginMixLoss(3)
    with pytest.raises(ValueError, match=r"^MarginMixLoss: labels \(\(4,\)\) and embeddings \(5 rows\) differ"):
        loss(torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
    t = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    with pytest.raises(ValueError, match=r"^MarginMixLoss: without explicit centroids pass memberships"):
        loss.compute(torch.randn(4, 2), t)


def test_margin_mix_on_bf16_features_computes_in_float32():
    """bf16 features (autocast on a GPU) are cast to float32 before Eq. 3-5: the loss equals the
    loss of the same values given as float32, to float32 precision (bf16 arithmetic is off by ~1e-2)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, generator=g).bfloat16()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, -1, 0, 1])
    for kw in ({}, {"distance": "rbf"}, {"distance": "cosine"}):
        loss = MarginMixLoss(3, **kw)
        got, want = loss(x, y), loss(x.float(), y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
