"""CosFace: large margin cosine loss (Wang et al., CVPR 2018; Takashima et al.'s ref. [8]).

The additive *cosine* margin sibling of the angular margin in :mod:`fer_nb.losses.angular_margin`.
With ``cos rho_j`` the cosine between the embedding and class weight ``w_j`` (Takashima et al.,
Eq. 14), CosFace subtracts ``m`` from the ground-truth cosine instead of adding ``m`` to its angle
(Takashima et al., Eq. 15-16):

.. math::

    L = -\\frac{1}{N}\\sum_i \\log
        \\frac{\\exp(s(\\cos\\rho_{y_i} - m))}{\\exp(s(\\cos\\rho_{y_i} - m)) + \\sum_{j\\ne y_i}\\exp(s\\cos\\rho_j)} .

Wang et al. use ``s = 64`` and ``m = 0.35`` (also pytorch-metric-learning's ``CosFaceLoss``
defaults). The penalty is the same in every direction of the hypersphere (no ``pi - m``
overflow case, unlike ArcFace), which the course chapter on loss geometry contrasts with ArcFace.
Computed in float32 (float64 stays float64), also under autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fer_nb.losses.angular_margin import CosineClassifierLoss

__all__ = ["CosFaceLoss", "cosface_logits", "reference_cosface"]


def cosface_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float = 64.0, margin: float = 0.35) -> torch.Tensor:
    """``s (cos rho_ij - m [j == y_i])``; rows with label ``-1`` get no margin."""
    valid = labels >= 0
    onehot = F.one_hot(labels.clamp_min(0), cosine.shape[1]).to(cosine.dtype) * valid[:, None].to(cosine.dtype)
    return scale * (cosine - margin * onehot)


class CosFaceLoss(CosineClassifierLoss):
    """Large margin cosine loss with learned class weights ``(num_classes, embedding_dim)``.

    Args:
        embedding_dim: embedding width.
        num_classes: number of classes.
        scale: ``s`` (64).
        margin: cosine margin ``m`` (0.35); ``0`` gives the normalised softmax (Eq. 13 of UDAT-AS).
        reduction: ``"mean"`` (over rows with label != -1), ``"sum"`` or ``"none"``.

    ``forward(embeddings, labels) -> loss``; :meth:`logits` gives margin-free scaled cosines.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
                 reduction: str = "mean"):
        if not 0.0 <= margin <= 2.0:
            raise ValueError(f"CosFaceLoss: cosine margin m must lie in [0, 2], got {margin}")
        super().__init__(embedding_dim, num_classes, scale, reduction)
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, reduction={self.reduction!r}")

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``s (cos rho_j - m [j == y])``."""
        return cosface_logits(cosine, labels, self.scale, self.margin)


def reference_cosface(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float = 64.0,
                      margin: float = 0.35) -> torch.Tensor:
    """Loop reference of :class:`CosFaceLoss`: per-row losses, one row at a time (``-1`` rows give 0)."""
    per = []
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            per.append(x.new_zeros(()))
            continue
        cos = weight @ x[i] / (weight.norm(dim=1) * x[i].norm())
        logits = scale * torch.cat([cos[:y], (cos[y] - margin)[None], cos[y + 1:]])
        per.append(torch.logsumexp(logits, 0) - logits[y])
    return torch.stack(per) if per else x.new_zeros(0)
