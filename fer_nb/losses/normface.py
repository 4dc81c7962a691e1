"""NormFace: the normalised softmax (Wang, Xiang, Cheng & Yuille, "NormFace: L2 Hypersphere
Embedding for Face Verification", ACM MM 2017).

Softmax on *cosines*: features and class weights are L2-normalised and the cosines are multiplied
by a scale ``s``,

.. math::

    L = -\\frac1N\\sum_i \\log\\frac{\\exp(s\\,\\tilde w_{y_i}^\\top \\tilde x_i)}{\\sum_j \\exp(s\\,\\tilde w_j^\\top \\tilde x_i)},
    \\qquad \\tilde v = v / \\lVert v\\rVert .

NormFace's point is the scale: without it (``s = 1``) the cosines lie in ``[-1, 1]`` and the
softmax cannot get near 1, so the loss has a high floor; the paper derives a lower bound of the
loss as a function of ``s`` (for ``C`` classes spread evenly, it stays high unless ``s`` grows
like ``log C``) and lets ``s`` be learned (``learn_scale=True``). It is the zero-margin member of
the CosFace/ArcFace family (:mod:`fer_nb.losses.cosface`, :mod:`fer_nb.losses.angular_margin`
with ``margin=0``). pytorch-metric-learning's ``NormalizedSoftmaxLoss(temperature=1/s)`` computes
the same loss (its weight matrix is the transpose of ours).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_inputs, check_reduction, reduce, working_dtype

__all__ = ["NormFaceLoss", "normface_loop"]


class NormFaceLoss(nn.Module):
    """Normalised softmax with class weights ``(num_classes, embedding_dim)`` and scale ``s``.

    Args:
        scale: ``s`` (the initial value if ``learn_scale``). learn_scale: learn ``log s``.
        reduction: ``"mean"`` over labelled rows, ``"sum"`` or ``"none"``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 16.0, learn_scale: bool = False,
                 reduction: str = "mean"):
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"NormFaceLoss needs num_classes, embedding_dim >= 1, got {num_classes}, {embedding_dim}")
        if not scale > 0:
            raise ValueError(f"NormFaceLoss: scale must be > 0, got {scale}")
        check_reduction(reduction, "NormFaceLoss")
        self.embedding_dim, self.num_classes, self.reduction = int(embedding_dim), int(num_classes), reduction
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) / math.sqrt(embedding_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=bool(learn_scale))

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale:.4g}, "
                f"learn_scale={self.log_scale.requires_grad}, reduction={self.reduction!r}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        dt = working_dtype(embeddings)
        return F.normalize(embeddings.to(dt), dim=1) @ F.normalize(self.weight.to(dt), dim=1).T

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``s cos(x, w_j)``, ``(B, C)``."""
        with torch.autocast(embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)
            return self.log_scale.to(cos.dtype).exp() * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, "NormFaceLoss")
        with torch.autocast(embeddings.device.type, enabled=False):
            per = F.cross_entropy(self.logits(embeddings), labels.clamp_min(0), reduction="none")
            return reduce(per, labels >= 0, self.reduction)


def normface_loop(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Loop reference: one sample, one class at a time."""
    total, count = 0.0, 0
    for i in range(len(embeddings)):
        if labels[i] < 0:
            continue
        x = embeddings[i] / embeddings[i].norm().clamp_min(1e-12)
        exps = [torch.exp(scale * (x @ (weight[j] / weight[j].norm()))) for j in range(len(weight))]
        total = total - torch.log(exps[int(labels[i])] / sum(exps))
        count += 1
    return total / max(count, 1)
