"""ProxyNCA (Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss Distance Metric Learning
using Proxies", ICCV 2017).

One learned *proxy* ``p_k`` per class replaces the other samples of the batch: NCA (Goldberger
et al. 2005) is applied between each embedding and the proxies. With ``x`` and ``p`` on the unit
sphere (``normalize=True``; the paper normalises both) and ``d`` the squared Euclidean
distance, the loss of a sample of class ``y`` is the paper's proxy-NCA loss

.. math::

    L(x, y) = -\\log \\frac{\\exp(-s\\, d(x, p_y))}{\\sum_{z \\ne y} \\exp(-s\\, d(x, p_z))},

whose denominator runs over the *other* proxies only (``include_positive=False``; the value can
be negative). ``include_positive=True`` puts ``p_y`` in the denominator too, which turns it into a
cross-entropy over the proxies, ``L >= 0``: that is pytorch-metric-learning's ``ProxyNCALoss``
(``softmax_scale = s``) and ProxyNCA++'s form (Teh et al., ECCV 2020, who also raise the scale,
their temperature ``1/s``). On the unit sphere ``d = 2 - 2 cos``, so this is a cosine classifier
with scale ``2 s`` and no margin: NormFace in other words.

Rows labelled ``-1`` are ignored. Computed in float32 (float64 stays float64), also under autocast.
``proxy_nca_loop`` is the per-sample reference of the same equation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_inputs, check_reduction, reduce, working_dtype
from fer_nb.losses.distances import pairwise_distances

__all__ = ["ProxyNCALoss", "proxy_nca_loop"]


class ProxyNCALoss(nn.Module):
    """Proxy-NCA loss with learned proxies ``(num_classes, embedding_dim)``.

    Args:
        embedding_dim, num_classes: sizes.
        scale: ``s`` multiplying the distances (1 in the paper; ProxyNCA++ uses ``1/0.11 ~ 9``).
        include_positive: ``False`` = the paper's denominator over ``z != y``; ``True`` = softmax
            over all proxies (pytorch-metric-learning, ProxyNCA++).
        normalize: put embeddings and proxies on the unit sphere first.
        reduction: ``"mean"`` over labelled rows, ``"sum"`` or ``"none"``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 1.0, include_positive: bool = False,
                 normalize: bool = True, reduction: str = "mean"):
        super().__init__()
        if num_classes < 2 or embedding_dim < 1:
            raise ValueError(f"ProxyNCALoss needs num_classes >= 2 and embedding_dim >= 1, got {num_classes}, "
                             f"{embedding_dim}")
        if not scale > 0:
            raise ValueError(f"ProxyNCALoss: scale must be > 0, got {scale}")
        check_reduction(reduction, "ProxyNCALoss")
        self.embedding_dim, self.num_classes = int(embedding_dim), int(num_classes)
        self.scale, self.include_positive, self.normalize = float(scale), bool(include_positive), bool(normalize)
        self.reduction = reduction
        self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim) / math.sqrt(embedding_dim))

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"include_positive={self.include_positive}, normalize={self.normalize}, reduction={self.reduction!r}")

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``-s d(x, p_k)``, ``(B, C)``: the larger, the nearer the proxy (prediction = argmax)."""
        dt = working_dtype(embeddings)
        x, p = embeddings.to(dt), self.proxies.to(dt)
        if self.normalize:
            x, p = F.normalize(x, dim=1), F.normalize(p, dim=1)
        return -self.scale * pairwise_distances(x, p, 2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, "ProxyNCALoss")
        valid = labels >= 0
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.logits(embeddings)
            target = F.one_hot(labels.clamp_min(0), self.num_classes).bool()
            own = logits.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
            others = logits if self.include_positive else logits.masked_fill(target, float("-inf"))
            per = torch.logsumexp(others, dim=1) - own
            return reduce(per, valid, self.reduction)


def proxy_nca_loop(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, scale: float = 1.0,
                   include_positive: bool = False, normalize: bool = True) -> torch.Tensor:
    """Per-sample loop reference of the mean ProxyNCA loss (labelled rows only)."""
    total, count = 0.0, 0
    for i in range(len(embeddings)):
        y = int(labels[i])
        if y < 0:
            continue
        x = embeddings[i]
        x = x / x.norm().clamp_min(1e-12) if normalize else x
        num, den = None, 0.0
        for k in range(len(proxies)):
            p = proxies[k] / proxies[k].norm().clamp_min(1e-12) if normalize else proxies[k]
            e = torch.exp(-scale * ((x - p) ** 2).sum())
            if k == y:
                num = e
            if k != y or include_positive:
                den = den + e
        total = total - torch.log(num / den)
        count += 1
    return total / max(count, 1)
