"""Angular softmax + additive angular margin (UDAT-AS Eq. 12-16) and CosFace.

Each loss against a loop-by-loop reference of its equation, against pytorch-metric-learning
(ArcFaceLoss takes its margin in DEGREES and stores W as (embedding_size, num_classes)), float64
gradcheck, and degenerate batches.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fer_nb.losses.angular_margin import AngularMarginLoss, angular_margin_logits, cosine_logits, reference_arcface
from fer_nb.losses.cosface import CosFaceLoss, reference_cosface

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning.reducers import DoNothingReducer, MeanReducer  # noqa: E402


def _data(n=12, d=5, c=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _anti_aligned(loss: AngularMarginLoss, y: torch.Tensor, noise: float = 0.05, seed: int = 1) -> torch.Tensor:
    """Embeddings pointing away from their class weight: rho_y near pi (the overflow region)."""
    g = torch.Generator().manual_seed(seed)
    w = loss.weight.detach()
    return -w[y] + noise * torch.randn(len(y), w.shape[1], generator=g, dtype=w.dtype)


@pytest.mark.parametrize("overflow", ["arcface", "easy", "none"])
@pytest.mark.parametrize("c", [2, 7])
def test_angular_margin_matches_loop_reference(overflow, c):
    torch.manual_seed(0)
    x, y = _data(c=c)
    loss = AngularMarginLoss(5, c, scale=64.0, margin=0.5, overflow=overflow, reduction="none").double()
    x = torch.cat([x, _anti_aligned(loss, y)])  # half the rows in the rho > pi - m region
    y = torch.cat([y, y])
    ref = reference_arcface(x, loss.weight.detach(), y, 64.0, 0.5, overflow)
    got = loss(x, y)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    assert bool((torch.arccos(loss.cosine(x)[torch.arange(len(y)), y].clamp(-1, 1)) > math.pi - 0.5).any())


def test_two_domain_probabilities_are_eq_13_15_16():
    """For two classes the margin probabilities are exactly Eq. 15 (target truth) and Eq. 16 (source truth)."""
    torch.manual_seed(1)
    s, m = 64.0, 0.5
    loss = AngularMarginLoss(4, 2, scale=s, margin=m, overflow="none").double()
    r = torch.randn(6, 4, dtype=torch.float64) * 0.3 + loss.weight.detach()[[0, 1, 0, 1, 0, 1]] * 0.2
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    cos = loss.cosine(r)
    rho_s, rho_t = torch.arccos(cos[:, 0]), torch.arccos(cos[:, 1])
    p = torch.softmax(loss.logits(r, y), 1)[:, 1]  # r_t
    eq15 = torch.exp(s * torch.cos(rho_t + m)) / (torch.exp(s * torch.cos(rho_s)) + torch.exp(s * torch.cos(rho_t + m)))
    eq16 = torch.exp(s * torch.cos(rho_t)) / (torch.exp(s * torch.cos(rho_s + m)) + torch.exp(s * torch.cos(rho_t)))
    torch.testing.assert_close(p, torch.where(y == 1, eq15, eq16), rtol=1e-10, atol=1e-12)
    eq13 = torch.exp(s * cos[:, 1]) / (torch.exp(s * cos[:, 0]) + torch.exp(s * cos[:, 1]))
    torch.testing.assert_close(torch.softmax(loss.logits(r), 1)[:, 1], eq13, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", [2, 7])
def test_angular_margin_matches_pytorch_metric_learning_arcface(c):
    torch.manual_seed(2)
    x, y = _data(n=16, d=6, c=c, seed=3)
    ours = AngularMarginLoss(6, c, scale=64.0, margin=0.5, overflow="arcface", reduction="none").double()
    x = torch.cat([x, _anti_aligned(ours, y)])
    y = torch.cat([y, y])
    pml = pml_losses.ArcFaceLoss(num_classes=c, embedding_size=6, margin=float(np.degrees(0.5)), scale=64,
                                 reducer=DoNothingReducer())
    with torch.no_grad():
        pml.W.copy_(ours.weight.detach().t())  # PML: W is (embedding_size, num_classes)
    per_pml = pml(x, y)["loss"]["losses"]
    torch.testing.assert_close(ours(x, y), per_pml.double(), rtol=1e-8, atol=1e-8)
    pml_mean = pml_losses.ArcFaceLoss(num_classes=c, embedding_size=6, margin=float(np.degrees(0.5)), scale=64,
                                      reducer=MeanReducer())
    with torch.no_grad():
        pml_mean.W.copy_(ours.weight.detach().t())
    ours.reduction = "mean"
    torch.testing.assert_close(ours(x, y), pml_mean(x, y).double(), rtol=1e-8, atol=1e-8)


def test_margin_zero_is_plain_angular_softmax_and_pml_margin_zero():
    x, y = _data(seed=4)
    ours = AngularMarginLoss(5, 2, scale=64.0, margin=0.0).double()
    logits = 64.0 * cosine_logits(x, ours.weight)
    torch.testing.assert_close(ours(x, y), torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(ours.logits(x, y), ours.logits(x))


def test_margin_increases_loss_and_is_monotone_in_angle():
    x, y = _data(seed=5)
    plain = AngularMarginLoss(5, 2, margin=0.0).double()
    marg = AngularMarginLoss(5, 2, margin=0.5).double()
    marg.load_state_dict(plain.state_dict())
    assert float(marg(x, y).detach()) > float(plain(x, y).detach())
    # the ground-truth logit is non-increasing in the angle on [0, pi] for the arcface rule
    rho = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    cos = torch.stack([torch.cos(rho), torch.zeros_like(rho)], 1)
    lab = torch.zeros(len(rho), dtype=torch.long)
    target = angular_margin_logits(cos, lab, 1.0, 0.5, "arcface")[:, 0]
    assert bool((target[1:] <= target[:-1] + 1e-12).all())
    literal = angular_margin_logits(cos, lab, 1.0, 0.5, "none")[:, 0]
    assert bool((literal[1:] > literal[:-1] + 1e-9).any()), "Eq. 15 literally is not monotone past pi - m"


@pytest.mark.parametrize("overflow", ["arcface", "easy", "none"])
def test_angular_margin_gradcheck_float64(overflow):
    torch.manual_seed(6)
    loss = AngularMarginLoss(4, 3, scale=8.0, margin=0.5, overflow=overflow).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    x[4] = -loss.weight.detach()[0] * 0.7 + 0.05  # one row in the rho > pi - m region
    w = loss.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: torch.func.functional_call(loss, {"weight": b}, (a, y)), (x.requires_grad_(), w))


def test_cosface_gradcheck_float64():
    torch.manual_seed(7)
    loss = CosFaceLoss(4, 3, scale=8.0, margin=0.35).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    w = loss.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: torch.func.functional_call(loss, {"weight": b}, (a, y)), (x, w))


@pytest.mark.parametrize("make", [lambda: AngularMarginLoss(5, 2, margin=0.5), lambda: AngularMarginLoss(5, 7, margin=0.5),
                                  lambda: CosFaceLoss(5, 7)])
def test_degenerate_batches_are_finite(make):
    loss = make()
    c = loss.num_classes
    cases = {
        "single class": (torch.randn(6, 5), torch.zeros(6, dtype=torch.long)),
        "class with no members": (torch.randn(6, 5), torch.tensor([0, 0, 0, 1, 1, 1]) % c),
        "zero embeddings": (torch.zeros(4, 5), torch.tensor([0, 1, 0, 1]) % c),
        "batch of one": (torch.randn(1, 5), torch.tensor([c - 1])),
        "all unlabelled": (torch.randn(3, 5), torch.full((3,), -1)),
        "exactly on the class weight": (loss.weight.detach()[[0, 0]].clone(), torch.tensor([0, 0])),
        "exactly opposite the class weight": (-loss.weight.detach()[[0, 0]].clone(), torch.tensor([0, 0])),
    }
    for name, (x, y) in cases.items():
        x = x.clone().requires_grad_()
        loss.zero_grad()
        out = loss(x, y)
        out.backward()
        assert torch.isfinite(out), name
        assert torch.isfinite(x.grad).all(), name
        assert torch.isfinite(loss.weight.grad).all(), name


def test_cosface_matches_loop_and_pytorch_metric_learning():
    x, y = _data(n=16, d=6, c=7, seed=8)
    ours = CosFaceLoss(6, 7, scale=64.0, margin=0.35, reduction="none").double()
    ref = reference_cosface(x, ours.weight.detach(), y, 64.0, 0.35)
    torch.testing.assert_close(ours(x, y), ref, rtol=1e-9, atol=1e-9)
    pml = pml_losses.CosFaceLoss(num_classes=7, embedding_size=6, margin=0.35, scale=64, reducer=MeanReducer())
    with torch.no_grad():
        pml.W.copy_(ours.weight.detach().t())
    ours.reduction = "mean"
    torch.testing.assert_close(ours(x, y), pml(x, y).double(), rtol=1e-8, atol=1e-8)


def test_reductions_and_ignored_labels():
    x, y = _data(n=8, seed=9)
    y[2] = -1
    loss = AngularMarginLoss(5, 2, reduction="none").double()
    per = loss(x, y)
    assert per[2] == 0
    loss.reduction = "sum"
    torch.testing.assert_close(loss(x, y), per.sum())
    loss.reduction = "mean"
    torch.testing.assert_close(loss(x, y), per.sum() / 7)


def test_float32_under_autocast_and_bf16_inputs():
    loss = AngularMarginLoss(5, 2)
    x = torch.randn(4, 5).bfloat16()
    y = torch.tensor([0, 1, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(x, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    ref = loss(x.float(), y)
    torch.testing.assert_close(out, ref)


def test_bad_inputs_name_the_fix():
    loss = AngularMarginLoss(5, 2)
    with pytest.raises(ValueError, match="embedding_dim=4"):
        loss(torch.randn(3, 4), torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="long"):
        loss(torch.randn(3, 5), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        loss(torch.randn(3, 5), torch.tensor([0, 2, 0]))
    with pytest.raises(ValueError, match="radians"):
        AngularMarginLoss(5, 2, margin=28.6)
    with pytest.raises(ValueError, match="overflow"):
        AngularMarginLoss(5, 2, overflow="wrap")
    with pytest.raises(ValueError, match="reduction"):
        CosFaceLoss(5, 2, reduction="avg")
