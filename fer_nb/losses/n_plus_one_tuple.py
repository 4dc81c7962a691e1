"""(N+1)-tuple loss (Sohn, NIPS 2016), Liu et al.'s Eq. 1 and its rewrite Eq. 2.

For a query ``x``, one positive ``x+`` and negatives ``{x_j-}`` (Liu et al., Eq. 1)

.. math::

    L = \\log\\Bigl(1 + \\sum_j \\exp\\bigl(D(f, f^+) + \\tau - D(f, f_j^-)\\bigr)\\Bigr).

Eq. 2 splits the exponent with any reference distance ``T``:
``exp(D(f,f+) - T + tau/2) * exp(T + tau/2 - D(f,f_j-))`` -- a product, i.e. an "OR": a large
negative distance can hide a large positive distance, which motivates Eq. 3 (see
:mod:`fer_nb.losses.nm_tuple_clusters`). ``D`` is the squared (``power=2``, default) or plain
Euclidean distance.

Which tuples ``forward(embeddings, labels, ...)`` forms:

* default: every ordered (query, positive) pair of the batch with the same label, negatives = all
  rows of other labels;
* ``groups=(B,)`` tuple ids (identity-aware batches of :mod:`fer_nb.data.samplers`): in each group
  the **first row is the query**, the first later row with the query's label is ``x+`` and the
  rows with other labels are the negatives (further positives are not used by this loss);
* ``pairs=(P, 2)`` (query, positive) rows and optionally ``negative_mask=(P, B)`` bool: explicit
  tuples (``negative_mask`` defaults to "all rows with another label").

Label ``-1`` rows are ignored. ``reduction`` "mean" (over tuples), "sum" or "none". When the
negatives are the default ones (they depend on the query only), ``sum_j exp(D(f,f+) + tau - D(f,f_j-))
= exp(D(f,f+) + tau) sum_j exp(-D(f,f_j-))`` needs one ``logsumexp`` per query: ``O(B^2)`` work. The
``logsumexp`` form ``log(1 + sum exp z) = logsumexp([0, z])`` is used, so large distances do not
overflow. With ``margin=0`` and one positive per class used as the other classes' negatives this
is pytorch-metric-learning's ``NPairsLoss`` with ``distance=LpDistance(normalize_embeddings=False,
power=2)`` (tested).
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.triplet import (check_batch, check_reduction, pairwise_distance, positive_negative_masks,
                                   reduce_values, working_dtype)


def group_queries(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unique group ids, index of each group's first row)``; vectorised."""
    uniq, inverse = torch.unique(groups, return_inverse=True)
    idx = torch.arange(len(groups), device=groups.device)
    first = torch.full((len(uniq),), len(groups), dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, idx, reduce="amin")
    return inverse, first


class NPlusOneTupleLoss(nn.Module):
    """Liu et al.'s Eq. 1 ((N+1)-tuple / N-pair loss with a margin ``tau``).

    Args:
        margin: ``tau`` in Eq. 1 (Sohn's N-pair loss has 0).
        power: 2 = squared Euclidean ``D`` (Eq. 4 with ``M = I``), 1 = Euclidean.
        reduction: ``"mean"`` over tuples, ``"sum"`` or ``"none"``.
    """

    def __init__(self, margin: float = 0.0, power: int = 2, reduction: str = "mean"):
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"NPlusOneTupleLoss: power must be 1 or 2, got {power!r}")
        self.margin = float(margin)
        self.power = int(power)
        self.reduction = check_reduction(reduction, "NPlusOneTupleLoss")

    def extra_repr(self) -> str:
        return f"margin={self.margin}, power={self.power}, reduction={self.reduction!r}"

    @staticmethod
    def tuples_from_groups(labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairs, negative_mask) of the identity-aware layout: query first, x+ = next same-label row."""
        if groups.shape != labels.shape:
            raise ValueError(f"groups must have the shape of labels {tuple(labels.shape)}, got {tuple(groups.shape)}")
        inverse, first = group_queries(groups)
        b = len(labels)
        idx = torch.arange(b, device=labels.device)
        member = inverse[None, :] == torch.arange(len(first), device=labels.device)[:, None]  # (G, B)
        qlab = labels[first]
        cand = member & (labels[None, :] == qlab[:, None]) & (idx[None, :] != first[:, None])
        # first candidate row of each group (index b when there is none)
        pos = torch.where(cand, idx[None, :], torch.full_like(idx[None, :], b)).amin(1)
        ok = (pos < b) & (qlab >= 0)
        neg = member & (labels[None, :] != qlab[:, None]) & (labels[None, :] >= 0)
        pairs = torch.stack([first, pos.clamp_max(b - 1)], 1)[ok]
        return pairs, neg[ok]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None,
                pairs: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, "NPlusOneTupleLoss")
        b = len(labels)
        valid = labels >= 0
        if groups is not None:
            if pairs is not None:
                raise ValueError("NPlusOneTupleLoss: pass either groups or pairs, not both")
            pairs, negative_mask = self.tuples_from_groups(labels, groups)
        elif pairs is None:
            pairs = positive_negative_masks(labels)[0].nonzero()
        elif pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"NPlusOneTupleLoss: pairs must be (P, 2) (query, positive) rows, got {tuple(pairs.shape)}")
        per_query_negatives = negative_mask is None   # negatives depend on the query only
        if per_query_negatives:
            other = (labels[:, None] != labels[None, :]) & valid[None, :]   # row q: the negatives of query q
        elif negative_mask.shape != (len(pairs), b):
            raise ValueError(f"NPlusOneTupleLoss: negative_mask must be (P, B) = ({len(pairs)}, {b}), "
                             f"got {tuple(negative_mask.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            d = pairwise_distance(x, x, self.power)  # (B, B) once; each tuple indexes it
            d_qp = d[pairs[:, 0], pairs[:, 1]]
            if per_query_negatives:
                # sum_j exp(d_qp + tau - d_qj) = exp(d_qp + tau) * sum_j exp(-d_qj): one logsumexp per
                # query over its negatives, O(B^2) instead of a (P, B) tensor
                lse = torch.logsumexp((-d).masked_fill(~other, float("-inf")), 1)   # (B,), -inf: no negative
                per = torch.logaddexp(torch.zeros_like(d_qp), d_qp + self.margin + lse[pairs[:, 0]])
                return reduce_values(per, self.reduction, x)
            d_qn = d[pairs[:, 0]]  # (P, B)
            z = d_qp[:, None] + self.margin - d_qn
            z = z.masked_fill(~negative_mask, float("-inf"))
            z = torch.cat([torch.zeros_like(z[:, :1]), z], 1)  # log(1 + sum exp) = logsumexp([0, z])
            per = torch.logsumexp(z, 1)
            return reduce_values(per, self.reduction, x)
