"""Pairs of a batch and the miners that choose among them (course chapter, issue #21).

A *miner* looks at the embeddings of a batch, without gradient, and chooses which tuples a loss
sees. All miners here return index tensors, the format pytorch-metric-learning uses, so any of
them can feed :class:`fer_nb.losses.triplet.TripletLoss` through its ``triplets=`` argument:

* :func:`batch_hard` (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
  Re-Identification", 2017):
  for every anchor its *farthest* positive and its *nearest* negative, one triplet per anchor;
* :func:`semi_hard` (Schroff, Kalenichenko & Philbin, FaceNet, CVPR 2015, Sec. 3.2): every triplet
  whose negative is farther than the positive but still inside the margin,
  ``D_ap < D_an <= D_ap + margin`` (the condition of pytorch-metric-learning's
  ``TripletMarginMiner(type_of_triplets="semihard")``);
* :func:`distance_weighted` (Wu, Manmatha, Smola & Kraehenbuehl, "Sampling Matters in Deep
  Embedding Learning", ICCV 2017, Sec. 4): one negative per positive pair, drawn with probability
  proportional to ``q(d)^{-1}`` (bounded by clipping ``d`` below at a cutoff, as the authors' code does;
  the paper writes ``min(lambda, q(d)^{-1})``), where ``q(d) \\propto d^{n-2} (1 - d^2/4)^{(n-3)/2}`` is the density
  of distances between random points of the unit sphere in ``n`` dimensions, so that negatives of
  every distance are drawn about equally often instead of mostly the ``sqrt(2)``-far ones;
* :func:`online_positive_mining` (Liu et al., (N+M)-tuple clusters, CVPRW 2017, Algorithm 1):
  keeps a class's positives that are nearer to its centre than the centre's nearest negative.
  It mines *positives* and is applied per cluster, not per anchor; the loss that uses it is
  :class:`fer_nb.losses.nm_tuple_clusters.NMTupleClustersLoss`.

The pair helpers :func:`check_batch`, :func:`pair_masks` and :func:`reduce_rows` are shared by the
course losses (``fer_nb/losses/{multi_similarity,lifted_structure,npair,supcon,circle}.py``).
Every miner has a loop reference (``*_loop``) beside it, which the tests compare with.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from torch import nn

from fer_nb.losses.common import REDUCTIONS, check_reduction, working_dtype
from fer_nb.losses.distances import pairwise_distances

__all__ = ["REDUCTIONS", "check_batch", "check_reduction", "pair_masks", "reduce_rows", "cosine_matrix",
           "batch_hard", "batch_hard_loop", "semi_hard", "semi_hard_loop", "distance_weights",
           "distance_weights_loop", "distance_weighted", "online_positive_mining", "online_positive_mining_loop",
           "MINERS", "triplet_weights", "MinedTripletLoss"]


# ------------------------------------------------------------------------------------ pair helpers

def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """Shape and dtype checks of a batch (errors name the fix)."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"{name}: embeddings must be a (batch, dim) tensor, got {shape}; flatten them first")
    if not embeddings.dtype.is_floating_point:
        raise TypeError(f"{name}: embeddings must be floating point (use embeddings.float()), got {embeddings.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name}: labels must be (batch,) = ({embeddings.shape[0]},), got {shape}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integer class ids (use labels.long()), got {labels.dtype}")


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, neg)`` boolean ``(B, B)`` masks: same label and ``i != j`` / different label.

    Rows and columns labelled ``-1`` (unlabelled) belong to neither mask.
    """
    valid = labels >= 0
    both = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & both & ~eye, ~same & both


def reduce_rows(values: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean over the kept rows (0 when none is kept, still connected to the graph), sum, or the
    per-row values with 0 in the rows that are not kept (``"none"``)."""
    values = torch.where(keep, values, torch.zeros_like(values))
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp_min(1).to(values.dtype)


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """``S[i, j] = cos(x_i, y_j)`` (``y = x`` when omitted); a zero vector has cosine 0."""
    xn = F.normalize(x, dim=1, eps=eps)
    return xn @ (xn if y is None else F.normalize(y, dim=1, eps=eps)).T


def _distances(embeddings: torch.Tensor, power: int, normalize: bool) -> torch.Tensor:
    x = embeddings.detach().to(working_dtype(embeddings))
    if normalize:
        x = F.normalize(x, dim=1)
    return pairwise_distances(x, None, power)


