"""Retrieval evaluation of an embedding, beside accuracy (course chapter, issue #21).

Musgrave, Belongie & Lim, "A Metric Learning Reality Check" (ECCV 2020) argue that metric-learning
papers should report, on *held-out classes*, retrieval metrics that reward a well-clustered
embedding rather than a lucky nearest neighbour:

* **Recall@K** (the metric-learning convention, not the information-retrieval one): the share
  of queries with at least one same-class item among their ``K`` nearest references;
* **R-precision**: with ``R`` the number of references of the query's class, the share of
  same-class items among the ``R`` nearest;
* **MAP@R**: mean average precision cut at ``R``,
  ``MAP@R = 1/R sum_{k=1}^{R} P(k) rel(k)``, ``P(k)`` = precision among the first ``k``,
  ``rel(k) = 1`` when the ``k``-th neighbour has the query's class. It is 1 only if the ``R``
  nearest are exactly the ``R`` same-class items, and it rewards putting them first.

All three are returned in percent, averaged over queries; a query whose class has no other
reference (``R = 0``) is skipped. With ``references=None`` the queries are searched among
themselves, leaving each query out (pytorch-metric-learning's ``AccuracyCalculator`` with
``ref_includes_query=True``; its ``precision_at_1`` is our Recall@1).

Nearness is measured in a loss's own geometry (:data:`METRICS`): ``"cosine"`` for the losses that
see only directions (angular softmax, CosFace, ArcFace, NormFace, SphereFace, the proxy losses,
SupCon, multi-similarity, Circle, the large-margin loss), ``"euclidean"`` for the distance losses,
``"dot"`` for the inner-product N-pair loss; :func:`metric_for` returns it for a loss module.
:func:`ncm_accuracy` is nearest-class-mean accuracy in the same geometry (Euclidean nearest-mean
accuracy can mislead about an angular loss: its classes are cones, whose means can lie close together
near the origin while the directions are well separated; on the toy problems of the course
chapters the cosine rule agrees with an angular loss's own classifier within a few points, the
Euclidean one can differ by ten points either way).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.nn import functional as F

__all__ = ["METRICS", "similarity", "retrieval_metrics", "retrieval_metrics_loop", "ncm_accuracy",
           "ncm_accuracy_loop", "class_means", "metric_for", "ANGULAR_LOSSES", "DOT_LOSSES"]

METRICS = ("euclidean", "cosine", "dot")

#: class names of the losses whose geometry is angular (they depend on directions only, or decide by angle)
ANGULAR_LOSSES = frozenset({
    "AngularMarginLoss", "CosFaceLoss", "CosineClassifierLoss", "NormFaceLoss", "SphereFaceLoss", "ProxyNCALoss",
    "ProxyAnchorLoss", "SupConLoss", "MultiSimilarityLoss", "CircleLoss", "LargeMarginLoss",
})
#: losses that compare by inner product
DOT_LOSSES = frozenset({"NPairLoss"})


def metric_for(loss) -> str:
    """The geometry a loss module compares embeddings in: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    A loss with ``normalize=True`` (distances between unit vectors rank like cosines) is ``"cosine"``;
    a sum of losses (``toy2d.LossSum``) is Euclidean unless all its terms are angular.
    """
    name = type(loss).__name__
    if name == "LossSum":
        kinds = {metric_for(t) for t in loss.terms.values()}
        return kinds.pop() if len(kinds) == 1 else "euclidean"
    if name == "ProxyNCALoss" and not getattr(loss, "normalize", True):
        return "euclidean"
    if name in ANGULAR_LOSSES or getattr(loss, "normalize", False) is True:
        return "cosine"  # directions only, or distances between unit vectors (same ranking as cosine)
    if name in DOT_LOSSES:
        return "dot"
    return "euclidean"


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def similarity(queries: torch.Tensor, references: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``(Q, R)`` similarity, larger = nearer: ``-||q - r||``, ``cos(q, r)`` or ``q . r`` (float64)."""
    _check_metric(metric)
    q, r = queries.detach().double(), references.detach().double()
    if metric == "cosine":
        return F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    if metric == "dot":
        return q @ r.T
    return -torch.cdist(q, r)


