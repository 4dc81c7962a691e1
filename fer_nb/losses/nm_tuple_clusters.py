"""(N+M)-tuple clusters loss of Liu et al. (CVPRW 2017), fixed (Eq. 3) and adaptive (Eq. 4-10).

**Fixed reference distance (Eq. 3).** A positive set ``{f_i+}_{i=1..M}`` (one expression) and a
negative set ``{f_j-}_{j=1..N}`` (other expressions, same subject as the query). With the positive
centre ``c+`` and *online positive mining* (Algorithm 1) keeping ``M*`` positives:

.. math::

    L = \\frac{1}{M^*}\\sum_{i=1}^{M^*} \\max\\bigl(0, D(f_i^+, c^+) - T + \\tfrac{\\tau}{2}\\bigr)
      + \\frac{1}{N}\\sum_{j=1}^{N} \\max\\bigl(0, T + \\tfrac{\\tau}{2} - D(f_j^-, c^+)\\bigr)

with ``D`` the squared Euclidean distance (Eq. 4 with ``M = I``). The loss is zero only when every
mined positive lies inside the ball of radius ``T - tau/2`` around ``c+`` *and* every negative lies
outside the ball of radius ``T + tau/2`` -- an "AND" of the two conditions, unlike Eq. 2's product.

**Algorithm 1 (online positive mining).** ``c+ = mean_i f_i+``; ``d* = min_j D(f_j-, c+)``; drop
positives with ``D(f_i+, c+) > d*``; recompute ``c+`` from the ``M*`` kept positives. The choice is
made without gradient (it is a selection); ``c+`` itself is differentiable. If no positive survives
(all positives are farther than the nearest negative) all ``M`` are kept -- the paper does not say
what happens then; a cluster without negatives keeps all positives (``d* = inf``).

**Adaptive reference distance (Eq. 4-8).** ``T`` becomes a quadratic form of the pair,
``T(f1, f2) = 1/2 z^T Q z + w^T z + b`` with ``z = [f1; f2]``; symmetry in ``f1, f2`` gives Eq. 5
``T = 1/2 f1^T Ã f1 + 1/2 f2^T Ã f2 + f1^T B̃ f2 + c^T (f1 + f2) + b``, and with
``D = (f1 - f2)^T M (f1 - f2)`` (Eq. 4), ``H = T - D`` is again such a form (Eq. 6-7) with
``A = Ã - 2M`` and ``B = B̃ + 2M``. Factorising ``A`` and ``B`` through linear layers ``L_A, L_B``
(Eq. 8) makes ``H`` a few matrix products:

.. math::

    H(f_1, f_2) = s_A\\bigl(\\tfrac12\\|L_A f_1\\|^2 + \\tfrac12\\|L_A f_2\\|^2\\bigr)
                + (L_B f_1)^\\top (L_B f_2) + c^\\top (f_1 + f_2) + b .

The paper's signs do not agree with each other: it assumes ``A`` PSD and ``B`` NSD but writes
``A = L_A^T L_A`` *and* ``B = L_B^T L_B`` (both PSD). ``form`` chooses:

* ``"metric"`` (default): ``A = -L_A^T L_A`` (NSD), ``B = +L_B^T L_B`` (PSD), ``s_A = -1``. This is
  the reading under which ``H = T - D`` can be a reference distance minus a Mahalanobis distance:
  with ``L_A = L_B = L`` and ``c = 0`` it is exactly ``H = b - 1/2 ||L (f1 - f2)||^2``.
  Initialised at ``L_A = L_B = sqrt(2) I``, ``c = 0``, ``b = init_reference``, i.e. at the fixed
  loss with ``T = init_reference`` and ``tau = 2``.
* ``"eq8"``: Eq. 8 literally (``s_A = +1``), same initial matrices. Then ``H`` grows with
  ``||f1 + f2||`` instead of shrinking with ``||f1 - f2||`` at the start; offered to show why the
  literal signs cannot be meant.

**Hinge form (Eq. 10).** With ``tau/2`` set to 1 (any other value rescales ``L_A, L_B, c, b``) and
``l = -1`` for (mined) positives, ``l = +1`` for negatives:

.. math::

    L = \\frac{1}{N + M^*} \\sum_{k=1}^{N+M^*} \\max\\bigl(0,\\; l(x_k)\\, H(f_k, c^+) + 1\\bigr).

For a positive this is ``max(0, 1 - H)`` = ``max(0, D - T + 1)``: zero when ``D <= T - tau/2``, as
in Eq. 3. **Eq. 9's sign slip:** Eq. 9 writes ``max(0, H(f_i+, c+) + tau/2)`` for the positives,
which is ``max(0, T - D + tau/2)`` -- zero only when the positive is *farther* than ``T + tau/2``,
i.e. it would push positives away from their centre (the negatives' term of Eq. 3). Eq. 10 with
its label function is the consistent version, and is what this module implements (the negatives'
term of Eq. 9, ``max(0, H + tau/2)``, agrees with Eq. 10). Eq. 10 averages all ``N + M*`` hinges
jointly, whereas Eq. 3 averages the positive and the negative set separately; so the adaptive loss
at its initialisation equals Eq. 3's hinges with that joint weighting, not Eq. 3 itself.

Clusters come from :func:`fer_nb.losses.coupled_clusters.cluster_masks`: per group of an
identity-aware batch (query first; positives = same label as the query, query included) or, with
``groups=None``, one cluster per class of the batch. ``reduction``: "mean" over clusters, "sum",
"none". Float32 (float64 stays float64), also under autocast; parameters are cast to that dtype.

Example::

    fixed = NMTupleClustersLoss(reference=2.0, tau=2.0)
    adaptive = NMTupleClustersLoss(adaptive=True, embedding_dim=64)   # has parameters: optimise them
    loss = adaptive(embeddings, labels, groups=batch_groups)
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.common import check_batch, check_reduction, reduce_clusters, working_rows
from fer_nb.losses.distances import pairwise_sq_distances
from fer_nb.losses.masks import cluster_masks, masked_mean, masked_min, reference_clusters

__all__ = ["FORMS", "NMTupleClustersLoss", "ReferenceDistance", "online_positive_mining", "reference_nm_tuple"]

FORMS = ("metric", "eq8")


def online_positive_mining(pos: torch.Tensor, neg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, steps 1-5: ``(G, B)`` mask of the kept positives ``M*`` (no gradient)."""
    with torch.no_grad():
        c0 = masked_mean(pos, x)
        d0 = pairwise_sq_distances(c0, x)
        nearest_neg = masked_min(d0, neg, keepdim=True)
        keep = pos & (d0 <= nearest_neg)
        empty = ~keep.any(1, keepdim=True)
        return torch.where(empty, pos, keep)


