"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006, Eq. 4), with explicit distance and reduction.

For a pair of embeddings ``(x_i, x_j)`` at distance ``D_ij = ||x_i - x_j||_2`` (or its square,
``power=2``), Hadsell et al.'s Eq. 4 (with ``Y = 0`` for a similar pair, ``Y = 1`` for a
dissimilar one) is

.. math::

    L(i, j) = (1 - Y)\\, \\tfrac12 D_{ij}^2 + Y\\, \\tfrac12 \\max(0, m - D_{ij})^2 .

This module writes the general form used by metric-learning libraries,

.. math::

    L^+(i, j) = a\\, [D_{ij} - m_+]_+^{q}, \\qquad L^-(i, j) = a\\, [m_- - D_{ij}]_+^{q},

so that ``coefficient=a=0.5, hinge_power=q=2, pos_margin=m_+=0, neg_margin=m_-=m, power=1`` is
Eq. 4 exactly (the default) and ``coefficient=1, hinge_power=1`` is pytorch-metric-learning's
``ContrastiveLoss(pos_margin, neg_margin, distance=LpDistance(p=2, power=power,
normalize_embeddings=normalize))``.

Pairs: every *unordered* pair ``i < j`` of rows with labels ``!= -1`` (label ``-1`` = unlabelled,
ignored); same label = positive, different = negative.

Reductions (explicit, as the libraries' reducers differ):

* ``"mean"``: mean over positive pairs + mean over negative pairs (each 0 if there is none); the
  same number as pytorch-metric-learning with ``reducer=MeanReducer()``.
* ``"mean_nonzero"``: the same, but each mean is over the pairs with a loss ``> 0`` only;
  pytorch-metric-learning's default ``AvgNonZeroReducer()``.
* ``"sum"``: sum over all unordered pairs (Hadsell et al.'s sum over the training pairs).
* ``"none"``: the ``(B, B)`` matrix of per-pair losses, filled above the diagonal (``i < j``),
  zero elsewhere.

Distances are computed in float32 (float64 inputs stay float64), also under autocast; the square
root is taken of ``max(D^2, eps)`` so coincident points (and all-zero batches) keep finite gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import REDUCTIONS as _BASE_REDUCTIONS
from fer_nb.losses.common import check_batch, check_reduction, working_rows
from fer_nb.losses.distances import normalise, pairwise_sq_distances
from fer_nb.losses.masks import positive_negative_masks

REDUCTIONS = ("mean_nonzero", *_BASE_REDUCTIONS)   # the shared three + pytorch-metric-learning's default


class ContrastiveLoss(nn.Module):
    """Contrastive loss of Hadsell et al. (2006, Eq. 4), in the pos/neg-margin form of the libraries.

    Args:
        neg_margin: ``m_-``, dissimilar pairs closer than this are pushed apart (Hadsell's ``m``).
        pos_margin: ``m_+``, similar pairs farther than this are pulled together (Hadsell: 0).
        power: distance ``D = ||x_i - x_j||^power`` (1 = Euclidean, Hadsell; 2 = squared Euclidean).
        hinge_power: ``q``, exponent of the hinge (2 = Hadsell's squared hinge; 1 = plain hinge as
            in pytorch-metric-learning).
        coefficient: ``a``, factor in front of each pair term (Hadsell: 1/2).
        normalize: L2-normalise the embeddings first (pytorch-metric-learning's default distance
            does; Hadsell et al. do not).
        reduction: ``"mean"``, ``"mean_nonzero"``, ``"sum"`` or ``"none"`` (see the module docstring).
        eps: floor under ``D^2`` before the square root and under norms.

    ``forward(embeddings, labels) -> loss``.
    """

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, *, power: int = 1, hinge_power: int = 2,
                 coefficient: float = 0.5, normalize: bool = False, reduction: str = "mean", eps: float = 1e-12):
        super().__init__()
        check_reduction(reduction, "ContrastiveLoss", REDUCTIONS)
        if power not in (1, 2):
            raise ValueError(f"ContrastiveLoss: power must be 1 (Euclidean distance) or 2 (squared distance), got {power!r}")
        if hinge_power not in (1, 2):
            raise ValueError(f"ContrastiveLoss: hinge_power must be 1 (hinge) or 2 (squared hinge, Hadsell), got {hinge_power!r}")
        if neg_margin < pos_margin:
            raise ValueError(f"ContrastiveLoss: neg_margin ({neg_margin}) must be >= pos_margin ({pos_margin})")
        if coefficient <= 0:
            raise ValueError(f"ContrastiveLoss: coefficient must be > 0, got {coefficient}")
        self.neg_margin, self.pos_margin = float(neg_margin), float(pos_margin)
        self.power, self.hinge_power, self.coefficient = int(power), int(hinge_power), float(coefficient)
        self.normalize, self.reduction, self.eps = bool(normalize), reduction, float(eps)

    def extra_repr(self) -> str:
        return (f"neg_margin={self.neg_margin}, pos_margin={self.pos_margin}, power={self.power}, "
                f"hinge_power={self.hinge_power}, coefficient={self.coefficient}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}")

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, B)`` matrix of ``D_ij`` (Euclidean, or squared for ``power=2``) of float rows ``x``."""
        if self.normalize:
            x = normalise(x, self.eps)
        d2 = pairwise_sq_distances(x)
        return d2 if self.power == 2 else d2.clamp_min(self.eps).sqrt()

    def pair_masks(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(B, B)`` masks of the positive and negative unordered pairs ``i < j``."""
        return positive_negative_masks(labels, unordered=True)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, type(self).__name__)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, labels >= 0), labels)

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Hadsell et al.'s Eq. 4 in the ``a [D - m+]_+^q`` / ``a [m- - D]_+^q`` form, reduced."""
        d = self.distances(x)
        pos, neg = self.pair_masks(labels)
        a, q = self.coefficient, self.hinge_power
        pos_loss = a * torch.relu(d - self.pos_margin).pow(q) * pos
        neg_loss = a * torch.relu(self.neg_margin - d).pow(q) * neg
        if self.reduction == "none":
            return pos_loss + neg_loss
        if self.reduction == "sum":
            return pos_loss.sum() + neg_loss.sum()
        if self.reduction == "mean":
            pos_count, neg_count = pos.sum(), neg.sum()
        else:  # mean_nonzero: average over the pairs that still violate their margin
            pos_count, neg_count = (pos_loss > 0).sum(), (neg_loss > 0).sum()
        dt = pos_loss.dtype
        return (pos_loss.sum() / pos_count.clamp_min(1).to(dt)
                + neg_loss.sum() / neg_count.clamp_min(1).to(dt))