def _check(emb: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if emb.ndim != 2 or labels.ndim != 1 or len(emb) != len(labels):
        raise ValueError(f"{what}: embeddings must be (N, D) and labels (N,), got {tuple(emb.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"{what}: labels must be integer class ids (use labels.long())")


def retrieval_metrics(queries: torch.Tensor, query_labels: torch.Tensor, references: torch.Tensor | None = None,
                      reference_labels: torch.Tensor | None = None, metric: str = "euclidean",
                      ks: Sequence[int] = (1,), chunk: int = 1024) -> dict[str, float]:
    """Recall@K for ``K`` in ``ks``, R-precision and MAP@R (percent); see the module docstring.

    Vectorised per chunk of queries (``chunk`` rows of the ``(Q, N)`` similarity at a time).
    Returns also ``"queries"``, the number of queries that had ``R >= 1``.
    """
    _check(queries, query_labels, "queries")
    leave_one_out = references is None
    if leave_one_out:
        references, reference_labels = queries, query_labels
    elif reference_labels is None:
        raise ValueError("pass reference_labels with references")
    _check(references, reference_labels, "references")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    ql, rl = query_labels.cpu().long(), reference_labels.cpu().long()
    counts = torch.bincount(rl[rl >= 0], minlength=int(max(ql.max(), rl.max()).clamp_min(0)) + 1)
    r_all = counts[ql.clamp_min(0)] - (1 if leave_one_out else 0)
    r_all = torch.where(ql >= 0, r_all, torch.zeros_like(r_all))
    sums = {f"recall@{k}": 0.0 for k in ks} | {"r_precision": 0.0, "map@r": 0.0}
    n_used = 0
    n_ref = len(rl)
    depth_cap = n_ref - (1 if leave_one_out else 0)
    for lo in range(0, len(ql), chunk):
        hi = min(lo + chunk, len(ql))
        r = r_all[lo:hi]
        use = r >= 1
        if not bool(use.any()):
            continue
        sim = similarity(queries[lo:hi].cpu(), references.cpu(), metric)
        if leave_one_out:
            idx = torch.arange(lo, hi)
            sim[idx - lo, idx] = float("-inf")
        depth = min(max(int(r.max()), ks[-1]), depth_cap)
        order = torch.topk(sim, depth, dim=1, sorted=True).indices
        rel = (rl[order] == ql[lo:hi, None]).double()                       # (q, depth)
        ranks = torch.arange(1, depth + 1, dtype=torch.float64)
        within_r = ranks[None, :] <= r[:, None]
        hits_r = (rel * within_r).sum(1)
        precision_k = rel.cumsum(1) / ranks
        ap = (precision_k * rel * within_r).sum(1) / r.clamp_min(1)
        rp = hits_r / r.clamp_min(1)
        for k in ks:
            sums[f"recall@{k}"] += float((rel[:, :k].amax(1) * use).sum())
        sums["r_precision"] += float((rp * use).sum())
        sums["map@r"] += float((ap * use).sum())
        n_used += int(use.sum())
    out = {k: 100.0 * v / max(n_used, 1) for k, v in sums.items()}
    out["queries"] = float(n_used)
    return out


def retrieval_metrics_loop(queries, query_labels, references=None, reference_labels=None, metric="euclidean",
                           ks=(1,)) -> dict[str, float]:
    """Loop reference of :func:`retrieval_metrics` (one query at a time, Python lists)."""
    leave_one_out = references is None
    if leave_one_out:
        references, reference_labels = queries, query_labels
    sim = similarity(queries, references, metric)
    sums = {f"recall@{k}": 0.0 for k in ks} | {"r_precision": 0.0, "map@r": 0.0}
    n = 0
    for i in range(len(queries)):
        y = int(query_labels[i])
        cand = [j for j in range(len(references)) if not (leave_one_out and j == i)]
        r = sum(1 for j in cand if int(reference_labels[j]) == y) if y >= 0 else 0
        if r < 1:
            continue
        n += 1
        ranked = sorted(cand, key=lambda j: -float(sim[i, j]))
        rel = [int(reference_labels[j]) == y for j in ranked]
        for k in ks:
            sums[f"recall@{k}"] += float(any(rel[:k]))
        sums["r_precision"] += sum(rel[:r]) / r
        hits, ap = 0, 0.0
        for k in range(r):
            if rel[k]:
                hits += 1
                ap += hits / (k + 1)
        sums["map@r"] += ap / r
    out = {k: 100.0 * v / max(n, 1) for k, v in sums.items()}
    out["queries"] = float(n)
    return out


def class_means(emb: torch.Tensor, labels: torch.Tensor, num_classes: int, metric: str = "euclidean") -> torch.Tensor:
    """``(C, D)`` class means; for ``"cosine"`` the mean of the *unit* vectors (the mean direction)."""
    _check_metric(metric)
    x = emb.detach().double().cpu()
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    lab = labels.long().cpu()
    keep = lab >= 0
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, lab[keep], x[keep])
    counts = torch.bincount(lab[keep], minlength=num_classes).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def ncm_accuracy(train_emb: torch.Tensor, train_y: torch.Tensor, test_emb: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, metric: str = "euclidean") -> float:
    """Nearest-class-mean accuracy (percent) with class means of the training embeddings, in ``metric``."""
    mu = class_means(train_emb, train_y, num_classes, metric)
    pred = similarity(test_emb.cpu(), mu, metric).argmax(1)
    return 100.0 * float((pred == test_y.long().cpu()).double().mean())


def ncm_accuracy_loop(train_emb, train_y, test_emb, test_y, num_classes: int, metric: str = "euclidean") -> float:
    """Loop reference of :func:`ncm_accuracy`."""
    correct = 0
    for i in range(len(test_emb)):
        best, best_k = None, -1
        for k in range(num_classes):
            members = [train_emb[j].double() for j in range(len(train_emb)) if int(train_y[j]) == k]
            if metric == "cosine":
                members = [m / m.norm().clamp_min(1e-12) for m in members]
            mu = sum(members) / max(len(members), 1)
            q = test_emb[i].double()
            if metric == "cosine":
                s = float(q @ mu) / max(float(q.norm() * mu.norm()), 1e-12)
            elif metric == "dot":
                s = float(q @ mu)
            else:
                s = -float((q - mu).norm())
            if best is None or s > best:
                best, best_k = s, k
        correct += int(best_k == int(test_y[i]))
    return 100.0 * correct / len(test_emb)


def mean_over(runs: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over a list of metric dicts."""
    runs = list(runs)
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
