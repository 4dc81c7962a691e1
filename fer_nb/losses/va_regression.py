"""Valence-arousal regression loss of CAF (Kim & Song 2021, "Evaluation metrics" paragraph).

``L_AV = L_RMSE + eps (L_PCC + L_CCC)`` with ``eps = 0.5``, ``L_PCC = 1 - (PCC_a + PCC_v) / 2``,
``L_CCC = 1 - (CCC_a + CCC_v) / 2``; ``L_RMSE = RMSE_v + RMSE_a`` (the official code's sum of the
two per-dimension RMSEs). PCC and CCC use population moments over the mini-batch, as the metrics
in :mod:`fer_nb.metrics`. Small ``eps_num`` terms keep a batch of one (or constant predictions)
finite: the correlations are then 0.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import working_dtype


def batch_pcc_ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8):
    """Per-column PCC and CCC of ``(B, 2)`` tensors (population moments), differentiable."""
    mp, mt = pred.mean(0), target.mean(0)
    dp, dt = pred - mp, target - mt
    vp, vt = dp.pow(2).mean(0), dt.pow(2).mean(0)
    cov = (dp * dt).mean(0)
    pcc = cov / torch.sqrt(vp * vt + eps)
    ccc = 2 * cov / (vp + vt + (mp - mt).pow(2) + eps)
    return pcc, ccc


class VARegressionLoss(nn.Module):
    """``L_AV``; ``forward(embeddings, labels)`` with predictions ``(B, 2)`` and targets ``(B, 2)``
    (valence, arousal). ``reduction``: the loss is one scalar over the batch (RMSE, PCC and CCC are
    batch statistics, so no per-sample reduction exists)."""

    def __init__(self, weight: float = 0.5, eps: float = 1e-8):
        super().__init__()
        self.weight, self.eps = weight, eps
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred, target = embeddings, labels
        if pred.ndim != 2 or pred.shape[1] != 2 or target.shape != pred.shape:
            raise ValueError(f"VARegressionLoss: need predictions and va labels of shape (B, 2), got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        dtype = working_dtype(pred)
        with torch.autocast(pred.device.type, enabled=False):
            return self.compute(pred.to(dtype), target.to(pred.device, dtype))

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``L_AV = RMSE_v + RMSE_a + eps (1 - mean PCC + 1 - mean CCC)``."""
        rmse = torch.sqrt((pred - target).pow(2).mean(0) + self.eps)  # (valence, arousal)
        pcc, ccc = batch_pcc_ccc(pred, target, self.eps)
        l_pcc, l_ccc = 1 - pcc.mean(), 1 - ccc.mean()
        self.last = {"rmse_v": rmse[0].detach(), "rmse_a": rmse[1].detach(),
                     "pcc": pcc.mean().detach(), "ccc": ccc.mean().detach()}
        return rmse.sum() + self.weight * (l_pcc + l_ccc)
