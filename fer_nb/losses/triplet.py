"""Triplet loss (Ding et al., 2015; the baseline of Liu et al., CVPRW 2017, Sec. 2).

For a triplet (anchor ``a``, positive ``p`` of the anchor's class, negative ``n`` of another class)

.. math::

    \\ell(a, p, n) = \\max\\bigl(0,\\; D(f_a, f_p) - D(f_a, f_n) + \\tau\\bigr),

with ``D`` the Euclidean distance (``power=1``) or its square (``power=2``, Liu et al.'s Eq. 4
with ``M = I``). Liu et al. count ``C_X^3`` input passes and ``2 C_X^3`` distance evaluations for
this loss on a batch of ``X`` queries (Sec. 3) and do not train with it (Sec. 5.3).

``forward(embeddings, labels)`` uses **all** valid triplets of the batch (``y_a = y_p``,
``a != p``, ``y_n != y_a``; label ``-1`` = unlabelled, ignored); ``triplets=(T, 3)`` index rows
restrict it to given triplets. ``reduction="mean"`` averages over the triplets (zero-loss ones
included, like pytorch-metric-learning's ``MeanReducer``), ``"sum"`` sums, ``"none"`` returns the
per-triplet losses. A batch without a triplet gives ``0`` (still connected to the graph).
With ``"mean"``/``"sum"`` over all triplets nothing of size ``B^3`` is built: per anchor the negatives'
distances are sorted once, and for each positive ``sum_n max(0, t - D_an)`` with ``t = D_ap + tau``
is ``k t - (sum of the k smallest D_an)``, ``k = #{n : D_an < t}`` (``searchsorted`` on a prefix
sum, in float64): ``O(B^2 log B)`` time and memory, the same value and gradient.
Computed in float32 (float64 stays float64), also under autocast.

Example::

    loss = TripletLoss(margin=0.2, power=2)(embeddings, labels)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import (REDUCTIONS, check_batch, check_reduction, reduce_values,
                                  working_dtype, working_rows)
from fer_nb.losses.distances import pairwise_distances
from fer_nb.losses.masks import positive_negative_masks, reference_anchor_pairs

# names other modules imported from here before the ground floor existed (fer_nb.losses.common,
# .distances, .masks); kept importable from this module
pairwise_distance = pairwise_distances
__all__ = ["REDUCTIONS", "TripletLoss", "check_batch", "check_reduction", "pairwise_distance",
           "positive_negative_masks", "reduce_values", "reference_triplet", "working_dtype"]


class TripletLoss(nn.Module):
    """Hinge triplet loss over all (or given) triplets of a batch.

    Args:
        margin: the gap ``tau``.
        power: 1 = Euclidean distance, 2 = squared Euclidean distance.
        reduction: ``"mean"`` over triplets (zeros included), ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 1.0, power: int = 2, reduction: str = "mean"):
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"TripletLoss: power must be 1 or 2, got {power!r}")
        self.margin = float(margin)
        self.power = int(power)
        self.reduction = check_reduction(reduction, "TripletLoss")

    def extra_repr(self) -> str:
        return f"margin={self.margin}, power={self.power}, reduction={self.reduction!r}"

    @staticmethod
    def all_triplets(labels: torch.Tensor) -> torch.Tensor:
        """``(T, 3)`` index rows (a, p, n) of every valid triplet of ``labels`` (vectorised)."""
        same, diff = positive_negative_masks(labels)
        mask = same[:, :, None] & diff[:, None, :]
        return mask.nonzero()

    def _all_triplets_reduced(self, d: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Sum or mean of the hinge over every valid triplet, via sorted negatives (see module docstring)."""
        same, diff = positive_negative_masks(labels.to(d.device))
        n_triplets = (same.sum(1) * diff.sum(1)).sum()
        d64 = d.double()
        # above every threshold t, so never counted; a tensor (no .item()), which keeps torch.func.vmap working
        top = d64.detach().amax() if d64.numel() else d64.new_zeros(())   # (an empty batch has no maximum)
        big = top + abs(self.margin) + 1.0
        neg = torch.where(diff, d64, big.expand_as(d64))
        neg_sorted, _ = torch.sort(neg, dim=1)
        prefix = F.pad(torch.cumsum(neg_sorted, dim=1), (1, 0))      # prefix[:, k] = sum of the k smallest
        t = d64 + self.margin                                          # t[a, p] = D_ap + tau
        k = torch.searchsorted(neg_sorted.detach().contiguous(), t.detach().contiguous())  # #{n: D_an < t}
        per_pair = k.to(d64.dtype) * t - torch.gather(prefix, 1, k)   # sum_n relu(t - D_an) for each (a, p)
        total = (per_pair * same).sum()
        # no triplet: total is an exact 0 still connected to the graph, and the mean divides by 1
        out = total if self.reduction == "sum" else total / n_triplets.clamp_min(1).to(d64.dtype)
        return out.to(d.dtype)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                triplets: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, "TripletLoss")
        valid = labels >= 0
        if triplets is not None:
            if triplets.ndim != 2 or triplets.shape[1] != 3:
                raise ValueError(f"TripletLoss: triplets must be (T, 3) index rows (a, p, n), got {tuple(triplets.shape)}")
            if triplets.numel() and not bool(valid[triplets.flatten()].all()):
                raise ValueError("TripletLoss: triplets use a row labelled -1 (ignored); drop those triplets "
                                 "or give the row a label")
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, valid), labels, triplets)

    def compute(self, x: torch.Tensor, labels: torch.Tensor, triplets: torch.Tensor | None = None) -> torch.Tensor:
        """The hinge ``max(0, D_ap - D_an + tau)`` over all (or the given) triplets, reduced."""
        d = pairwise_distances(x, None, self.power)  # (B, B): one GEMM, then index triplets
        if triplets is None and self.reduction != "none":
            return self._all_triplets_reduced(d, labels, x)
        if triplets is None:
            triplets = self.all_triplets(labels)
        a, p, n = triplets[:, 0], triplets[:, 1], triplets[:, 2]
        per = F.relu(d[a, p] - d[a, n] + self.margin)
        return reduce_values(per, self.reduction)


def reference_triplet(x: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, power: int = 2,
                      reduction: str = "mean") -> torch.Tensor:
    """Loop reference of :class:`TripletLoss` over all triplets: one (anchor, positive) pair at a time.

    Per-triplet values in the order of :meth:`TripletLoss.all_triplets` for ``reduction="none"``.
    """
    vals = [F.relu(d_ap - d_an + margin) for _, _, d_ap, d_an in reference_anchor_pairs(x, labels, power)]
    per = torch.cat(vals) if vals else x.new_zeros(0)
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / max(len(per), 1)
