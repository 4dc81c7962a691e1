"""Multi-Similarity loss (Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019).

With cosine similarities ``S_ik``, for every anchor ``i`` its positives ``P_i`` and negatives ``N_i``:

.. math::

    L = \\frac1m\\sum_{i=1}^m\\Bigl\\{\\frac1\\alpha\\log\\Bigl[1 + \\sum_{k\\in P_i} e^{-\\alpha(S_{ik} - \\lambda)}\\Bigr]
        + \\frac1\\beta\\log\\Bigl[1 + \\sum_{k\\in N_i} e^{\\beta(S_{ik} - \\lambda)}\\Bigr]\\Bigr\\}.

The weight this gives a pair depends on its own similarity (self-similarity), on its similarity
relative to the other pairs of the same sign (relative similarity, through the log-sum-exp) and,
with **pair mining** (``mining=True``, the paper's hard-pair selection), on the pairs of the
other sign: a negative is kept only if ``S_ik > min_{k' in P_i} S_ik' - epsilon`` and a positive
only if ``S_ik < max_{k' in N_i} S_ik' + epsilon``. The mining is a selection, without gradient.
The paper uses ``alpha = 2``, ``beta = 50``, ``lambda = 1``, ``epsilon = 0.1`` on its retrieval
benchmarks; pytorch-metric-learning's ``MultiSimilarityLoss(alpha=2, beta=50, base=0.5)``
(``base`` = ``lambda``) is the loss without mining, its ``MultiSimilarityMiner(epsilon=0.1)``
the mining. ``reduction="mean"``: over all labelled anchors (an anchor whose pairs are all mined
away contributes 0), as pytorch-metric-learning's ``MeanReducer``.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import working_dtype
from fer_nb.miners import check_batch, check_reduction, cosine_matrix, pair_masks, reduce_rows

__all__ = ["MultiSimilarityLoss", "ms_pair_mining", "multi_similarity_loop"]


def ms_pair_mining(sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                   epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The MS pair mining: the kept ``(pos, neg)`` masks (no gradient)."""
    with torch.no_grad():
        min_pos = sim.masked_fill(~pos, float("inf")).amin(1, keepdim=True)
        max_neg = sim.masked_fill(~neg, float("-inf")).amax(1, keepdim=True)
        return pos & (sim < max_neg + epsilon), neg & (sim > min_pos - epsilon)


def _log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    z = z.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([z, torch.zeros_like(z[:, :1])], 1), dim=1)


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss over all pairs of a batch.

    Args:
        alpha, beta: scales of the positive and negative terms (2, 50).
        base: ``lambda``, the similarity margin (0.5 in pytorch-metric-learning, 1 in the paper).
        mining: apply the paper's pair mining with ``epsilon``.
        reduction: ``"mean"`` over labelled anchors, ``"sum"`` or ``"none"`` (per anchor).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, mining: bool = False,
                 epsilon: float = 0.1, reduction: str = "mean"):
        super().__init__()
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"MultiSimilarityLoss: alpha and beta must be > 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)
        self.mining, self.epsilon = bool(mining), float(epsilon)
        self.reduction = check_reduction(reduction, "MultiSimilarityLoss")

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, mining={self.mining}, "
                f"epsilon={self.epsilon}, reduction={self.reduction!r}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, "MultiSimilarityLoss")
        pos, neg = pair_masks(labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            sim = cosine_matrix(embeddings.to(working_dtype(embeddings)))
            if self.mining:
                pos, neg = ms_pair_mining(sim, pos, neg, self.epsilon)
            per = (_log1p_sum_exp(-self.alpha * (sim - self.base), pos) / self.alpha
                   + _log1p_sum_exp(self.beta * (sim - self.base), neg) / self.beta)
            return reduce_rows(per, labels >= 0, self.reduction)


def multi_similarity_loop(embeddings: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, mining: bool = False, epsilon: float = 0.1) -> torch.Tensor:
    """Loop reference (one anchor, one pair at a time) of the mean MS loss."""
    x = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total, count = 0.0, 0
    for i in range(len(x)):
        if labels[i] < 0:
            continue
        count += 1
        ps = [float((x[i] @ x[k]).detach()) for k in range(len(x)) if k != i and labels[k] == labels[i]]
        ns = [float((x[i] @ x[k]).detach()) for k in range(len(x)) if labels[k] >= 0 and labels[k] != labels[i]]
        sp, sn = 0.0, 0.0
        for k in range(len(x)):
            if k == i or labels[k] < 0:
                continue
            s = x[i] @ x[k]
            if labels[k] == labels[i]:
                if not mining or (ns and float(s.detach()) < max(ns) + epsilon):
                    sp = sp + torch.exp(-alpha * (s - base))
            elif not mining or (ps and float(s.detach()) > min(ps) - epsilon):
                sn = sn + torch.exp(beta * (s - base))
        total = total + torch.log(1 + torch.as_tensor(sp)) / alpha + torch.log(1 + torch.as_tensor(sn)) / beta
    return total / max(count, 1)
