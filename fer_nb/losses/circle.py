"""Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, "Circle Loss: A Unified Perspective of
Pair Similarity Optimization", CVPR 2020), pair-based form.

For an anchor with within-class similarities ``s_p^i`` and between-class similarities ``s_n^j``
(cosines), Circle loss re-weights each similarity by how far it is from its optimum:

.. math::

    L = \\log\\Bigl[1 + \\sum_j \\exp\\bigl(\\gamma\\,\\alpha_n^j (s_n^j - \\Delta_n)\\bigr)
                   \\sum_i \\exp\\bigl(-\\gamma\\,\\alpha_p^i (s_p^i - \\Delta_p)\\bigr)\\Bigr],
    \\quad \\alpha_p^i = [O_p - s_p^i]_+, \\ \\alpha_n^j = [s_n^j - O_n]_+,

with ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``, ``Delta_n = m`` (one relaxation factor
``m`` and a scale ``gamma``). The weights ``alpha`` are treated as constants in the gradient (the
paper's reference code and pytorch-metric-learning detach them; ``detach_weights=False`` lets the
gradient flow through them too, which is the exact gradient of the formula). Its decision boundary
``alpha_n (s_n - Delta_n) = alpha_p (s_p - Delta_p)`` is a circle in the ``(s_n, s_p)`` plane
centred at ``(0, 1)`` with radius ``sqrt(2) m``, where the fixed-margin losses have a line
``s_p - s_n = m``. The paper's settings: ``m = 0.25, gamma = 256`` (faces),
``m = 0.4, gamma = 80`` (fine-grained retrieval, the defaults here and in pytorch-metric-learning's
``CircleLoss``). Anchors without a positive or without a negative are skipped;
``reduction="mean"`` averages over the others (= pytorch-metric-learning's ``AvgNonZeroReducer``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import working_dtype
from fer_nb.miners import check_batch, check_reduction, cosine_matrix, pair_masks, reduce_rows

__all__ = ["CircleLoss", "circle_loop"]


class CircleLoss(nn.Module):
    """Pair-based Circle loss over all pairs of a batch (``m``, ``gamma``; ``detach_weights``: constant ``alpha``)."""

    def __init__(self, m: float = 0.4, gamma: float = 80.0, detach_weights: bool = True, reduction: str = "mean"):
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"CircleLoss: gamma must be > 0, got {gamma}")
        self.m, self.gamma, self.detach_weights = float(m), float(gamma), bool(detach_weights)
        self.reduction = check_reduction(reduction, "CircleLoss")

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}, detach_weights={self.detach_weights}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, "CircleLoss")
        pos, neg = pair_masks(labels)
        m = self.m
        with torch.autocast(embeddings.device.type, enabled=False):
            s = cosine_matrix(embeddings.to(working_dtype(embeddings)))
            sw = s.detach() if self.detach_weights else s
            alpha_p = F.relu(1 + m - sw)
            alpha_n = F.relu(sw + m)
            zp = (-self.gamma * alpha_p * (s - (1 - m))).masked_fill(~pos, float("-inf"))
            zn = (self.gamma * alpha_n * (s - m)).masked_fill(~neg, float("-inf"))
            keep = pos.any(1) & neg.any(1)
            zero = torch.zeros_like(s)
            lse = (torch.logsumexp(torch.where(keep[:, None], zp, zero), 1)
                   + torch.logsumexp(torch.where(keep[:, None], zn, zero), 1))
            return reduce_rows(F.softplus(lse), keep, self.reduction)


def circle_loop(embeddings: torch.Tensor, labels: torch.Tensor, m: float = 0.4, gamma: float = 80.0) -> torch.Tensor:
    """Loop reference (one anchor, one pair at a time) of the mean Circle loss."""
    z = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total, count = 0.0, 0
    for i in range(len(z)):
        if labels[i] < 0:
            continue
        sp_terms, sn_terms = [], []
        for j in range(len(z)):
            if j == i or labels[j] < 0:
                continue
            s = z[i] @ z[j]
            if labels[j] == labels[i]:
                a = max(1 + m - float(s.detach()), 0.0)
                sp_terms.append(torch.exp(-gamma * a * (s - (1 - m))))
            else:
                a = max(float(s.detach()) + m, 0.0)
                sn_terms.append(torch.exp(gamma * a * (s - m)))
        if sp_terms and sn_terms:
            total = total + torch.log(1 + sum(sn_terms) * sum(sp_terms))
            count += 1
    return total / max(count, 1)
