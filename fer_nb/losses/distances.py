"""Pairwise distances shared by the metric-learning losses (the one home of every distance matrix).

All losses compute their (B, B) or (B, C) distance matrices here, through one matrix product
(``||a||^2 + ||b||^2 - 2 a b^T``) instead of a ``(B, B, D)`` difference tensor: ``D`` times less
memory and a GEMM instead of an elementwise kernel. The cancellation of that form is bounded by
clamping at 0, and self-distances (``b`` omitted or ``b is a``) are exactly 0 on the diagonal.

Besides the Euclidean distance, :func:`pairwise_sq_distances` offers the generalised squared
distances of Margin-Mix (Florea et al., Eq. 4): ``"cosine"`` (``2 - 2 cos``, the squared distance of
the normalised vectors) and ``"rbf"`` (``2 - 2 exp(-gamma ||a - b||^2)``, the squared distance that
the Gaussian kernel induces in its feature space, ``k(a, a) + k(b, b) - 2 k(a, b)``).
"""
from __future__ import annotations

import torch

DISTANCES = ("euclidean", "cosine", "rbf")


def normalise(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``v / max(||v||, eps)`` row-wise (a zero row stays zero, with a finite gradient)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor | None = None, distance: str = "euclidean",
                          gamma: float = 1.0) -> torch.Tensor:
    """``D[i, j]``, the squared distance of ``a_i`` and ``b_j`` (``b = a`` when omitted), in ``a``'s dtype.

    ``distance``: ``"euclidean"`` ``||a_i - b_j||^2`` (clamped at 0); ``"cosine"``
    ``||a_i/|a_i| - b_j/|b_j| ||^2 = 2 - 2 cos``; ``"rbf"`` ``2 - 2 exp(-gamma ||a_i - b_j||^2)``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    same = b is None or b is a
    b = a if same else b
    if distance == "cosine":
        a = normalise(a)
        b = a if same else normalise(b)
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    d2 = d2.clamp_min(0.0)
    if same:
        d2 = d2 - torch.diag_embed(d2.diagonal())  # exact zeros (and zero gradient) on the diagonal
    if distance == "rbf":
        return 2.0 - 2.0 * torch.exp(-gamma * d2)
    return d2


def pairwise_distances(a: torch.Tensor, b: torch.Tensor | None = None, power: int = 2,
                       eps: float = 1e-12) -> torch.Tensor:
    """``||a_i - b_j||^power`` for ``power`` 2 (squared) or 1 (``sqrt(max(d2, eps))``, so coincident
    points get a zero, not NaN, gradient)."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 (Euclidean) or 2 (squared Euclidean), got {power!r}")
    d2 = pairwise_sq_distances(a, b)
    return d2 if power == 2 else d2.clamp_min(eps).sqrt()


__all__ = ["DISTANCES", "normalise", "pairwise_distances", "pairwise_sq_distances"]
