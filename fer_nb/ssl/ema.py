"""Exponential moving average of a model's weights (Mean Teacher; MixMatch's evaluation model).

``ema <- alpha * ema + (1 - alpha) * theta`` for every floating-point parameter, done with one
``torch._foreach_lerp_`` over all tensors (a handful of fused kernels on a GPU instead of one
per tensor). BatchNorm buffers (running mean/var, batch counter) are **copied** from the live model,
not averaged. MixMatch's reference code also applies a *decoupled* weight decay to the live
model right after the EMA update, ``theta <- theta * (1 - wd)`` with ``wd = 0.02 * lr``; pass
``weight_decay`` to do the same (one ``torch._foreach_mul_``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_model(model: nn.Module) -> nn.Module:
    """A detached deep copy of ``model`` for the EMA weights (no gradients)."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


class WeightEMA:
    """Keep ``ema_model``'s weights an EMA of ``model``'s (see the module docstring).

    Args:
        model: the trained (student) network.
        ema_model: a structural copy (see :func:`make_ema_model`); its weights are overwritten.
        alpha: EMA decay (MixMatch and Mean Teacher: 0.999; use less for short runs).
        weight_decay: decoupled decay applied to ``model`` after each update (MixMatch: ``0.02 * lr``);
            0 disables it.
        init: copy ``model``'s weights into ``ema_model`` first (default True).

    ``step()`` after each optimizer step. ``state_dict``/``load_state_dict`` make it usable as
    ``extra_state`` in :func:`fer_nb.train.fit`.
    """

    def __init__(self, model: nn.Module, ema_model: nn.Module, alpha: float = 0.999,
                 weight_decay: float = 0.0, init: bool = True):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1], got {alpha}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.model, self.ema_model = model, ema_model
        self.alpha, self.weight_decay = float(alpha), float(weight_decay)
        pairs = list(zip(model.parameters(), ema_model.parameters()))
        if len(pairs) != len(list(model.parameters())) or len(pairs) != len(list(ema_model.parameters())):
            raise ValueError("model and ema_model must have the same parameters (use make_ema_model(model))")
        self._params = [p for p, _ in pairs if p.dtype.is_floating_point]
        self._ema_params = [q for p, q in pairs if p.dtype.is_floating_point]
        self._buffers = list(model.buffers())
        self._ema_buffers = list(ema_model.buffers())
        if init:
            with torch.no_grad():
                for p, q in zip(model.parameters(), ema_model.parameters()):
                    q.copy_(p)
                self.copy_buffers()

    @torch.no_grad()
    def copy_buffers(self) -> None:
        """Copy BatchNorm running statistics (all buffers) from the model to the EMA model."""
        if self._buffers:
            torch._foreach_copy_(self._ema_buffers, self._buffers)

    @torch.no_grad()
    def step(self) -> None:
        """One EMA update (+ decoupled decay of the live model), without host synchronisation."""
        if self._params:
            torch._foreach_lerp_(self._ema_params, [p.detach() for p in self._params], 1.0 - self.alpha)
        self.copy_buffers()
        if self.weight_decay > 0 and self._params:
            torch._foreach_mul_(self._params, 1.0 - self.weight_decay)

    def state_dict(self) -> dict:
        return {"ema_model": self.ema_model.state_dict(), "alpha": self.alpha, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict) -> None:
        self.ema_model.load_state_dict(state["ema_model"])
