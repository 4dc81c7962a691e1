"""Gradient reversal layer (Ganin & Lempitsky, ICML 2015), as used by UDAT and UDAT-AS.

Takashima et al. (UDAT-AS), Sec. IV: "The gradient reversal layer outputs the input vectors
without any conversion during forward propagation, and sign inversion of the gradients during
back propagation". Scaled by the trade-off ``lambda`` this gives the feature-extractor update of
their Eq. 11 / Eq. 21,

.. math::

    \\theta_f \\leftarrow \\theta_f - \\mu\\Big(\\frac{\\partial L_y}{\\partial \\theta_f}
        - \\lambda \\frac{\\partial L_d}{\\partial \\theta_f}\\Big),

while the domain classifier itself still *descends* its loss (Eq. 10 / Eq. 20): the layer sits
between the feature extractor ``G_f`` and the domain classifier ``G_d``, so only gradients that
flow back into ``G_f`` are multiplied by ``-lambda``. Then one ordinary ``backward()`` of
``L_y + L_d`` followed by one SGD step performs Eqs. 9-11 at once.

The paper uses a constant ``lambda`` swept over 0.0..1.0 (step 0.1). Ganin & Lempitsky's
schedule ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` (``p`` = training progress in [0, 1]) is offered
as :func:`dann_lambda` for the reader who wants the canonical DANN warm-up.

This is not a loss but the one-layer building block of the adversarial losses; it lives beside
them because it is meaningless without one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GradientReversal", "GradientReversalFunction", "dann_lambda", "grad_reverse"]


class GradientReversalFunction(torch.autograd.Function):
    """``y = x`` forward; ``dL/dx = -lambda * dL/dy`` backward (no gradient for ``lambda``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.neg() * ctx.lambda_, None


def _check_lambda(lambda_) -> float:
    if isinstance(lambda_, torch.Tensor):
        if lambda_.numel() != 1:
            raise ValueError(f"lambda must be a scalar, got a tensor of shape {tuple(lambda_.shape)}")
        lambda_ = float(lambda_)
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)):
        raise TypeError(f"lambda must be a number, got {lambda_!r}")
    if not math.isfinite(lambda_):
        raise ValueError(f"lambda must be finite, got {lambda_}")
    return float(lambda_)


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Functional form: identity forward, ``-lambda_ * grad`` backward."""
    return GradientReversalFunction.apply(x, _check_lambda(lambda_))


def dann_lambda(progress: float, gamma: float = 10.0, lambda_max: float = 1.0) -> float:
    """Ganin & Lempitsky's schedule ``lambda_max * (2 / (1 + exp(-gamma p)) - 1)``, ``p`` in [0, 1].

    0 at the start, ``~lambda_max`` at the end (0.9999 * lambda_max at ``p = 1`` for ``gamma = 10``).
    Pass ``ctx.progress`` from :func:`fer_nb.train.fit`'s step context.
    """
    p = float(progress)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress}")
    return float(lambda_max) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class GradientReversal(nn.Module):
    """Gradient reversal layer with a settable trade-off ``lambda_`` (Takashima et al., Eq. 11/21).

    ``forward(x)`` returns ``x`` unchanged; its backward multiplies the incoming gradient by
    ``-lambda_``. Set ``layer.lambda_`` between steps for a schedule (see :func:`dann_lambda`),
    or pass ``lambda_=`` to ``forward`` to override it for one call. ``lambda_ = 0`` cuts the
    domain loss off from the feature extractor, i.e. UDAT reduces to source-only training
    (Takashima et al.: "UDAT is suppressed by setting lambda to 0.0").
    """

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = _check_lambda(lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"

    def forward(self, x: torch.Tensor, lambda_: float | None = None) -> torch.Tensor:
        return grad_reverse(x, self.lambda_ if lambda_ is None else lambda_)
