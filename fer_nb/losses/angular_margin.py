"""Angular softmax with an additive angular margin (Takashima et al., Eq. 12-16; ArcFace).

UDAT-AS replaces the domain classifier's softmax output layer (Eq. 6) by an *angular* softmax.
With pre-output features ``r'`` (Eq. 12) and output weights ``z_j``, the logit of class ``j`` is
the scaled cosine of the angle ``rho_j`` between them (Eq. 14),

.. math::

    \\cos\\rho_j = \\frac{z_j^\\top r'}{\\|z_j\\|\\,\\|r'\\|}, \\qquad
    r_t = \\frac{\\exp(s\\cos\\rho_t)}{\\exp(s\\cos\\rho_s) + \\exp(s\\cos\\rho_t)} \\quad (13)

(the paper's Eq. 14 prints ``||z_t'|| ||r_t'||`` in the denominator; the norms are of ``z_t`` and
``r'``). The margin variant (Eq. 15, 16) adds the angle ``m`` to the angle of the *ground-truth*
class only, for every sample:

.. math::

    r_{y} = \\frac{\\exp(s\\cos(\\rho_{y} + m))}{\\exp(s\\cos(\\rho_{y} + m)) + \\sum_{j\\ne y}\\exp(s\\cos\\rho_j)},

which is ArcFace's additive angular margin (Deng et al., CVPR 2019; the paper's ref. [9]) written
for two classes, source and target. The loss is the cross-entropy of these probabilities, Eq. 18,
averaged over the ``N + M`` source and target samples. ``s = 64`` and ``m = 0.5`` in the paper.

Past ``rho_y > pi - m`` the term ``cos(rho_y + m)`` starts to *increase* again, so a sample that is
far on the wrong side would be pushed the wrong way. ``overflow`` says what to do there:

* ``"arcface"`` (default): ``cos(rho) - m sin(m)`` where ``rho > pi - m`` (insightface's ArcFace
  and pytorch-metric-learning's ``ArcFaceLoss``): decreasing in ``rho`` on all of ``[0, pi]``
  (with a downward jump of ``cos(m) + m sin(m) - 1`` at ``pi - m``, as in those implementations);
* ``"easy"``: ArcFace's ``easy_margin``, the margin only where ``cos(rho) > 0``;
* ``"none"``: Eq. 15/16 literally, ``cos(rho + m)`` everywhere.

``cos(rho + m)`` is computed as ``cos(rho) cos(m) - sin(rho) sin(m)`` with
``sin(rho) = sqrt(max(1 - cos^2, eps))`` (``rho`` in ``[0, pi]``), which keeps the gradient finite
where ``cos(rho) = +-1``, unlike ``acos``, and bounded next to it (the margin logit's slope is at most
``s (cos m + sin m)``). Everything is computed in float32 (float64 stays
float64), also under autocast. ``margin = 0`` is the plain angular softmax of Eq. 13.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from fer_nb.losses.common import (REDUCTIONS, check_inputs, check_reduction, reduce, working_dtype,
                                  working_rows)

__all__ = ["AngularMarginLoss", "CosineClassifierLoss", "OVERFLOWS", "REDUCTIONS", "angular_margin_logits",
           "cosine_logits", "reference_arcface", "working_dtype"]

OVERFLOWS = ("arcface", "easy", "none")


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``cos rho_ij = <x_i, w_j> / (||x_i|| ||w_j||)`` for all rows/classes, ``(B, C)`` (Eq. 14).

    A zero embedding (or weight row) has cosine 0 with everything (``F.normalize``'s ``eps``).
    """
    dt = working_dtype(embeddings)
    x = F.normalize(embeddings.to(dt), dim=1, eps=eps)
    w = F.normalize(weight.to(dt), dim=1, eps=eps)
    return x @ w.t()


def angular_margin_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float = 64.0, margin: float = 0.5,
                          overflow: str = "arcface", eps: float = 1e-7) -> torch.Tensor:
    """Scaled logits with the additive angular margin on each row's ground-truth class (Eq. 15-16).

    ``cosine``: ``(B, C)`` cosines (:func:`cosine_logits`); ``labels``: ``(B,)`` ids, ``-1`` rows get
    no margin. Returns ``s * cos(rho_ij + m [j == y_i])`` with the ``overflow`` rule of the module
    docstring; ``margin = 0`` gives ``s * cos(rho_ij)`` (Eq. 13).
    """
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")
    c = cosine.clamp(-1.0, 1.0)
    if margin == 0.0:
        return scale * c
    valid = labels >= 0
    onehot = F.one_hot(labels.clamp_min(0), c.shape[1]).to(torch.bool) & valid[:, None]
    sin = (1.0 - c * c).clamp_min(eps).sqrt()
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    with_margin = c * cos_m - sin * sin_m  # cos(rho + m)
    if overflow == "arcface":
        # rho > pi - m  <=>  cos(rho) < cos(pi - m) = -cos(m)
        with_margin = torch.where(c > -cos_m, with_margin, c - margin * sin_m)
    elif overflow == "easy":
        with_margin = torch.where(c > 0, with_margin, c)
    return scale * torch.where(onehot, with_margin, c)


