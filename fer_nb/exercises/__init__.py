"""Checkers of the course exercises (notebooks/61_metric_learning_course.md, issue #21).

Each exercise asks the student to write a function; the chapter passes it to a checker here,
which compares it with the package (the loss modules, autograd, the logits of the margin losses)
on random cases and raises ``AssertionError`` with what is wrong. The hidden solutions live in
:mod:`fer_nb.exercises.solutions`; ``tests/test_exercises.py`` runs every checker against them and
against deliberately wrong answers (so a checker that cannot fail would be caught).

:func:`attempt` runs a checker on a student's function and reports "not attempted yet" while the
template still raises ``NotImplementedError``, so the chapter executes before it is solved.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from fer_nb.losses.angular_margin import angular_margin_logits
from fer_nb.losses.cosface import cosface_logits
from fer_nb.losses.normface import NormFaceLoss
from fer_nb.losses.sphereface import psi
from fer_nb.losses.supcon import SupConLoss

__all__ = ["attempt", "check_supcon", "check_normface_grad", "check_semi_hard_negative", "check_margin_boundary",
           "CHECKERS"]


def _batches(n: int = 3, b: int = 16, d: int = 5, c: int = 4):
    for seed in range(n):
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(b, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, c, (b,), generator=g)
        y[:2] = torch.tensor([0, 0])
        yield x, y


def check_supcon(fn: Callable) -> str:
    """``fn(z, labels, temperature) -> scalar``: value and gradient equal to ``SupConLoss(temperature)``."""
    for tau in (0.1, 0.5):
        for x, y in _batches():
            a = x.clone().requires_grad_(True)
            b = x.clone().requires_grad_(True)
            va, vb = fn(a, y, tau), SupConLoss(tau)(b, y)
            assert torch.is_tensor(va) and va.ndim == 0, "return a scalar tensor"
            assert torch.allclose(va, vb, atol=1e-8), \
                f"value {float(va.detach()):.6f} != SupConLoss {float(vb.detach()):.6f} (tau={tau})"
            va.backward()
            vb.backward()
            assert a.grad is not None and torch.allclose(a.grad, b.grad, atol=1e-8), "gradient differs from SupConLoss"
    return "SupCon: value and gradient agree with fer_nb.losses.supcon.SupConLoss"


def check_normface_grad(fn: Callable) -> str:
    """``fn(x, labels, weight, scale) -> (B, D)``: equal to autograd of ``NormFaceLoss`` (mean)."""
    for scale in (1.0, 16.0):
        for x, y in _batches():
            loss = NormFaceLoss(x.shape[1], 4, scale=scale).double()
            xg = x.clone().requires_grad_(True)
            (auto,) = torch.autograd.grad(loss(xg, y), xg)
            mine = fn(x, y, loss.weight.detach(), float(loss.log_scale.exp()))
            assert mine.shape == x.shape, f"return a {tuple(x.shape)} tensor, got {tuple(mine.shape)}"
            err = float((mine - auto).abs().max())
            assert err < 1e-9, f"max |your gradient - autograd| = {err:.3g} (scale={scale})"
    return "NormFace gradient: agrees with autograd (and so is orthogonal to every x)"


def _semi_hard_reference(x, y):
    d = torch.cdist(x, x)
    out = torch.full((len(x), len(x)), -1, dtype=torch.long)
    for a in range(len(x)):
        for p in range(len(x)):
            if p == a or y[p] != y[a]:
                continue
            best = None
            for n in range(len(x)):
                if y[n] != y[a] and d[a, n] > d[a, p] and (best is None or d[a, n] < d[a, best]):
                    best = n
            out[a, p] = -1 if best is None else best
    return out


def check_semi_hard_negative(fn: Callable) -> str:
    """``fn(x, labels) -> (B, B) long``: for each positive pair the nearest negative farther than the positive."""
    for x, y in _batches(b=12):
        mine = fn(x, y)
        assert mine.shape == (len(x), len(x)), f"return a ({len(x)}, {len(x)}) tensor"
        ref = _semi_hard_reference(x, y)
        wrong = (mine.long().cpu() != ref).nonzero()
        assert len(wrong) == 0, f"{len(wrong)} (anchor, positive) entries differ, first at {wrong[0].tolist()}"
    return "semi-hard negatives: agree with the loop definition"


def _boundary_numeric(kind: str, margin: float, theta: float) -> float:
    """Where the package's margin logits of class 1 equal the logit of class 2 (bisection on phi)."""
    lab = torch.tensor([0])

    def gap(phi: float) -> float:
        cos = torch.tensor([[math.cos(phi), math.cos(theta - phi)]], dtype=torch.float64)
        if kind == "arcface":
            logit = angular_margin_logits(cos, lab, 1.0, margin, "none")
        elif kind == "cosface":
            logit = cosface_logits(cos, lab, 1.0, margin)
        else:
            logit = torch.stack([psi(cos[:, 0], int(margin)), cos[:, 1]], 1)
        return float(logit[0, 0] - logit[0, 1])

    if gap(0.0) <= 0:
        return float("nan")
    lo, hi = 0.0, theta
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def check_margin_boundary(fn: Callable) -> str:
    """``fn(kind, margin, theta) -> phi``: the boundary angle, checked against the package's logits."""
    cases = [("arcface", m, t) for m in (0.1, 0.5, 1.2) for t in (math.pi / 2, 2.0)]
    cases += [("cosface", m, t) for m in (0.1, 0.35, 0.9) for t in (math.pi / 2, 1.0)]
    cases += [("sphereface", m, t) for m in (1, 2, 4) for t in (math.pi / 2, 2.5)]
    for kind, m, t in cases:
        mine, ref = float(fn(kind, m, t)), _boundary_numeric(kind, m, t)
        if math.isnan(ref):
            assert math.isnan(mine), f"{kind} m={m} theta={t:.3f}: no point satisfies the margin, expected nan"
        else:
            assert abs(mine - ref) < 1e-6, f"{kind} m={m} theta={t:.3f}: phi = {mine:.6f}, the logits say {ref:.6f}"
    return "margin boundaries: agree with the package's ArcFace, CosFace and SphereFace logits"


CHECKERS = {"supcon": check_supcon, "normface_grad": check_normface_grad,
            "semi_hard_negative": check_semi_hard_negative, "margin_boundary": check_margin_boundary}


def attempt(checker: Callable, fn: Callable) -> bool:
    """Run ``checker(fn)``; print the verdict. ``False`` (not raised) while ``fn`` is still the template."""
    try:
        print("passed:", checker(fn))
        return True
    except NotImplementedError:
        print("not attempted yet: complete the function above and run this cell again")
        return False
    except AssertionError as err:
        print("not yet right:", err)
        return False
