"""Lifted structured loss (Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted
Structured Feature Embedding", CVPR 2016, Eq. 4).

For every positive pair ``(i, j)`` of the batch, *all* negatives of either end take part, through
a smooth maximum (the paper's smooth upper bound of its Eq. 3):

.. math::

    \\tilde J_{ij} = \\log\\Bigl(\\sum_{(i,k)\\in\\mathcal N} e^{\\alpha - D_{ik}} + \\sum_{(j,l)\\in\\mathcal N} e^{\\alpha - D_{jl}}\\Bigr) + D_{ij},
    \\qquad
    \\tilde J = \\frac{1}{2|\\mathcal P|}\\sum_{(i,j)\\in\\mathcal P} \\max(0, \\tilde J_{ij})^2,

``D`` the Euclidean distance, ``alpha`` the margin (1 in the paper), ``P`` the unordered positive
pairs. pytorch-metric-learning's ``LiftedStructureLoss(neg_margin=alpha, pos_margin=0)`` with
``LpDistance(power=1, normalize_embeddings=False)`` and ``MeanReducer`` is this equation (it counts
each pair in both orders and halves it, which is the same mean). A positive pair whose ends have
no negative in the batch is skipped. ``reduction="none"``: ``(B, B)`` matrix of
``max(0, J_ij)^2 / 2`` on the positive pairs (0 elsewhere).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import working_dtype
from fer_nb.losses.distances import pairwise_distances
from fer_nb.miners import check_batch, check_reduction, pair_masks

__all__ = ["LiftedStructureLoss", "lifted_structure_loop"]


class LiftedStructureLoss(nn.Module):
    """Lifted structured loss (Eq. 4) over all positive pairs of a batch.

    Args:
        margin: ``alpha`` (1). normalize: put embeddings on the unit sphere first (the paper does not).
        reduction: ``"mean"`` (Eq. 4), ``"sum"`` (of ``max(0, J)^2 / 2`` over unordered pairs) or ``"none"``.
    """

    def __init__(self, margin: float = 1.0, normalize: bool = False, reduction: str = "mean"):
        super().__init__()
        self.margin, self.normalize = float(margin), bool(normalize)
        self.reduction = check_reduction(reduction, "LiftedStructureLoss")

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, "LiftedStructureLoss")
        pos, neg = pair_masks(labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            if self.normalize:
                x = F.normalize(x, dim=1)
            d = pairwise_distances(x, None, 1)
            # per row: log sum_{k in N_i} exp(alpha - D_ik); the pair term is logaddexp of two rows
            # (the two ends of a positive pair share their negatives; a row without any gets a finite
            # placeholder and its pairs are skipped, so no -inf - -inf reaches the backward pass)
            has_neg = neg.any(1)
            z = (self.margin - d).masked_fill(~neg, float("-inf"))
            row = torch.logsumexp(torch.where(has_neg[:, None], z, torch.zeros_like(z)), dim=1)
            pair = torch.logaddexp(row[:, None], row[None, :]) + d
            usable = pos & has_neg[:, None]
            per = torch.where(usable, F.relu(pair), torch.zeros_like(pair)).pow(2) / 2
            if self.reduction == "none":
                return per
            total = per.sum() / 2                      # each unordered pair appears twice
            if self.reduction == "sum":
                return total
            return total / (usable.sum() / 2).clamp_min(1).to(per.dtype)


def lifted_structure_loop(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Loop reference of Eq. 4 over unordered positive pairs ``i < j``."""
    b = len(embeddings)

    def dist(i, k):
        return ((embeddings[i] - embeddings[k]) ** 2).sum().clamp_min(1e-12).sqrt()

    total, count = 0.0, 0
    for i in range(b):
        for j in range(i + 1, b):
            if labels[i] < 0 or labels[i] != labels[j]:
                continue
            terms = [torch.exp(margin - dist(i, k)) for k in range(b) if labels[k] >= 0 and labels[k] != labels[i]]
            terms += [torch.exp(margin - dist(j, l)) for l in range(b) if labels[l] >= 0 and labels[l] != labels[j]]
            if not terms:
                continue
            value = torch.log(sum(terms)) + dist(i, j)
            total = total + torch.clamp(value, min=0) ** 2
            count += 1
    return total / (2 * max(count, 1))
