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

from fer_nb.losses.common import check_batch, check_reduction, reduce_clusters, reduce_values, working_rows
from fer_nb.losses.distances import pairwise_distances
from fer_nb.losses.masks import group_queries, positive_negative_masks, reference_anchor_pairs

__all__ = ["NPlusOneTupleLoss", "group_queries", "reference_n_plus_one"]


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
    def tuples_from_groups(labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pairs (B, 2), negative_mask (B, B), is_tuple (B,))`` of the identity-aware layout: query first,
        x+ = the next row with the query's label.

        One slot per row (see :func:`group_queries`): slot ``g`` is group ``g``'s tuple when ``is_tuple[g]``
        (its query is labelled and has a positive); other slots hold a harmless pair and no negative, and
        the loss leaves them out of its reduction. Selecting the tuples instead would give a tensor whose
        length is data, and the host would wait for the GPU every step to learn it."""
        if groups.shape != labels.shape:
            raise ValueError(f"groups must have the shape of labels {tuple(labels.shape)}, got {tuple(groups.shape)}")
        inverse, first = group_queries(groups)
        b = len(labels)
        idx = torch.arange(b, device=labels.device)
        member = inverse[None, :] == torch.arange(len(first), device=labels.device)[:, None]  # (B slots, B)
        query = first.clamp_max(b - 1)                       # an empty slot (first = b) has no member
        qlab = labels[query]
        cand = member & (labels[None, :] == qlab[:, None]) & (idx[None, :] != first[:, None])
        # first candidate row of each group (index b when there is none)
        pos = torch.where(cand, idx[None, :], torch.full_like(idx[None, :], b)).amin(1)
        ok = (pos < b) & (qlab >= 0)
        neg = member & (labels[None, :] != qlab[:, None]) & (labels[None, :] >= 0) & ok[:, None]
        return torch.stack([query, pos.clamp_max(b - 1)], 1), neg, ok

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None,
                pairs: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, "NPlusOneTupleLoss")
        b = len(labels)
        valid = labels >= 0
        explicit = pairs is not None   # user tuples: they must not use an ignored row
        is_tuple = None                # with groups: which slots are tuples
        if groups is not None:
            if pairs is not None:
                raise ValueError("NPlusOneTupleLoss: pass either groups or pairs, not both")
            pairs, negative_mask, is_tuple = self.tuples_from_groups(labels, groups)
        elif pairs is None:
            pairs = positive_negative_masks(labels)[0].nonzero()
        elif pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"NPlusOneTupleLoss: pairs must be (P, 2) (query, positive) rows, got {tuple(pairs.shape)}")
        if negative_mask is not None and negative_mask.shape != (len(pairs), b):
            raise ValueError(f"NPlusOneTupleLoss: negative_mask must be (P, B) = ({len(pairs)}, {b}), "
                             f"got {tuple(negative_mask.shape)}")
        if explicit and (not bool(valid[pairs.flatten()].all())
                         or (negative_mask is not None and bool((negative_mask & ~valid[None, :]).any()))):
            raise ValueError("NPlusOneTupleLoss: pairs or negative_mask use a row labelled -1 (ignored); "
                             "drop it from the tuples or give the row a label")
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, valid), labels, pairs, negative_mask, is_tuple)

    def compute(self, x: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor,
                negative_mask: torch.Tensor | None = None, is_tuple: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1, ``log(1 + sum_j exp(D(f, f+) + tau - D(f, f_j-)))`` per (query, positive) pair, reduced.

        ``negative_mask=None``: the negatives of a query are all labelled rows of another label.
        ``is_tuple``: ``(P,)`` bool, the pairs that count (the others are left out of the reduction; with
        ``reduction="none"`` only the counted ones are returned).
        """
        d = pairwise_distances(x, None, self.power)  # (B, B) once; each tuple indexes it
        d_qp = d[pairs[:, 0], pairs[:, 1]]
        if negative_mask is None:
            # sum_j exp(d_qp + tau - d_qj) = exp(d_qp + tau) * sum_j exp(-d_qj): one logsumexp per
            # query over its negatives, O(B^2) instead of a (P, B) tensor
            other = positive_negative_masks(labels)[1]                       # row q: the negatives of q
            lse = torch.logsumexp((-d).masked_fill(~other, float("-inf")), 1)   # (B,), -inf: no negative
            per = torch.logaddexp(torch.zeros_like(d_qp), d_qp + self.margin + lse[pairs[:, 0]])
        else:
            z = d_qp[:, None] + self.margin - d[pairs[:, 0]]                  # (P, B)
            z = z.masked_fill(~negative_mask, float("-inf"))
            z = torch.cat([torch.zeros_like(z[:, :1]), z], 1)  # log(1 + sum exp) = logsumexp([0, z])
            per = torch.logsumexp(z, 1)
        return reduce_values(per, self.reduction) if is_tuple is None else reduce_clusters(per, is_tuple, self.reduction)


def reference_n_plus_one(x: torch.Tensor, labels: torch.Tensor, margin: float = 0.0, power: int = 2) -> torch.Tensor:
    """Loop reference of :class:`NPlusOneTupleLoss` (Eq. 1, mean over every (query, positive) pair)."""
    vals = []
    for _, _, d_qp, d_qn in reference_anchor_pairs(x, labels, power):    # every (query, positive) pair
        z = d_qp + margin - d_qn        # log(1 + sum exp z) = logsumexp([0, z]): no overflow in float32
        vals.append(torch.logsumexp(torch.cat([z.new_zeros(1), z]), 0))
    return torch.stack(vals).mean() if vals else x.new_zeros(())