def _empty(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()


# ------------------------------------------------------------------------------------------ batch-hard

def batch_hard(embeddings: torch.Tensor, labels: torch.Tensor, power: int = 1,
               normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard triplets (Hermans et al.): ``(a, p, n)`` with, for every anchor ``a`` that has a
    positive and a negative, ``p = argmax_{y_p = y_a, p != a} D_ap`` and ``n = argmin_{y_n != y_a} D_an``.

    ``power``: 1 = Euclidean, 2 = squared; ``normalize``: on the unit sphere first. No gradient.
    """
    check_batch(embeddings, labels, "batch_hard")
    pos, neg = pair_masks(labels)
    d = _distances(embeddings, power, normalize)
    anchors = (pos.any(1) & neg.any(1)).nonzero().squeeze(1)
    if anchors.numel() == 0:
        return _empty(embeddings.device)
    p = d.masked_fill(~pos, float("-inf")).argmax(1)
    n = d.masked_fill(~neg, float("inf")).argmin(1)
    return anchors, p[anchors], n[anchors]


def batch_hard_loop(embeddings: torch.Tensor, labels: torch.Tensor, power: int = 1,
                    normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loop reference of :func:`batch_hard` (one anchor at a time)."""
    x = embeddings.detach().double()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = ([], [], [])
    for a in range(len(x)):
        if labels[a] < 0:
            continue
        best_p, best_n, dp, dn = None, None, -1.0, math.inf
        for j in range(len(x)):
            if j == a or labels[j] < 0:
                continue
            dist = float(((x[a] - x[j]) ** 2).sum()) ** (power / 2)
            if labels[j] == labels[a] and dist > dp:
                best_p, dp = j, dist
            if labels[j] != labels[a] and dist < dn:
                best_n, dn = j, dist
        if best_p is not None and best_n is not None:
            for lst, v in zip(out, (a, best_p, best_n)):
                lst.append(v)
    return tuple(torch.tensor(v, dtype=torch.long) for v in out)


# ------------------------------------------------------------------------------------------- semi-hard

def semi_hard(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, power: int = 1,
              normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All semi-hard triplets (FaceNet, Sec. 3.2): ``D_ap < D_an <= D_ap + margin``.

    These negatives are farther than the positive (so not the "hard" ones that FaceNet found to
    collapse training early on) but still violate the margin, so the triplet loss is non-zero.
    Returns ``(a, p, n)``; ``O(B^3)`` booleans (use on batches of a few hundred). No gradient.
    """
    check_batch(embeddings, labels, "semi_hard")
    if margin <= 0:
        raise ValueError(f"semi_hard: margin must be > 0, got {margin}")
    pos, neg = pair_masks(labels)
    d = _distances(embeddings, power, normalize)
    gap = d[:, None, :] - d[:, :, None]                    # gap[a, p, n] = D_an - D_ap
    mask = pos[:, :, None] & neg[:, None, :] & (gap > 0) & (gap <= margin)
    a, p, n = mask.nonzero(as_tuple=True)
    return a, p, n


def semi_hard_loop(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, power: int = 1,
                   normalize: bool = False) -> set[tuple[int, int, int]]:
    """Loop reference of :func:`semi_hard`: the set of ``(a, p, n)`` triplets."""
    x = embeddings.detach().double()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def dist(i, j):
        return float(((x[i] - x[j]) ** 2).sum()) ** (power / 2)

    out = set()
    for a in range(len(x)):
        for p in range(len(x)):
            for n in range(len(x)):
                if min(labels[a], labels[p], labels[n]) < 0 or p == a:
                    continue
                if labels[p] == labels[a] and labels[n] != labels[a] and 0 < dist(a, n) - dist(a, p) <= margin:
                    out.add((a, p, n))
    return out


# ----------------------------------------------------------------------------- distance-weighted sampling

def distance_weights(embeddings: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5,
                     nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    r"""``(B, B)`` probabilities of drawing negative ``n`` for anchor ``a`` (rows sum to 1 over negatives).

    Wu et al., Sec. 4: on the unit sphere in ``n`` dimensions the pairwise distance has density
    ``q(d) \propto d^{n-2} (1 - d^2/4)^{(n-3)/2}``; a negative is drawn with weight ``1 / q(d)``,
    ``d`` clipped below at ``cutoff`` (their ``lambda``: no huge weights for very close pairs) and
    weight 0 at ``d >= nonzero_loss_cutoff`` (negatives that the margin loss ignores anyway).
    Computed in log space (the weights span hundreds of orders of magnitude for ``n = 128``). In 2-D
    (the circle) the density is ``q(d) \propto (1 - d^2/4)^{-1/2}``, the same formula with ``n = 2``.
    A row whose negatives are all beyond ``nonzero_loss_cutoff`` falls back to uniform over its
    negatives; a row without negatives is all zero. Embeddings are L2-normalised first.
    """
    check_batch(embeddings, labels, "distance_weights")
    dim = embeddings.shape[1]
    if dim < 2:
        raise ValueError(f"distance_weights: the sphere density needs an embedding dimension >= 2, got {dim}")
    _, neg = pair_masks(labels)
    d = _distances(embeddings, 1, True).double().clamp_min(cutoff)
    return _dw_prob(d, neg, nonzero_loss_cutoff, dim).to(working_dtype(embeddings))


def distance_weights_loop(embeddings: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5,
                          nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """Loop reference of :func:`distance_weights` (weights written out per pair, then normalised)."""
    x = embeddings.detach().double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n_dim, b = x.shape[1], len(x)
    out = torch.zeros(b, b, dtype=torch.float64)
    for a in range(b):
        negs = [j for j in range(b) if labels[j] >= 0 and labels[a] >= 0 and labels[j] != labels[a]]
        if not negs:
            continue
        logs = {}
        for j in negs:
            dist = max(float((x[a] - x[j]).norm()), cutoff)
            if dist < nonzero_loss_cutoff:
                logs[j] = -(n_dim - 2) * math.log(dist) - (n_dim - 3) / 2 * math.log(max(1 - dist * dist / 4, 1e-8))
        if not logs:
            logs = {j: 0.0 for j in negs}
        top = max(logs.values())
        total = sum(math.exp(v - top) for v in logs.values())
        for j, v in logs.items():
            out[a, j] = math.exp(v - top) / total
    return out


def distance_weighted(embeddings: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5,
                      nonzero_loss_cutoff: float = 1.4,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance-weighted sampling (Wu et al.): for every positive pair ``(a, p)`` one negative drawn
    from row ``a`` of :func:`distance_weights`. Returns ``(a, p, n)``; ``generator`` makes it repeatable."""
    prob = distance_weights(embeddings, labels, cutoff, nonzero_loss_cutoff)
    pos, neg = pair_masks(labels)
    pos = pos & neg.any(1, keepdim=True)
    a, p = pos.nonzero(as_tuple=True)
    if a.numel() == 0:
        return _empty(embeddings.device)
    gen_device = generator.device if generator is not None else prob.device
    n = torch.multinomial(prob[a].to(gen_device).float(), 1, generator=generator).squeeze(1).to(a.device)
    return a, p, n


# ------------------------------------------------------------------------------- online positive mining

def online_positive_mining(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N+M)-tuple clusters, Algorithm 1, with one cluster per class of the batch: ``(B,)`` mask of kept rows.

    For class ``k``: ``c = mean of its rows``, ``d* = min over other-class rows of ||x - c||^2``;
    a row of class ``k`` is kept when ``||x - c||^2 <= d*``. If none is kept (or the class has no
    negative, ``d* = inf``), all its rows are kept. Unlabelled rows (``-1``) are never kept.
    """
    check_batch(embeddings, labels, "online_positive_mining")
    x = embeddings.detach().to(working_dtype(embeddings))
    valid = labels >= 0
    classes = torch.unique(labels[valid])
    member = labels[None, :] == classes[:, None]                       # (K, B)
    neg = valid[None, :] & ~member
    w = member.to(x.dtype)
    centres = (w @ x) / w.sum(1, keepdim=True).clamp_min(1.0)
    d = pairwise_distances(centres, x, 2)                              # (K, B) squared
    nearest = d.masked_fill(~neg, float("inf")).amin(1, keepdim=True)
    keep = member & (d <= nearest)
    keep = torch.where(keep.any(1, keepdim=True), keep, member)
    return keep.any(0)


def online_positive_mining_loop(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loop reference of :func:`online_positive_mining`."""
    x = embeddings.detach().double()
    keep = torch.zeros(len(x), dtype=torch.bool)
    for k in sorted({int(v) for v in labels.tolist() if v >= 0}):
        rows = [i for i in range(len(x)) if labels[i] == k]
        c = sum(x[i] for i in rows) / len(rows)
        negs = [float(((x[j] - c) ** 2).sum()) for j in range(len(x)) if labels[j] >= 0 and labels[j] != k]
        d_star = min(negs) if negs else math.inf
        kept = [i for i in rows if float(((x[i] - c) ** 2).sum()) <= d_star]
        for i in kept or rows:
            keep[i] = True
    return keep


MINERS = {"batch_hard": batch_hard, "semi_hard": semi_hard, "distance_weighted": distance_weighted}


# ------------------------------------------------------------------- a triplet loss that takes a miner

MINED = ("all", "batch_hard", "semi_hard", "distance_weighted")


def triplet_weights(d: torch.Tensor, labels: torch.Tensor, miner: str, margin: float, embed_dim: int = 2,
                    cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """``(B, B, B)`` weights ``W[a, p, n]`` of the triplets a miner picks, from detached distances ``d``.

    ``"all"``: every valid triplet; ``"batch_hard"``: one per anchor (:func:`batch_hard`);
    ``"semi_hard"``: the semi-hard ones (:func:`semi_hard`); ``"distance_weighted"``: every positive
    pair with its negatives weighted by :func:`distance_weights`' probabilities, so the loss is the
    *expected* loss of the sampled triplets (no random draw: usable in gradient fields). Masks only,
    no ``nonzero``: works under ``torch.func.vmap``.
    """
    if miner not in MINED:
        raise ValueError(f"miner must be one of {MINED}, got {miner!r}")
    pos, neg = pair_masks(labels)
    d = d.detach()
    if miner == "all":
        return (pos[:, :, None] & neg[:, None, :]).to(d.dtype)
    if miner == "semi_hard":
        gap = d[:, None, :] - d[:, :, None]
        return (pos[:, :, None] & neg[:, None, :] & (gap > 0) & (gap <= margin)).to(d.dtype)
    if miner == "batch_hard":
        ok = pos.any(1) & neg.any(1)
        cols = torch.arange(len(d), device=d.device)[None, :]            # one-hot by comparison (vmap-safe)
        p = (cols == d.masked_fill(~pos, float("-inf")).argmax(1, keepdim=True)).to(d.dtype)
        n = (cols == d.masked_fill(~neg, float("inf")).argmin(1, keepdim=True)).to(d.dtype)
        return p[:, :, None] * n[:, None, :] * ok[:, None, None].to(d.dtype)
    # distance-weighted: probabilities on the unit sphere from d (Euclidean distances of unit vectors)
    prob = _dw_prob(d.clamp_min(cutoff), neg, nonzero_loss_cutoff, embed_dim)
    return pos[:, :, None].to(d.dtype) * prob[:, None, :]


def _dw_prob(d: torch.Tensor, neg: torch.Tensor, nonzero_loss_cutoff: float, dim: int) -> torch.Tensor:
    """Row-normalised ``1/q(d)`` over the usable negatives (``d`` already clipped at the cutoff)."""
    log_w = -(dim - 2.0) * d.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * d * d).clamp_min(1e-8).log()
    usable = neg & (d < nonzero_loss_cutoff)
    log_w = log_w.masked_fill(~usable, float("-inf"))
    log_w = torch.where(~usable.any(1, keepdim=True) & neg, torch.zeros_like(log_w), log_w)
    has = neg.any(1, keepdim=True)
    prob = torch.softmax(torch.where(has, log_w, torch.zeros_like(log_w)), dim=1)
    return torch.where(has & neg, prob, torch.zeros_like(prob))


class MinedTripletLoss(nn.Module):
    """Triplet hinge ``max(0, D_ap - D_an + margin)`` averaged with the weights of a miner (:func:`triplet_weights`).

    ``normalize=True`` puts the embeddings on the unit sphere (required for ``"distance_weighted"``,
    whose sampling density is the sphere's). Distances are Euclidean (``power=1``). For
    ``"batch_hard"`` and ``"semi_hard"`` the value equals :class:`fer_nb.losses.triplet.TripletLoss`
    on the miner's triplets; a batch without a triplet gives 0.
    """

    def __init__(self, miner: str = "all", margin: float = 0.2, normalize: bool = True, cutoff: float = 0.5,
                 nonzero_loss_cutoff: float = 1.4):
        super().__init__()
        if miner not in MINED:
            raise ValueError(f"MinedTripletLoss: miner must be one of {MINED}, got {miner!r}")
        if miner == "distance_weighted" and not normalize:
            raise ValueError("MinedTripletLoss: distance_weighted sampling assumes unit vectors; use normalize=True")
        self.miner, self.margin, self.normalize = miner, float(margin), bool(normalize)
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)

    def extra_repr(self) -> str:
        return f"miner={self.miner!r}, margin={self.margin}, normalize={self.normalize}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, "MinedTripletLoss")
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            if self.normalize:
                x = F.normalize(x, dim=1)
            d = pairwise_distances(x, None, 1)
            w = triplet_weights(d, labels, self.miner, self.margin, x.shape[1], self.cutoff, self.nonzero_loss_cutoff)
            hinge = F.relu(d[:, :, None] - d[:, None, :] + self.margin)
            return (w * hinge).sum() / w.sum().clamp_min(1e-12)
