"""FisherGAN-style IPM critic loss (Mroueh & Sercu 2017), the CAF paper's Eq. 1 baseline (Table 4).

Eq. 1 of Kim & Song: ``d_F(P, Q) = sup_f E_P f(z) - E_Q f(z)`` with P = strong-emotion features and
Q = weak-emotion features. FisherGAN constrains the critic's second moment,
``Omega(f) = 1/2 (E_P f^2 + E_Q f^2) = 1`` (the "2nd-order regularisation" the paper omits), and
solves it with an augmented Lagrangian::

    L_F(f, lambda) = E_P f - E_Q f + lambda (1 - Omega) - rho/2 (1 - Omega)^2

The critic maximises ``L_F`` (this module returns ``-L_F`` to minimise); the multiplier follows
``lambda <- lambda - rho * dL_F/dlambda = lambda - rho (1 - Omega)`` (:meth:`update_multiplier`).
The scalar critic value of a ``(B, d)`` output is its mean over ``d`` (as the CAF code's
``L_adv = -mean(critic(.))`` uses it).
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import check_indicator, working_dtype


class FisherIPMLoss(nn.Module):
    """``-L_F`` of FisherGAN for strong (label 1) vs weak (label 0) features; ``reduction`` is the mean.

    ``forward(embeddings, labels)``: ``embeddings`` ``(B,)`` or ``(B, d)`` critic outputs,
    ``labels`` ``(B,)`` strong indicator. An empty group contributes 0 to its expectation.
    """

    def __init__(self, rho: float = 1e-6):
        super().__init__()
        if rho < 0:
            raise ValueError(f"FisherIPMLoss: rho must be >= 0, got {rho}")
        self.rho = rho
        self.register_buffer("lagrange", torch.zeros(()))
        self.last_constraint = torch.zeros(())

    @staticmethod
    def critic_value(embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim == 1:
            return embeddings
        if embeddings.ndim == 2:
            return embeddings.mean(1)
        raise ValueError(f"FisherIPMLoss: embeddings must be (B,) or (B, d), got shape {tuple(embeddings.shape)}")

    def ipm_terms(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """``(E_P f, E_Q f, Omega)`` of the critic values; an empty group's expectations are 0."""
        f = self.critic_value(embeddings)
        strong = check_indicator(labels, f.shape[0], "FisherIPMLoss").to(f.device)
        f = f.to(working_dtype(f))
        p = strong.to(f.dtype)
        q = 1 - p
        n_p, n_q = p.sum().clamp_min(1), q.sum().clamp_min(1)
        e_p, e_q = (f * p).sum() / n_p, (f * q).sum() / n_q
        e_p2, e_q2 = (f.pow(2) * p).sum() / n_p, (f.pow(2) * q).sum() / n_q
        return e_p, e_q, 0.5 * (e_p2 + e_q2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(*self.ipm_terms(embeddings, labels))

    def compute(self, e_p: torch.Tensor, e_q: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
        """``-L_F = -(E_P f - E_Q f + lambda (1 - Omega) - rho/2 (1 - Omega)^2)`` (FisherGAN)."""
        constraint = 1 - omega
        self.last_constraint = constraint.detach()
        lam = self.lagrange.to(e_p.dtype)
        l_f = e_p - e_q + lam * constraint - self.rho / 2 * constraint.pow(2)
        return -l_f

    @torch.no_grad()
    def update_multiplier(self) -> None:
        """One step of the multiplier: ``lambda <- lambda - rho (1 - Omega)`` (after a critic step)."""
        self.lagrange -= self.rho * self.last_constraint.to(self.lagrange)
