"""Which rows a tuple or cluster loss compares: the pair, group and cluster masks, built once here.

All masks are boolean tensors on the labels' device, built without Python loops; label ``-1``
(unlabelled) rows belong to no pair and no cluster.
"""
from __future__ import annotations

import torch


def positive_negative_masks(labels: torch.Tensor, unordered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(same, different)`` ``(B, B)`` masks of labelled pairs: same label (``i != j``) / other label.

    ``unordered=True`` keeps each pair once (``i < j``), as the contrastive loss counts them.
    """
    valid = labels >= 0
    both = valid[:, None] & valid[None, :]
    idx = torch.arange(len(labels), device=labels.device)
    equal = labels[:, None] == labels[None, :]
    keep = (idx[:, None] < idx[None, :]) if unordered else (idx[:, None] != idx[None, :])
    different = ~equal & both
    return equal & both & keep, (different & keep) if unordered else different


def group_queries(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(group index of each row, index of each group's first row)``; vectorised, no host sync.

    Groups are indexed by the rank of their id (as ``torch.unique(groups, return_inverse=True)`` does).
    How many groups there are is data, so the second tensor has one slot per row, ``B``, not one per
    group: slots ``G..B-1`` belong to no group and hold ``B`` (a row index past the end). A shape that
    depended on the data would make the host wait for the GPU to learn it, every step.
    """
    b = len(groups)
    idx = torch.arange(b, device=groups.device)
    order = torch.sort(groups, stable=True).indices
    ranked = groups[order]
    new = torch.ones_like(ranked, dtype=torch.bool)
    new[1:] = ranked[1:] != ranked[:-1]                       # the first row of each id, in sorted order
    inverse = torch.empty_like(idx).scatter_(0, order, new.long().cumsum(0) - 1)
    first = torch.full((b,), b, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, idx, reduce="amin")
    return inverse, first


def cluster_masks(labels: torch.Tensor, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(G, B)`` masks (positives, negatives) of each cluster.

    ``groups=None``: one cluster per class present; positives = that class, negatives = every other
    labelled row. ``groups=(B,)`` tuple ids: one cluster per group; the first row of a group is the
    query, positives = the group's rows with the query's label (query included), negatives = the
    group's rows with other labels (a group whose query is unlabelled has neither). With groups, ``G``
    is ``B``, the groups in the order of their ids followed by empty rows (see :func:`group_queries`);
    the losses leave clusters without positives out of their reductions, so empty rows count nowhere.
    """
    valid = labels >= 0
    if groups is None:
        classes = torch.unique(labels[valid])
        pos = labels[None, :] == classes[:, None]
        neg = valid[None, :] & ~pos
        return pos, neg
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have the shape of labels {tuple(labels.shape)} (one tuple id per row), "
                         f"got {tuple(groups.shape)}")
    inverse, first = group_queries(groups)
    member = inverse[None, :] == torch.arange(len(first), device=labels.device)[:, None]
    qlab = labels[first.clamp_max(len(labels) - 1)]          # an empty slot has no member: any label will do
    pos = member & (labels[None, :] == qlab[:, None]) & (qlab[:, None] >= 0)
    neg = member & (labels[None, :] != qlab[:, None]) & valid[None, :] & (qlab[:, None] >= 0)
    return pos, neg


def masked_mean(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(G, d)`` mean of the rows of ``x`` selected by each row of ``mask`` (0 for an empty row)."""
    w = mask.to(x.dtype)
    return (w @ x) / w.sum(1, keepdim=True).clamp_min(1.0)


def masked_min(values: torch.Tensor, mask: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Row-wise minimum of ``values`` over ``mask`` (``+inf`` for an empty row, also with zero columns)."""
    inf = torch.full((), float("inf"), dtype=values.dtype, device=values.device)
    filled = torch.where(mask, values, inf)
    if filled.shape[-1] == 0:   # amin over an empty dimension raises; the minimum of nothing is +inf
        shape = (*filled.shape[:-1], 1) if keepdim else filled.shape[:-1]
        return inf.expand(shape)
    return filled.amin(-1, keepdim=keepdim)


def reference_clusters(labels: torch.Tensor, groups: torch.Tensor | None = None) -> list[tuple[list[int], list[int]]]:
    """Loop reference of :func:`cluster_masks`: (positive rows, negative rows) of each cluster."""
    y = labels.tolist()
    out = []
    if groups is None:
        for c in sorted({v for v in y if v >= 0}):
            out.append(([i for i, v in enumerate(y) if v == c], [i for i, v in enumerate(y) if v >= 0 and v != c]))
        return out
    g = groups.tolist()
    for gid in sorted(set(g)):
        rows = [i for i in range(len(y)) if g[i] == gid]
        q = y[rows[0]]
        if q >= 0:
            out.append(([i for i in rows if y[i] == q], [i for i in rows if y[i] >= 0 and y[i] != q]))
    return out


def reference_anchor_pairs(x: torch.Tensor, labels: torch.Tensor, power: int = 2):
    """Loop reference of :func:`positive_negative_masks` with distances: yields ``(a, p, D_ap, D_an)``
    for every labelled (anchor, positive) pair in row order, ``D_an`` the ``(N_a,)`` distances of the
    anchor to its negatives (squared Euclidean for ``power=2``, Euclidean for ``power=1``)."""
    y = labels.tolist()
    for a in range(len(y)):
        if y[a] < 0:
            continue
        neg = torch.tensor([yn >= 0 and yn != y[a] for yn in y], dtype=torch.bool, device=x.device)
        d_an = (x[neg] - x[a]).pow(2).sum(1)
        for p in range(len(y)):
            if p != a and y[p] == y[a]:
                d_ap = (x[a] - x[p]).pow(2).sum()
                yield (a, p, d_ap, d_an) if power == 2 else (a, p, d_ap.sqrt(), d_an.sqrt())


__all__ = ["cluster_masks", "group_queries", "masked_mean", "masked_min", "positive_negative_masks", "reference_anchor_pairs",
           "reference_clusters"]
