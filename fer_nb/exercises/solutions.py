"""Hidden solutions of the course exercises (notebooks/61_metric_learning_course.md).

Students: try first. The chapter hides these (a ``hide-cell``), and ``tests/test_exercises.py``
runs every checker of :mod:`fer_nb.exercises` against them.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Exercise 1: supervised contrastive loss, L_out (Khosla et al. Eq. 2), vectorised.

    Mean over anchors that have a positive of ``-1/|P(i)| sum_p log softmax_{a != i}(z_i.z_a / tau)[p]``.
    """
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    per = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
    return per[has].mean()


def normface_grad(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Exercise 2: ``dL/dx`` of the NormFace loss (mean over the batch), derived by hand.

    With ``x_hat = x/||x||``, ``w_hat_j``, ``p = softmax(s W_hat x_hat)``:
    ``dL/dx_hat = s (sum_j p_j w_hat_j - w_hat_y) / N`` and ``dx_hat/dx = (I - x_hat x_hat^T)/||x||``, so
    ``dL/dx = s/(N ||x||) (I - x_hat x_hat^T)(W_hat^T p - w_hat_y)``: orthogonal to ``x``.
    """
    norm = x.norm(dim=1, keepdim=True)
    xh, wh = x / norm, F.normalize(weight, dim=1)
    p = torch.softmax(scale * xh @ wh.T, dim=1)
    g_hat = scale * (p @ wh - wh[labels]) / len(x)
    radial = (g_hat * xh).sum(1, keepdim=True) * xh
    return (g_hat - radial) / norm


def semi_hard_negative(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exercise 3: FaceNet's selection. ``(B, B)`` long: for each positive pair ``(a, p)`` the index of the
    *nearest* negative that is farther from ``a`` than ``p`` (Euclidean), ``-1`` where there is none
    (and for pairs that are not positive)."""
    d = torch.cdist(x, x)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    neg = labels[:, None] != labels[None, :]
    # cand[a, p, n]: n is a negative of a with D_an > D_ap
    cand = neg[:, None, :] & (d[:, None, :] > d[:, :, None])
    dist = torch.where(cand, d[:, None, :].expand_as(cand), torch.full_like(cand, float("inf"), dtype=d.dtype))
    best = dist.argmin(2)
    found = cand.any(2) & pos
    return torch.where(found, best, torch.full_like(best, -1))


def margin_boundary(kind: str, margin: float, theta: float) -> float:
    """Exercise 4: two class vectors ``theta`` apart in 2-D; the angle ``phi`` from ``w_1`` (towards ``w_2``)
    where a class-1 point is on its *training* boundary (target logit with margin = other logit):

    * ArcFace ``cos(phi + m) = cos(theta - phi)`` -> ``phi = (theta - m) / 2``;
    * CosFace ``cos(phi) - m = cos(theta - phi)`` -> ``2 sin(theta/2) sin(theta/2 - phi) = m`` ->
      ``phi = theta/2 - asin(m / (2 sin(theta/2)))``;
    * SphereFace ``cos(m phi) = cos(theta - phi)`` (``psi`` monotone) -> ``phi = theta / (m + 1)``.
    ``nan`` when no point satisfies the margin (``phi < 0``).
    """
    if kind == "arcface":
        phi = (theta - margin) / 2
    elif kind == "cosface":
        arg = margin / (2 * math.sin(theta / 2))
        phi = theta / 2 - math.asin(arg) if arg <= 1 else float("nan")
    elif kind == "sphereface":
        phi = theta / (margin + 1)
    else:
        raise ValueError(kind)
    return phi if phi >= 0 else float("nan")