class CosineClassifierLoss(nn.Module):
    """Cross-entropy over scaled cosines ``s cos rho_j`` to learned class weights (Eq. 13-14, 18), the
    shared body of :class:`AngularMarginLoss` and :class:`fer_nb.losses.cosface.CosFaceLoss`.

    ``weight`` is ``(num_classes, embedding_dim)`` (no bias). Subclasses put their margin on the
    ground-truth class in :meth:`margin_logits`; :meth:`logits` without labels is margin-free.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float, reduction: str):
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"{type(self).__name__}: num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}")
        check_reduction(reduction, type(self).__name__)
        if not scale > 0:
            raise ValueError(f"{type(self).__name__}: scale s must be > 0, got {scale}")
        self.embedding_dim, self.num_classes = int(embedding_dim), int(num_classes)
        self.scale, self.reduction = float(scale), reduction
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosines ``cos rho_j`` (Eq. 14)."""
        return cosine_logits(embeddings, self.weight)

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the subclass's margin on each row's ground-truth class."""
        raise NotImplementedError(f"{type(self).__name__} must define margin_logits(cosine, labels)")

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``s cos rho_j`` (Eq. 13); with ``labels`` the ground-truth class gets the margin."""
        with torch.autocast(embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)
            return self.scale * cos if labels is None else self.margin_logits(cos, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, type(self).__name__)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, labels >= 0), labels)

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 18: cross-entropy of the margin logits (Eq. 13-16), over the labelled rows."""
        logits = self.margin_logits(self.cosine(x), labels)
        per = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        return reduce(per, labels >= 0, self.reduction)


class AngularMarginLoss(CosineClassifierLoss):
    """Angular softmax output layer + cross-entropy, with additive angular margin (Eq. 12-16, 18).

    Args:
        embedding_dim: width of the pre-output representation ``r'`` (Eq. 12).
        num_classes: 2 for UDAT-AS's source/target domain classifier; any ``C >= 1`` works.
        scale: ``s`` of Eq. 13 (64 in the paper).
        margin: ``m`` of Eq. 15-16 in **radians** (0.5 in the paper; 0 = plain angular softmax).
        overflow: ``"arcface"`` | ``"easy"`` | ``"none"``, the rule past ``rho + m > pi`` (module docstring).
        reduction: ``"mean"`` (over rows with a label != -1; Eq. 18's ``1/(N+M)``), ``"sum"`` or ``"none"``.

    ``weight`` is ``(num_classes, embedding_dim)``, the rows are the ``z_j`` of Eq. 14 (no bias).
    pytorch-metric-learning's ``ArcFaceLoss`` stores the transpose and takes the margin in degrees.
    ``forward(embeddings, labels)`` returns the loss; :meth:`logits` gives margin-free scaled
    cosines for prediction (the margin is a training device only).
    """

    def __init__(self, embedding_dim: int, num_classes: int = 2, scale: float = 64.0, margin: float = 0.5,
                 overflow: str = "arcface", reduction: str = "mean"):
        if overflow not in OVERFLOWS:
            raise ValueError(f"AngularMarginLoss: overflow must be one of {OVERFLOWS}, got {overflow!r}")
        if not 0.0 <= margin < math.pi:
            raise ValueError(f"AngularMarginLoss: margin m is an angle in radians in [0, pi), got {margin} "
                             f"(pytorch-metric-learning's ArcFaceLoss takes degrees: use math.radians)")
        super().__init__(embedding_dim, num_classes, scale, reduction)
        self.margin, self.overflow = float(margin), overflow

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, overflow={self.overflow!r}, reduction={self.reduction!r}")

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``s cos(rho_j + m [j == y])`` (Eq. 15-16); ``m = 0`` is the plain angular softmax (Eq. 13)."""
        if self.margin == 0.0:
            return self.scale * cosine
        return angular_margin_logits(cosine, labels, self.scale, self.margin, self.overflow)


def reference_arcface(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float = 64.0,
                      margin: float = 0.5, overflow: str = "arcface") -> torch.Tensor:
    """Loop reference of :class:`AngularMarginLoss`: per-row losses (Eq. 13-16, 18), one row at a time,
    the angle taken with ``acos``. Rows labelled ``-1`` give 0; ``margin=0`` is Eq. 13's softmax."""
    per = []
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            per.append(x.new_zeros(()))
            continue
        cos = (weight @ x[i] / (weight.norm(dim=1) * x[i].norm())).clamp(-1.0, 1.0)
        target = cos[y]
        if margin > 0:
            rho = torch.acos(target)
            target = torch.cos(rho + margin)
            if overflow == "arcface" and float(rho.detach()) > math.pi - margin:
                target = cos[y] - margin * math.sin(margin)
            elif overflow == "easy" and float(cos[y].detach()) <= 0:
                target = cos[y]
        logits = scale * torch.cat([cos[:y], target[None], cos[y + 1:]])
        per.append(torch.logsumexp(logits, 0) - logits[y])
    return torch.stack(per) if per else x.new_zeros(0)
