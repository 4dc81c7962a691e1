"""MMD / GramNet-style critic losses, the kernel baselines of the CAF ablation (Table 4).

GramNet (Srivastava et al., "Generative ratio matching networks", ICLR 2020) trains the critic to
map P and Q into a low-dimensional space where their density ratio ``r = p / q`` is estimated in
closed form with a Gaussian kernel (kernel mean matching), and maximises the Pearson divergence
of that ratio::

    r_q = (N_q / N_p) (K_qq + lam I)^{-1} K_qp 1        (ratio at the Q samples)
    PD  = 1/N_q sum_j (r_q,j - 1)^2                      ("difference in squared ratio")

``kind="gramnet"`` returns ``-PD`` (the critic minimises it). ``kind="mmd"`` returns ``-MMD^2``
(biased estimator, Gretton et al. 2012) with the same kernel. The bandwidth is the median pairwise
distance of the batch (detached) when ``bandwidth=None``. P = strong (label 1), Q = weak (label 0).
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import check_indicator, working_dtype
from fer_nb.losses.distances import pairwise_sq_distances

KINDS = ("gramnet", "mmd")


def _gaussian_gram(a: torch.Tensor, b: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(-pairwise_sq_distances(a, b) / (2 * sigma**2))


class MMDCriticLoss(nn.Module):
    """Kernel critic loss (``-PD`` of GramNet or ``-MMD^2``); ``forward(embeddings, labels)`` -> scalar."""

    def __init__(self, kind: str = "gramnet", bandwidth: float | None = None, lam: float = 1e-2):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"MMDCriticLoss: unknown kind {kind!r}; use one of {KINDS}")
        self.kind, self.bandwidth, self.lam = kind, bandwidth, lam

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError(f"MMDCriticLoss: embeddings must be (B, d), got shape {tuple(embeddings.shape)}")
        strong = check_indicator(labels, embeddings.shape[0], "MMDCriticLoss").to(embeddings.device)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(embeddings.to(working_dtype(embeddings)), strong)

    def compute(self, z: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        """``-PD`` (GramNet's Pearson divergence of the kernel ratio estimate) or ``-MMD^2``."""
        zp, zq = z[strong], z[~strong]
        if zp.shape[0] == 0 or zq.shape[0] == 0:
            return z.sum() * 0.0  # one group only: no divergence to estimate
        if self.bandwidth is None:
            d = torch.pdist(z.detach()) if z.shape[0] > 1 else z.new_ones(1)
            sigma = d.median().clamp_min(1e-3)
        else:
            sigma = z.new_tensor(float(self.bandwidth))
        k_pp, k_qq, k_qp = _gaussian_gram(zp, zp, sigma), _gaussian_gram(zq, zq, sigma), _gaussian_gram(zq, zp, sigma)
        if self.kind == "mmd":
            mmd2 = k_pp.mean() + k_qq.mean() - 2 * k_qp.mean()
            return -mmd2
        n_p, n_q = zp.shape[0], zq.shape[0]
        eye = torch.eye(n_q, dtype=z.dtype, device=z.device)
        r_q = (n_q / n_p) * torch.linalg.solve(k_qq + self.lam * eye, k_qp.sum(1, keepdim=True)).squeeze(1)
        return -(r_q - 1).pow(2).mean()
