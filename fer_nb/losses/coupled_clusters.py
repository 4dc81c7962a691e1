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

from fer_nb.losses.n_plus_one_tuple import group_queries
from fer_nb.losses.triplet import check_batch, check_reduction, pairwise_distance, working_dtype


def cluster_masks(labels: torch.Tensor, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(G, B)`` masks (positives, negatives) of each cluster; see the module docstring."""
    valid = labels >= 0
    if groups is None:
        classes = torch.unique(labels[valid])
        pos = labels[None, :] == classes[:, None]
        neg = valid[None, :] & ~pos
        return pos, neg
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have the shape of labels {tuple(labels.shape)}, got {tuple(groups.shape)}")
    inverse, first = group_queries(groups)
    member = inverse[None, :] == torch.arange(len(first), device=labels.device)[:, None]
    qlab = labels[first]
    pos = member & (labels[None, :] == qlab[:, None]) & (qlab[:, None] >= 0)
    neg = member & (labels[None, :] != qlab[:, None]) & valid[None, :] & (qlab[:, None] >= 0)
    return pos, neg


def masked_mean(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(G, d)`` mean of the rows of ``x`` selected by each row of ``mask`` (0 for an empty row)."""
    w = mask.to(x.dtype)
    return (w @ x) / w.sum(1, keepdim=True).clamp_min(1.0)


def reduce_clusters(per: torch.Tensor, keep: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """Reduce per-cluster values over the clusters in ``keep`` (no cluster -> 0 with the graph kept)."""
    if reduction == "none":
        return per[keep]
    if not bool(keep.any()):
        return anchor.sum() * 0.0
    total = per[keep].sum()
    return total if reduction == "sum" else total / keep.sum()


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
        pos, neg = cluster_masks(labels, groups)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            c = masked_mean(pos, x)                          # (G, d) positive centres
            d = pairwise_distance(c, x, 2)                   # (G, B) squared distances to the centre
            d_neg = d.masked_fill(~neg, float("inf")).amin(1)  # nearest negative f*-
            has_neg = neg.any(1)
            d_neg = torch.where(has_neg, d_neg, torch.zeros_like(d_neg))
            hinge = 0.5 * F.relu(d + self.margin - d_neg[:, None])
            hinge = hinge * (pos & has_neg[:, None]).to(x.dtype)
            per = hinge.sum(1) / pos.sum(1).clamp_min(1).to(x.dtype)
            return reduce_clusters(per, pos.any(1), self.reduction, x)