class ReferenceDistance(nn.Module):
    """``H(f1, f2) = T(f1, f2) - D(f1, f2)`` factorised into linear layers (Eq. 8).

    ``forward(f, centres)`` returns the ``(G, B)`` matrix ``H(f_b, centre_g)``.
    :meth:`matrices` returns the explicit ``A``, ``B``, ``c``, ``b`` of Eq. 7 (for checks).
    """

    def __init__(self, embedding_dim: int, rank: int | None = None, form: str = "metric",
                 init_reference: float = 2.0):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"ReferenceDistance: form must be one of {FORMS}, got {form!r}")
        rank = rank or embedding_dim
        if rank > embedding_dim:
            raise ValueError(f"ReferenceDistance: rank {rank} > embedding_dim {embedding_dim}")
        self.form = form
        self.sign_a = -1.0 if form == "metric" else 1.0
        self.L_A = nn.Linear(embedding_dim, rank, bias=False)
        self.L_B = nn.Linear(embedding_dim, rank, bias=False)
        eye = torch.eye(rank, embedding_dim) * math.sqrt(2.0)
        with torch.no_grad():
            self.L_A.weight.copy_(eye)
            self.L_B.weight.copy_(eye)
        self.c = nn.Parameter(torch.zeros(embedding_dim))
        self.b = nn.Parameter(torch.tensor(float(init_reference)))

    def extra_repr(self) -> str:
        return f"form={self.form!r}"

    def forward(self, f: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        dt = f.dtype
        wa, wb = self.L_A.weight.to(dt), self.L_B.weight.to(dt)
        c, b = self.c.to(dt), self.b.to(dt)
        af, ac = f @ wa.T, centres @ wa.T                    # L_A f
        bf, bc = f @ wb.T, centres @ wb.T                    # L_B f
        quad = 0.5 * (af.pow(2).sum(1)[None, :] + ac.pow(2).sum(1)[:, None])
        return self.sign_a * quad + bc @ bf.T + (f @ c)[None, :] + (centres @ c)[:, None] + b

    def matrices(self) -> dict[str, torch.Tensor]:
        """Explicit ``A = s_A L_A^T L_A``, ``B = L_B^T L_B``, ``c``, ``b`` (Eq. 7)."""
        wa, wb = self.L_A.weight, self.L_B.weight
        return {"A": self.sign_a * wa.T @ wa, "B": wb.T @ wb, "c": self.c, "b": self.b}


class NMTupleClustersLoss(nn.Module):
    """(N+M)-tuple clusters loss: Eq. 3 (``adaptive=False``) or Eq. 10 with Eq. 8 (``adaptive=True``).

    Args:
        reference: ``T`` of Eq. 3 (squared-distance units; fixed form only).
        tau: the margin ``tau`` of Eq. 3 (fixed form only; Eq. 10 fixes ``tau/2 = 1``).
        adaptive: learn ``H = T - D`` (Eq. 8); then ``embedding_dim`` is required and the module has
            parameters that the optimiser must update.
        embedding_dim, rank, form, init_reference: see :class:`ReferenceDistance`.
        mining: apply Algorithm 1 (online positive mining).
        reduction: ``"mean"`` over clusters, ``"sum"`` or ``"none"``.
    """

    def __init__(self, reference: float = 2.0, tau: float = 2.0, adaptive: bool = False,
                 embedding_dim: int | None = None, rank: int | None = None, form: str = "metric",
                 init_reference: float = 2.0, mining: bool = True, reduction: str = "mean"):
        super().__init__()
        if tau < 0:
            raise ValueError(f"NMTupleClustersLoss: tau must be >= 0, got {tau}")
        self.reference = float(reference)
        self.tau = float(tau)
        self.adaptive = bool(adaptive)
        self.mining = bool(mining)
        self.reduction = check_reduction(reduction, "NMTupleClustersLoss")
        self.H = None
        if self.adaptive:
            if embedding_dim is None:
                raise ValueError("NMTupleClustersLoss(adaptive=True) needs embedding_dim=<size of the embeddings>")
            self.H = ReferenceDistance(embedding_dim, rank, form, init_reference)

    def extra_repr(self) -> str:
        if self.adaptive:
            return f"adaptive=True, mining={self.mining}, reduction={self.reduction!r}"
        return f"reference={self.reference}, tau={self.tau}, mining={self.mining}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the batch; an empty batch (or one without a labelled row) gives an exact 0."""
        check_batch(embeddings, labels, "NMTupleClustersLoss")
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, labels >= 0), labels, groups)

    def compute(self, x: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 1, then Eq. 3 (fixed ``T``) or Eq. 10 (learned ``H``) per cluster, reduced."""
        pos, neg = cluster_masks(labels, groups)
        keep = online_positive_mining(pos, neg, x) if self.mining else pos
        c = masked_mean(keep, x)                                   # Algorithm 1, step 6
        wk, wn = keep.to(x.dtype), neg.to(x.dtype)
        if not self.adaptive:                                      # Eq. 3
            d = pairwise_sq_distances(c, x)
            half = self.tau / 2
            pos_term = (F.relu(d - self.reference + half) * wk).sum(1) / wk.sum(1).clamp_min(1)
            neg_term = (F.relu(self.reference + half - d) * wn).sum(1) / wn.sum(1).clamp_min(1)
            per = pos_term + neg_term
        else:                                                      # Eq. 10
            h = self.H(x, c)
            label = wn - wk                                        # l = -1 positives, +1 negatives
            hinge = F.relu(label * h + 1.0) * (wk + wn)
            per = hinge.sum(1) / (wk + wn).sum(1).clamp_min(1)
        return reduce_clusters(per, pos.any(1), self.reduction)


def reference_nm_tuple(x: torch.Tensor, labels: torch.Tensor, reference: float = 2.0, tau: float = 2.0,
                       groups: torch.Tensor | None = None, mining: bool = True,
                       matrices: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Loop reference of :class:`NMTupleClustersLoss` (mean over clusters), one row at a time.

    Algorithm 1 (mining), then Eq. 3 with ``T = reference``, or, with ``matrices`` (``A, B, c, b``
    of :meth:`ReferenceDistance.matrices`), Eq. 10 with the explicit quadratic form of Eq. 7.
    """
    def d2(i, c):
        return (x[i] - c).pow(2).sum()

    vals = []
    for pos, neg in reference_clusters(labels, groups):
        kept = pos
        if mining and neg:
            c0 = x[pos].mean(0)
            nearest = min(d2(j, c0) for j in neg)
            kept = [i for i in pos if d2(i, c0) <= nearest] or pos
        c = x[kept].mean(0)
        if matrices is None:                                                   # Eq. 3
            lp = sum(F.relu(d2(i, c) - reference + tau / 2) for i in kept) / len(kept)
            ln = sum(F.relu(reference + tau / 2 - d2(j, c)) for j in neg) / len(neg) if neg else 0.0
            vals.append(lp + ln)
            continue
        A, B, cv, b = (matrices[k].to(x.dtype) for k in ("A", "B", "c", "b"))

        def H(f1, f2):                                                         # Eq. 7
            return 0.5 * f1 @ A @ f1 + 0.5 * f2 @ A @ f2 + f1 @ B @ f2 + cv @ (f1 + f2) + b

        terms = [F.relu(1 - H(x[i], c)) for i in kept] + [F.relu(H(x[j], c) + 1) for j in neg]  # Eq. 10
        vals.append(sum(terms) / len(terms))
    return torch.stack([torch.as_tensor(v, dtype=x.dtype) for v in vals]).mean() if vals else x.new_zeros(())
