"""Coupled clusters loss (H. Liu et al., CVPR 2016), the anchor-free baseline of Liu et al. (Sec. 2).

A positive set ``{f_i+}`` (one class) and a negative set ``{f_j-}`` (other classes). The anchor is
the positive centre ``c+ = mean_i f_i+``; only the negative nearest to it, ``f*-``, is used:

.. math::

    L = \\frac{1}{M} \\sum_{i=1}^{M} \\tfrac12 \\max\\bigl(0,\\;
        \\|f_i^+ - c^+\\|^2 + \\alpha - \\|f_*^- - c^+\\|^2\\bigr).

(H. Liu et al. sum over ``i``; the mean is used here so that the value does not grow with ``M``.)
Comparing every example with the centre instead of with each other needs ``O(N + M)`` distances
per cluster, the saving Liu et al. inherit in their (N+M)-tuple clusters loss (Eq. 3).

Which clusters ``forward(embeddings, labels, groups=None)`` forms (shared with
:class:`fer_nb.losses.nm_tuple_clusters.NMTupleClustersLoss` through :func:`cluster_masks`):

* ``groups=None``: one cluster per class present in the batch; positives = that class, negatives =
  every other labelled row;
* ``groups=(B,)`` tuple ids (identity-aware batches): one cluster per group; the **first row of a
  group is the query**, positives = the group's rows with the query's label (query included),
  negatives = the group's rows with other labels.

Rows labelled ``-1`` are ignored. ``reduction``: "mean" over clusters, "sum" or "none". A cluster
without negatives contributes 0 (there is no ``f*-``); one without positives is skipped.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_batch, check_reduction, reduce_clusters, working_rows
from fer_nb.losses.distances import pairwise_sq_distances
from fer_nb.losses.masks import cluster_masks, masked_mean, masked_min, reference_clusters

__all__ = ["CoupledClustersLoss", "cluster_masks", "masked_mean", "reduce_clusters", "reference_clusters",
           "reference_coupled_clusters"]


class CoupledClustersLoss(nn.Module):
    """Coupled clusters loss with squared Euclidean distances.

    Args:
        margin: ``alpha``.
        reduction: ``"mean"`` over clusters, ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = float(margin)
        self.reduction = check_reduction(reduction, "CoupledClustersLoss")

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, "CoupledClustersLoss")
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, labels >= 0), labels, groups)

    def compute(self, x: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``1/M sum_i 1/2 max(0, ||f_i+ - c+||^2 + alpha - ||f*- - c+||^2)`` per cluster, reduced."""
        pos, neg = cluster_masks(labels, groups)
        c = masked_mean(pos, x)                          # (G, d) positive centres
        d = pairwise_sq_distances(c, x)                  # (G, B) squared distances to the centre
        has_neg = neg.any(1)
        d_neg = torch.where(has_neg, masked_min(d, neg), torch.zeros((), dtype=d.dtype, device=d.device))  # f*-
        hinge = 0.5 * F.relu(d + self.margin - d_neg[:, None])
        hinge = torch.where(pos & has_neg[:, None], hinge, torch.zeros((), dtype=d.dtype, device=d.device))
        per = hinge.sum(1) / pos.sum(1).clamp_min(1).to(x.dtype)
        return reduce_clusters(per, pos.any(1), self.reduction)


def reference_coupled_clusters(x: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                               groups: torch.Tensor | None = None) -> torch.Tensor:
    """Loop reference of :class:`CoupledClustersLoss` (mean over clusters), one cluster at a time."""
    vals = []
    for pos, neg in reference_clusters(labels, groups):
        c = x[pos].mean(0)
        if not neg:
            vals.append(x.new_zeros(()))
            continue
        d_neg = min((x[j] - c).pow(2).sum() for j in neg)
        vals.append(sum(0.5 * F.relu((x[i] - c).pow(2).sum() + margin - d_neg) for i in pos) / len(pos))
    return torch.stack(vals).mean() if vals else x.new_zeros(())
