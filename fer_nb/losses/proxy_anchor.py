"""Proxy-Anchor loss (Kim, Kim, Cho & Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, Eq. 4).

Each class proxy ``p`` is an *anchor* that pulls all the batch's samples of its class and pushes
all the others, with a log-sum-exp that weights the hardest ones most:

.. math::

    L = \\frac{1}{|P^+|}\\sum_{p \\in P^+} \\log\\Bigl(1 + \\sum_{x \\in X_p^+} e^{-\\alpha(s(x, p) - \\delta)}\\Bigr)
      + \\frac{1}{|P|}\\sum_{p \\in P} \\log\\Bigl(1 + \\sum_{x \\in X_p^-} e^{\\alpha(s(x, p) + \\delta)}\\Bigr),

``s`` = cosine similarity, ``P`` = all proxies, ``P^+`` = proxies with a positive in the batch,
``X_p^+`` / ``X_p^-`` = the batch's samples of / not of ``p``'s class. The paper's defaults
``alpha = 32``, ``delta = 0.1`` (also pytorch-metric-learning's ``ProxyAnchorLoss(margin=0.1,
alpha=32)``, whose reduction is this one). Unlike ProxyNCA, the gradient with respect to one
sample depends on the other samples of the batch (through the log-sum-exp over ``X_p^+``), the
"data-to-data relations" the paper argues proxies alone miss. Rows labelled ``-1`` are ignored.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_inputs, check_reduction, working_dtype

__all__ = ["ProxyAnchorLoss", "proxy_anchor_loop"]


def _log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_{i: mask} exp(z_i))`` per column, stable (0 for an empty column)."""
    z = z.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(1, z.shape[1], dtype=z.dtype, device=z.device)
    return torch.logsumexp(torch.cat([z, zeros], 0), dim=0)


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor loss with learned proxies ``(num_classes, embedding_dim)`` (Eq. 4).

    Args:
        alpha: the scale ``alpha`` (32). margin: ``delta`` (0.1).
        reduction: ``"mean"`` (Eq. 4's two averages) or ``"sum"`` (of both terms over proxies).
    """

    def __init__(self, embedding_dim: int, num_classes: int, alpha: float = 32.0, margin: float = 0.1,
                 reduction: str = "mean"):
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"ProxyAnchorLoss needs num_classes, embedding_dim >= 1, got {num_classes}, "
                             f"{embedding_dim}")
        if not alpha > 0:
            raise ValueError(f"ProxyAnchorLoss: alpha must be > 0, got {alpha}")
        check_reduction(reduction, "ProxyAnchorLoss (its terms are per proxy, so no 'none')", ("mean", "sum"))
        self.embedding_dim, self.num_classes = int(embedding_dim), int(num_classes)
        self.alpha, self.margin, self.reduction = float(alpha), float(margin), reduction
        self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim) * math.sqrt(2.0 / num_classes))

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"margin={self.margin}, reduction={self.reduction!r}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosine similarities to the proxies (prediction = argmax)."""
        dt = working_dtype(embeddings)
        return F.normalize(embeddings.to(dt), dim=1) @ F.normalize(self.proxies.to(dt), dim=1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, "ProxyAnchorLoss")
        valid = labels >= 0
        with torch.autocast(embeddings.device.type, enabled=False):
            s = self.cosine(embeddings)                                    # (B, C)
            pos = F.one_hot(labels.clamp_min(0), self.num_classes).bool() & valid[:, None]
            neg = ~pos & valid[:, None]
            pos_term = _log1p_sum_exp(-self.alpha * (s - self.margin), pos)  # (C,)
            neg_term = _log1p_sum_exp(self.alpha * (s + self.margin), neg)
            if self.reduction == "sum":
                return pos_term.sum() + neg_term.sum()
            with_pos = pos.any(0).sum().clamp_min(1).to(s.dtype)
            return pos_term.sum() / with_pos + neg_term.sum() / self.num_classes


def proxy_anchor_loop(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, alpha: float = 32.0,
                      margin: float = 0.1) -> torch.Tensor:
    """Loop reference of Eq. 4 (one proxy, one sample at a time)."""
    pos_total, neg_total, n_with_pos = 0.0, 0.0, 0
    for k in range(len(proxies)):
        p = proxies[k] / proxies[k].norm()
        sp, sn, has_pos = 0.0, 0.0, False
        for i in range(len(embeddings)):
            if labels[i] < 0:
                continue
            cos = (embeddings[i] / embeddings[i].norm().clamp_min(1e-12)) @ p
            if int(labels[i]) == k:
                sp, has_pos = sp + torch.exp(-alpha * (cos - margin)), True
            else:
                sn = sn + torch.exp(alpha * (cos + margin))
        if has_pos:
            pos_total, n_with_pos = pos_total + torch.log(1 + sp), n_with_pos + 1
        neg_total = neg_total + torch.log(1 + sn) if torch.is_tensor(sn) else neg_total
    return pos_total / max(n_with_pos, 1) + neg_total / len(proxies)
