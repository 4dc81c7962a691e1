"""Island loss (Cai et al., FG 2018), the baseline of Racoviteanu et al.'s Tables 1 and 2.

.. math::

    \\mathcal{L}_{IL} = \\mathcal{L}_C + \\lambda_1 \\sum_{j} \\sum_{k \\ne j}
        \\big(\\cos(\\mathbf{c}_j, \\mathbf{c}_k) + 1\\big)

the center loss (:class:`fer_nb.losses.center.CenterLoss`, Racoviteanu et al. Eq. 1) plus a
penalty on the cosine similarity of every *ordered* pair of distinct centres (each unordered pair
counted twice), which pushes the centres apart in angle. The island term does not depend on the
embeddings, so it acts only through the centres:

* ``update="moving"`` (default): the centres' moving update (rate ``alpha``) gets the island
  gradient added to the center-loss step, ``c_j -= alpha * (delta_j + lambda1 * dI/dc_j)``
  (Cai et al.'s centre update); the returned loss includes the island value for logging.
* ``update="sgd"``: ``centers`` is an ``nn.Parameter`` and the optimizer sees both terms.

``forward(embeddings, labels) -> loss``; labels ``-1`` are ignored. ``reduction`` applies to the
center term (``"mean"`` or ``"sum"``); the island term is added once per call.
"""
from __future__ import annotations

import torch

from fer_nb.losses.center import CenterLoss, working_dtype


def pairwise_cos_penalty(centers: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``sum_{j != k} (cos(c_j, c_k) + 1)`` over ordered pairs, vectorised (zero centres give cos 0)."""
    c = centers / centers.norm(dim=1, keepdim=True).clamp_min(eps)
    cos = c @ c.T
    diagonal = torch.eye(centers.shape[0], dtype=torch.bool, device=centers.device)
    return (cos + 1.0).masked_fill(diagonal, 0.0).sum()   # a mask, not a selection: no host sync on CUDA


class IslandLoss(CenterLoss):
    """Center loss + ``lambda1`` x ordered-pair cosine penalty on the centres (Cai et al.).

    Args as :class:`CenterLoss` (``reduction`` is ``"mean"`` or ``"sum"``), plus ``lambda1``
    (Cai et al. use 10 with the center term weighted 0.01 in the total loss).
    """

    def __init__(self, num_classes: int, embedding_dim: int, reduction: str = "mean", *,
                 lambda1: float = 10.0, squared: bool = True, update: str = "moving", alpha: float = 0.5,
                 eps: float = 1e-12):
        if reduction == "none":
            raise ValueError("IslandLoss has a batch-level island term; use reduction='mean' or 'sum'")
        if num_classes < 2:
            raise ValueError(f"IslandLoss needs num_classes >= 2 (pairs of centres), got {num_classes}")
        super().__init__(num_classes, embedding_dim, reduction, squared=squared, update=update, alpha=alpha, eps=eps)
        self.lambda1 = float(lambda1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lambda1={self.lambda1}"

    def island_term(self) -> torch.Tensor:
        """``sum_{j != k} (cos(c_j, c_k) + 1)`` of the current centres."""
        return pairwise_cos_penalty(self.centers.to(working_dtype(self.centers)))

    def _update_delta(self) -> torch.Tensor:
        with torch.enable_grad():
            c = self.centers.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(pairwise_cos_penalty(c), c)
        return self.lambda1 * grad

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Center term (Eq. 1) + ``lambda1`` x island term of the centres.

        :meth:`CenterLoss.forward` calls this before the moving update, so the island value is the
        one of the centres before this batch's update (whose step includes the island gradient).
        """
        return super().compute(x, labels) + self.lambda1 * self.island_term().to(x.dtype)


def reference_island_term(centers: torch.Tensor) -> torch.Tensor:
    """Loop reference of :func:`pairwise_cos_penalty`: ``sum_{j != k} (cos(c_j, c_k) + 1)`` pair by pair."""
    total = centers.new_zeros(())
    for j in range(len(centers)):
        for k in range(len(centers)):
            if j != k:
                cos = centers[j] @ centers[k] / (centers[j].norm() * centers[k].norm())
                total = total + cos + 1.0
    return total


__all__ = ["IslandLoss", "pairwise_cos_penalty", "reference_island_term"]
