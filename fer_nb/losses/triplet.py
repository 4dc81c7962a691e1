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
from fer_nb.losses.common import working_dtype
from torch.nn import functional as F

from fer_nb.losses.distances import pairwise_distances

REDUCTIONS = ("mean", "sum", "none")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, power: int = 2) -> torch.Tensor:
    """``D[i, j] = ||a_i - b_j||^power`` (power 1 or 2), see :mod:`fer_nb.losses.distances`.

    ``power=1`` uses ``sqrt(max(d2, 1e-12))`` so coincident points have a zero (not NaN) gradient.
    """
    return pairwise_distances(a, b, power)


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """Shape and dtype checks shared by the tuple losses (errors name the fix)."""
    if embeddings.ndim != 2:
        raise ValueError(f"{name}: embeddings must be (batch, dim), got {tuple(embeddings.shape)}; flatten them first")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{name}: labels must be (batch,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integer class ids (use labels.long()), got {labels.dtype}")


def check_reduction(reduction: str, name: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_values(values: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """Mean/sum/none of a 1-D tensor; an empty one reduces to ``0 * anchor.sum()`` (graph kept)."""
    if reduction == "none":
        return values
    if values.numel() == 0:
        return anchor.sum() * 0.0
    return values.sum() if reduction == "sum" else values.mean()


def positive_negative_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(same, different)`` ``(B, B)`` masks of labelled pairs: same label (``i != j``) / other label."""
    valid = labels >= 0
    both = valid[:, None] & valid[None, :]
    idx = torch.arange(len(labels), device=labels.device)
    same = (labels[:, None] == labels[None, :]) & both & (idx[:, None] != idx[None, :])
    return same, (labels[:, None] != labels[None, :]) & both


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
        big = d64.detach().amax() + abs(self.margin) + 1.0
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
        if triplets is not None and (triplets.ndim != 2 or triplets.shape[1] != 3):
            raise ValueError(f"TripletLoss: triplets must be (T, 3) index rows (a, p, n), got {tuple(triplets.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            d = pairwise_distances(x, None, self.power)  # (B, B): one GEMM, then index triplets
            if triplets is None and self.reduction != "none":
                return self._all_triplets_reduced(d, labels, x)
            if triplets is None:
                triplets = self.all_triplets(labels)
            a, p, n = triplets[:, 0], triplets[:, 1], triplets[:, 2]
            per = F.relu(d[a, p] - d[a, n] + self.margin)
            return reduce_values(per, self.reduction, x)
