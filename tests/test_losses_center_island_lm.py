"""Center (Eq. 1), island (Cai et al.) and large-margin (Racoviteanu et al., Eq. 2-3, 7) losses.

Each loss against a loop-by-loop reference of its equation, float64 gradcheck, degenerate
batches (single class, empty class, zero embeddings, batch of one, all unlabelled) finite, and the
centroid update rules.
"""
from __future__ import annotations

import pytest
import torch

from fer_nb.losses.center import CenterLoss, reference_center
from fer_nb.losses.island import IslandLoss, reference_island_term
from fer_nb.losses.large_margin_loss import LargeMarginLoss, reference_large_margin

torch.set_default_dtype(torch.float32)


def _data(B=9, D=5, C=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    y = torch.randint(0, C, (B,), generator=g)
    y[0] = -1
    return x, y


# ---------------------------------------------------------------- center loss
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_center_matches_loop(squared, reduction):
    x, y = _data()
    loss = CenterLoss(4, 5, reduction, squared=squared).double().eval()
    out = loss(x, y)
    ref = reference_center(x, y, loss.centers, squared, reduction)
    assert out.shape == ref.shape and (reduction != "none" or out[0].item() == 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", ["moving", "sgd"])
@pytest.mark.parametrize("squared", [True, False])
def test_center_gradcheck(update, squared):
    x, y = _data()
    loss = CenterLoss(4, 5, squared=squared, update=update).double().eval()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))
    if update == "sgd":
        assert isinstance(loss.centers, torch.nn.Parameter)
        c = loss.centers
        assert torch.autograd.gradcheck(lambda cc: CenterLoss.distances(_with_centers(loss, cc), x.detach(), y).sum(), (c,))


def _with_centers(loss, centers):
    class _Tmp:
        pass
    t = _Tmp()
    t.centers, t.squared, t.eps = centers, loss.squared, loss.eps
    return t


def test_center_moving_update_rule():
    """First sighting: centre = batch mean (Eq. 1); later: Wen et al.'s Eq. 4 with rate alpha."""
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, -1])
    loss = CenterLoss(3, 2, alpha=0.5)
    c2_before = loss.centers[2].clone()
    loss.train()
    loss(x, y)
    assert torch.allclose(loss.centers[0], torch.tensor([2.0, 0.0]))
    assert torch.allclose(loss.centers[1], torch.tensor([0.0, 2.0]))
    assert torch.equal(loss.centers[2], c2_before)  # no members: untouched
    assert loss.seen.tolist() == [True, True, False]
    # second batch: delta_0 = ((c0 - x1) + (c0 - x2)) / (1 + 2)
    x2 = torch.tensor([[4.0, 0.0], [4.0, 3.0]])
    loss(x2, torch.tensor([0, 0]))
    delta = ((torch.tensor([2.0, 0.0]) - x2[0]) + (torch.tensor([2.0, 0.0]) - x2[1])) / 3
    assert torch.allclose(loss.centers[0], torch.tensor([2.0, 0.0]) - 0.5 * delta)
    # eval mode freezes the centres
    before = loss.centers.clone()
    loss.eval()
    loss(x2, torch.tensor([1, 1]))
    assert torch.equal(loss.centers, before)


def test_center_moving_converges_to_class_means():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 4, generator=g) * 3
    loss = CenterLoss(3, 4, alpha=0.5).train()
    for _ in range(200):
        y = torch.randint(0, 3, (32,), generator=g)
        x = means[y] + 0.1 * torch.randn(32, 4, generator=g)
        loss(x, y)
    assert torch.allclose(loss.centers, means, atol=0.1)


def test_center_sgd_centres_learn():
    loss = CenterLoss(2, 3, update="sgd")
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    for _ in range(300):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert torch.allclose(loss.centers[0], x[0], atol=1e-3)
    assert torch.allclose(loss.centers[1], x[2], atol=1e-3)


# ---------------------------------------------------------------- island loss
def test_island_matches_loop():
    x, y = _data()
    loss = IslandLoss(4, 5, lambda1=0.3).double().eval()
    expected = reference_center(x, y, loss.centers, True) + 0.3 * reference_island_term(loss.centers)
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-10, atol=1e-12)


def test_island_gradcheck_and_centre_push():
    x, y = _data()
    loss = IslandLoss(4, 5, lambda1=0.5, update="sgd").double()
    assert torch.autograd.gradcheck(lambda e, c: _island_fn(loss, e, c, y), (x.requires_grad_(True), loss.centers.detach().clone().requires_grad_(True)))
    # moving mode: the island gradient step lowers the island term when there is no data
    mv = IslandLoss(4, 5, lambda1=1.0, alpha=0.1).train()
    mv.centers.copy_(torch.tensor([[1.0, 0.1, 0, 0, 0], [1.0, -0.1, 0, 0, 0], [0.9, 0.0, 0.1, 0, 0], [1.0, 0, 0, 0.1, 0]]))
    before = mv.island_term().item()
    for _ in range(20):
        mv(torch.zeros(1, 5), torch.tensor([-1]))
    assert mv.island_term().item() < before


def _island_fn(loss, e, c, y):
    from fer_nb.losses.island import pairwise_cos_penalty

    d2 = (e - c[y.clamp_min(0)]).pow(2).sum(1) * (y >= 0)
    return d2.sum() / (y >= 0).sum() + loss.lambda1 * pairwise_cos_penalty(c)


