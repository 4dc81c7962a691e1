"""Pairwise distances shared by the metric-learning losses.

All losses compute their (B, B) or (B, C) distance matrices here, through one matrix product
(``||a||^2 + ||b||^2 - 2 a b^T``) instead of a ``(B, B, D)`` difference tensor: ``D`` times less
memory and a GEMM instead of an elementwise kernel. The cancellation of that form is bounded by
clamping at 0, and self-distances (``b is None``) are exactly 0 on the diagonal.
"""
from __future__ import annotations

import torch


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``D[i, j] = ||a_i - b_j||^2`` (``b = a`` when omitted), clamped at 0, in ``a``'s dtype."""
    same = b is None
    b = a if same else b
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    d2 = d2.clamp_min(0.0)
    if same:
        d2 = d2 - torch.diag_embed(d2.diagonal())  # exact zeros (and zero gradient) on the diagonal
    return d2


def pairwise_distances(a: torch.Tensor, b: torch.Tensor | None = None, power: int = 2,
                       eps: float = 1e-12) -> torch.Tensor:
    """``||a_i - b_j||^power`` for ``power`` 2 (squared) or 1 (``sqrt(max(d2, eps))``, so coincident
    points get a zero, not NaN, gradient)."""
    d2 = pairwise_sq_distances(a, b)
    if power == 2:
        return d2
    if power == 1:
        return d2.clamp_min(eps).sqrt()
    raise ValueError(f"power must be 1 (Euclidean) or 2 (squared Euclidean), got {power!r}")