def reference_contrastive(x: torch.Tensor, labels: torch.Tensor, neg_margin: float = 1.0, pos_margin: float = 0.0,
                          power: int = 1, hinge_power: int = 2, coefficient: float = 0.5, normalize: bool = False,
                          reduction: str = "mean") -> torch.Tensor:
    """Loop reference of :class:`ContrastiveLoss`: one labelled row ``i`` at a time, its pairs ``j > i``."""
    y = labels.tolist()
    pos, neg = [x.new_zeros(0)], [x.new_zeros(0)]
    for i in range(len(y)):
        if y[i] < 0:
            continue
        xi = x[i] / x[i].norm().clamp_min(1e-12) if normalize else x[i]
        later = [j for j in range(i + 1, len(y)) if y[j] >= 0]
        xj = x[later]
        if normalize:
            xj = xj / xj.norm(dim=1, keepdim=True).clamp_min(1e-12)
        d = (xj - xi).pow(2).sum(1).sqrt() ** power
        same = torch.tensor([y[j] == y[i] for j in later], dtype=torch.bool, device=x.device)
        pos.append(coefficient * torch.relu(d[same] - pos_margin) ** hinge_power)
        neg.append(coefficient * torch.relu(neg_margin - d[~same]) ** hinge_power)
    pos, neg = torch.cat(pos), torch.cat(neg)
    if reduction == "sum":
        return pos.sum() + neg.sum()
    if reduction == "mean_nonzero":
        pos, neg = pos[pos > 0], neg[neg > 0]
    return pos.sum() / max(len(pos), 1) + neg.sum() / max(len(neg), 1)


__all__ = ["ContrastiveLoss", "REDUCTIONS", "pairwise_sq_distances", "reference_contrastive"]