def test_island_sgd_forward_gradcheck():
    x, y = _data()
    loss = IslandLoss(4, 5, lambda1=0.5, update="sgd").double()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))
    out = loss(x, y)
    out.backward()
    assert loss.centers.grad is not None and torch.isfinite(loss.centers.grad).all()


# ---------------------------------------------------------------- large-margin loss
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lm_matches_loop(squared, reduction):
    x, y = _data()
    loss = LargeMarginLoss(4, 5, reduction, squared=squared).double().eval()
    loss.centers.copy_(torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    out = loss(x, y)
    ref = reference_large_margin(x, y, loss.centers, squared, reduction)
    assert out.shape == ref.shape and (reduction != "none" or out[0].item() == 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_lm_bounded_and_scale_invariant():
    x, y = _data()
    loss = LargeMarginLoss(4, 5, "none").double().eval()
    a, b = loss(x, y), loss(x * 1e3, y)
    assert torch.allclose(a, b)
    assert bool((a >= -2).all() and (a <= 2).all())


@pytest.mark.parametrize("squared", [False, True])
def test_lm_gradcheck(squared):
    x, y = _data()
    loss = LargeMarginLoss(4, 5, squared=squared).double().eval()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))
    sgd = LargeMarginLoss(4, 5, squared=squared, update="sgd").double()
    assert torch.autograd.gradcheck(lambda e: sgd(e, y), (x,))
    sgd(x, y).backward()
    assert sgd.centers.grad is not None and torch.isfinite(sgd.centers.grad).all()


def test_lm_pseudo_labels_ssl_mode():
    """-1 rows are ignored without pseudo-labels, and take them (loss + centroid update) with them."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    y = torch.tensor([0, 1, -1, -1])
    pl = torch.tensor([1, 1, 0, 1])  # predictions for every row; only -1 rows use them
    loss = LargeMarginLoss(2, 2, "none").double().eval()
    loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    plain = loss(x, y)
    assert plain[2] == 0 and plain[3] == 0
    ssl = loss(x, y, pseudo_labels=pl)
    assert torch.allclose(ssl[:2], plain[:2])
    total = float(reference_large_margin(x[2:], torch.tensor([0, 1]), loss.centers, reduction="sum"))
    assert ssl[2:].sum().item() == pytest.approx(total, rel=1e-10)
    # centroid update uses the self-predicted labels of the unlabelled rows
    lm = LargeMarginLoss(2, 2).double().train()
    lm(x[2:], torch.tensor([-1, -1]), pseudo_labels=torch.tensor([0, 1]))
    assert torch.allclose(lm.centers, x[2:])
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])
    assert LargeMarginLoss.self_labels(y, logits).tolist() == [0, 1, 0, 1]


def test_lm_pulls_to_own_centroid():
    """A few SGD steps on the embeddings lower the own-centroid distance and raise the others."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g).requires_grad_(True)
    y = torch.arange(16) % 4
    loss = LargeMarginLoss(4, 3).eval()
    loss.centers.copy_(torch.randn(4, 3, generator=g))
    before = loss(x, y).item()
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert loss(x, y).item() < before - 0.3


# ---------------------------------------------------------------- degenerate batches, all three
def _losses():
    return [
        CenterLoss(3, 4), CenterLoss(3, 4, squared=False), CenterLoss(3, 4, update="sgd"),
        IslandLoss(3, 4, lambda1=0.5), IslandLoss(3, 4, lambda1=0.5, update="sgd"),
        LargeMarginLoss(3, 4), LargeMarginLoss(3, 4, squared=True), LargeMarginLoss(3, 4, update="sgd"),
    ]


@pytest.mark.parametrize("case", ["single_class", "empty_class", "zeros", "batch_of_one", "all_unlabelled",
                                  "on_centre"])
@pytest.mark.parametrize("idx", range(8))
def test_degenerate_batches_finite(case, idx):
    loss = _losses()[idx].train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 has no members ("empty_class")
    if case == "single_class":
        y = torch.zeros(6, dtype=torch.long)
    elif case == "zeros":
        x = torch.zeros(6, 4)
    elif case == "batch_of_one":
        x, y = x[:1], y[:1]
    elif case == "all_unlabelled":
        y = torch.full((6,), -1)
    elif case == "on_centre":
        loss.eval()
        x = loss.centers.detach()[y].clone()
    for _ in range(2):  # the second call also sees updated centres
        e = x.clone().requires_grad_(True)
        out = loss(e, y)
        out.backward()
        assert torch.isfinite(out), (case, out)
        assert torch.isfinite(e.grad).all(), (case, e.grad)
        assert torch.isfinite(loss.centers).all()
    if case == "all_unlabelled" and not isinstance(loss, IslandLoss):
        assert out.item() == 0.0


def test_autocast_and_dtypes():
    x, y = _data(dtype=torch.float32)
    for loss in (CenterLoss(4, 5), IslandLoss(4, 5), LargeMarginLoss(4, 5)):
        loss.eval()
        out16 = loss(x.to(torch.bfloat16), y)
        assert out16.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss(x, y)
        assert out.dtype == torch.float32 and torch.isfinite(out)


def test_bad_inputs_raise():
    loss = LargeMarginLoss(3, 4)
    with pytest.raises(ValueError, match="embedding_dim"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        LargeMarginLoss(1, 4)
    with pytest.raises(ValueError, match="reduction"):
        CenterLoss(3, 4, reduction="avg")
    with pytest.raises(ValueError, match="reduction='mean'"):
        IslandLoss(3, 4, reduction="none")
