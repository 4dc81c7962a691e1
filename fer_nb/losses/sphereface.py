"""SphereFace: the angular softmax with a multiplicative angular margin (Liu, Wen, Yu, Li, Raj &
Song, "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017; the A-Softmax loss,
building on L-Softmax, Liu et al., ICML 2016).

Class weights are normalised (``||w_j|| = 1``, no bias), features are not; the logit of class
``j`` is ``||x|| cos(theta_j)``, and the ground-truth class gets the angle *multiplied* by an
integer ``m``:

.. math::

    L = -\\frac1N\\sum_i\\log\\frac{e^{\\lVert x_i\\rVert\\psi(\\theta_{y_i})}}
        {e^{\\lVert x_i\\rVert\\psi(\\theta_{y_i})} + \\sum_{j\\ne y_i} e^{\\lVert x_i\\rVert\\cos\\theta_j}},
    \\qquad \\psi(\\theta) = (-1)^k\\cos(m\\theta) - 2k,\\ \\ \\theta\\in\\Bigl[\\tfrac{k\\pi}{m}, \\tfrac{(k+1)\\pi}{m}\\Bigr],

``psi`` being the monotonically decreasing extension of ``cos(m theta)`` to ``[0, pi]``. The margin
makes the decision boundary of class ``y`` against ``j`` ``m theta_y = theta_j``: the angular
margin grows with the angle between the class vectors, unlike ArcFace's constant ``+m`` and
CosFace's constant ``-m`` on the cosine (Deng et al., ArcFace, Fig. 1 compare the three).
``cos(m theta)`` is the Chebyshev polynomial ``T_m(cos theta)``, so no ``acos`` enters the gradient;
``k`` is piecewise constant (no gradient). Training with ``m = 4`` from the start is hard, so the
paper (following L-Softmax) anneals: the target logit is ``(lambda ||x|| cos theta + ||x|| psi(theta)) / (1 + lambda)``
with ``lambda`` decreased during training from a large value to a small one (``lam`` here, fixed;
0 = pure A-Softmax).
pytorch-metric-learning's ``SphereFaceLoss(margin=m, scale=1)`` is the ``lam = 0`` loss (``scale``
multiplies all logits, 1 in the paper; its weights are the transpose of ours).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_inputs, check_reduction, reduce, working_dtype

__all__ = ["SphereFaceLoss", "psi", "sphereface_loop"]


def chebyshev(c: torch.Tensor, m: int) -> torch.Tensor:
    """``T_m(c) = cos(m arccos c)`` by the recurrence ``T_{k+1} = 2 c T_k - T_{k-1}``."""
    t_prev, t = torch.ones_like(c), c
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2 * c * t - t_prev
    return t


def psi(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` with ``k = floor(m theta / pi)``, from ``cos theta``."""
    c = cosine.clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(torch.arccos(c) * m / math.pi).clamp(max=m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev(c, m) - 2.0 * k


class SphereFaceLoss(nn.Module):
    """A-Softmax loss with weights ``(num_classes, embedding_dim)`` (normalised in the forward pass).

    Args:
        margin: the integer ``m`` (4 in the paper; 1 = the "modified softmax", no margin).
        lam: the annealing weight ``lambda`` (0 = pure A-Softmax).
        scale: multiplies all logits (1 = the paper).
        reduction: ``"mean"`` over labelled rows, ``"sum"`` or ``"none"``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: int = 4, lam: float = 0.0, scale: float = 1.0,
                 reduction: str = "mean"):
        super().__init__()
        if int(margin) != margin or margin < 1:
            raise ValueError(f"SphereFaceLoss: margin m must be an integer >= 1 (the paper uses 4), got {margin}")
        if lam < 0 or not scale > 0:
            raise ValueError(f"SphereFaceLoss: lam must be >= 0 and scale > 0, got {lam}, {scale}")
        check_reduction(reduction, "SphereFaceLoss")
        self.embedding_dim, self.num_classes = int(embedding_dim), int(num_classes)
        self.margin, self.lam, self.scale, self.reduction = int(margin), float(lam), float(scale), reduction
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) / math.sqrt(embedding_dim))

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, margin={self.margin}, "
                f"lam={self.lam}, scale={self.scale}, reduction={self.reduction!r}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        dt = working_dtype(embeddings)
        return F.normalize(embeddings.to(dt), dim=1) @ F.normalize(self.weight.to(dt), dim=1).T

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``scale ||x|| cos theta_j``; with ``labels`` the target class gets ``psi`` (annealed by ``lam``)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.to(working_dtype(embeddings))
            cos = self.cosine(x)
            if labels is not None:
                target = F.one_hot(labels.clamp_min(0), self.num_classes).bool() & (labels >= 0)[:, None]
                margin_cos = (self.lam * cos + psi(cos, self.margin)) / (1.0 + self.lam)
                cos = torch.where(target, margin_cos, cos)
            return self.scale * x.norm(dim=1, keepdim=True) * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, "SphereFaceLoss")
        with torch.autocast(embeddings.device.type, enabled=False):
            per = F.cross_entropy(self.logits(embeddings, labels), labels.clamp_min(0), reduction="none")
            return reduce(per, labels >= 0, self.reduction)


def sphereface_loop(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, margin: int = 4,
                    lam: float = 0.0) -> torch.Tensor:
    """Loop reference with ``acos`` and ``cos(m theta)`` written out (one sample, one class at a time)."""
    total, count = 0.0, 0
    for i in range(len(embeddings)):
        y = int(labels[i])
        if y < 0:
            continue
        norm = embeddings[i].norm()
        logits = []
        for j in range(len(weight)):
            cos = (embeddings[i] / norm) @ (weight[j] / weight[j].norm())
            if j == y:
                theta = torch.arccos(cos.clamp(-1 + 1e-12, 1 - 1e-12))
                k = min(math.floor(float(theta.detach()) * margin / math.pi), margin - 1)
                value = (-1) ** k * torch.cos(margin * theta) - 2 * k
                cos = (lam * cos + value) / (1 + lam)
            logits.append(norm * cos)
        logits = torch.stack(logits)
        total = total - (logits[y] - torch.logsumexp(logits, 0))
        count += 1
    return total / max(count, 1)
