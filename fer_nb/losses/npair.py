"""Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016).

A batch of ``N`` pairs ``(x_i, x_i^+)`` from ``N`` different classes; the positive of every other
pair serves as a negative of anchor ``i``, so one batch of ``2N`` embeddings gives every anchor
``N - 1`` negatives (the "(N+1)-tuplet" built efficiently). With inner products ``f^T f``:

.. math::

    L_{\\text{N-pair-mc}} = \\frac1N\\sum_{i=1}^N \\log\\Bigl(1 + \\sum_{j\\ne i} \\exp\\bigl(f_i^\\top f_j^+ - f_i^\\top f_i^+\\bigr)\\Bigr),

a cross-entropy over the ``N x N`` matrix ``f_i^T f_j^+`` with the diagonal as target. Inner
products are unbounded, so Sohn adds a small L2 penalty on the embeddings (``l2_reg`` times the
mean of ``||f_i||^2 + ||f_i^+||^2`` here; 0 by default). The distance-based (N+1)-tuple loss of Liu
et al. (Eq. 1, :class:`fer_nb.losses.n_plus_one_tuple.NPlusOneTupleLoss`) is the same idea with
squared distances and a margin.

``forward(embeddings, labels, pairs=None)``: ``pairs`` ``(N, 2)`` gives anchor/positive row
indices (their classes must differ between pairs); without it the first two rows of every class
with at least two rows form its pair (pytorch-metric-learning's ``NPairsLoss`` choice, with which
it agrees under ``DotProductSimilarity`` and ``MeanReducer``). ``reduction``: ``"mean"`` over pairs,
``"sum"``, or ``"none"`` (per pair).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import working_dtype
from fer_nb.miners import check_batch, check_reduction

__all__ = ["NPairLoss", "first_pairs", "npair_loop"]


def first_pairs(labels: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` rows: for every class (ascending) with >= 2 labelled rows, its first two row indices."""
    valid = labels >= 0
    if labels.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=labels.device)
    key = torch.where(valid, labels, labels.max() + 1)          # unlabelled rows sort last
    order = torch.sort(key, stable=True).indices
    sorted_labels = key[order]
    # rank of each sorted row within its class
    start = torch.ones_like(sorted_labels, dtype=torch.bool)
    start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    idx = torch.arange(len(labels), device=labels.device)
    group_start = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    rank = idx - group_start
    firsts = (rank == 0) & valid[order]
    seconds = (rank == 1) & valid[order]
    has_pair = torch.zeros_like(firsts)
    has_pair[:-1] = seconds[1:]
    return torch.stack([order[firsts & has_pair], order[seconds]], 1)


class NPairLoss(nn.Module):
    """Multi-class N-pair loss with inner products (Sohn 2016).

    Args:
        l2_reg: weight of the mean squared norm of the embeddings used (0 = off).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"``.
    """

    def __init__(self, l2_reg: float = 0.0, reduction: str = "mean"):
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"NPairLoss: l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg = float(l2_reg)
        self.reduction = check_reduction(reduction, "NPairLoss")

    def extra_repr(self) -> str:
        return f"l2_reg={self.l2_reg}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                pairs: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, "NPairLoss")
        if pairs is None:
            pairs = first_pairs(labels)
        elif pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"NPairLoss: pairs must be (N, 2) anchor/positive rows, got {tuple(pairs.shape)}")
        else:
            la, lp = labels[pairs[:, 0]], labels[pairs[:, 1]]
            if bool((la != lp).any()) or len(torch.unique(la)) != len(la):
                raise ValueError("NPairLoss: each pair must share a label and the pairs must have distinct labels "
                                 "(use an N-pair sampler, or pass pairs=None)")
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            if len(pairs) == 0:
                return x.sum() * 0.0
            a, p = x[pairs[:, 0]], x[pairs[:, 1]]
            logits = a @ p.T
            per = F.cross_entropy(logits, torch.arange(len(pairs), device=x.device), reduction="none")
            if self.l2_reg:
                per = per + self.l2_reg * (a.pow(2).sum(1) + p.pow(2).sum(1))
            if self.reduction == "none":
                return per
            return per.sum() if self.reduction == "sum" else per.mean()


def npair_loop(embeddings: torch.Tensor, pairs: torch.Tensor, l2_reg: float = 0.0) -> torch.Tensor:
    """Loop reference of the mean N-pair-mc loss (with the L2 term) on given pairs."""
    total = 0.0
    for i in range(len(pairs)):
        fi, fip = embeddings[pairs[i, 0]], embeddings[pairs[i, 1]]
        s = 0.0
        for j in range(len(pairs)):
            if j != i:
                s = s + torch.exp(fi @ embeddings[pairs[j, 1]] - fi @ fip)
        total = total + torch.log(1 + torch.as_tensor(s)) + l2_reg * (fi @ fi + fip @ fip)
    return total / len(pairs)
