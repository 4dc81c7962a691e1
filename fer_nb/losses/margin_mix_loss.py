"""Margin-Mix's large-margin loss with soft memberships and non-Euclidean distances (Florea et al., Eq. 2-5, 11).

**Eq. 3** (large margin on normalised embeddings ``e_hat = e / ||e||``, ``C`` classes)::

    L_M = sum_i [ D(e_hat_i, c^{y_i}) - 1/(C-1) sum_{j != y_i} D(e_hat_i, c^j) ]

with ``D`` the squared Euclidean distance (Eq. 11 is the gradient of the *squared* distance:
``2 (e_hat - c_hat)``). Margin-Mix applies it to MixUp'ed samples whose targets are soft
(Eq. 9), so each row's term is weighted by its target distribution ``t_i``; with
``sum_c t_ic = 1``::

    l_i = sum_c t_ic [ D_ic - 1/(C-1) sum_{j != c} D_ij ] = C/(C-1) sum_c t_ic D_ic - 1/(C-1) sum_j D_ij

(a one-hot ``t_i`` gives Eq. 3 exactly).

**Eq. 4-5** (the generalisation, Sec. 3.2): the distance of a point to a centroid only needs the
matrix ``A`` of generalised *squared* distances between points (``a_ij = D(e_i, e_j)``). With
``s_c = sum_j mu_jc b_j / m_c`` (the membership-weighted average of basis vectors, ``m_c = sum_j
mu_jc``) and ``w = s_c - b_i`` (``sum_j w_j = 0``)::

    D(e_i, c^c)^2 = -1/2 w^T A w = (A s_c)_i - 1/2 s_c^T A s_c          (a_ii = 0)

For the Euclidean ``A`` this is exactly ``||e_i - c^c||^2`` with ``c^c`` the weighted mean
(Eq. 5); for a kernel-induced ``A`` (``a_ij = k_ii + k_jj - 2 k_ij``, here ``distance="rbf"``) it
is the distance to the centroid *in the kernel's feature space* (kernel k-means), which has no
explicit vector. :func:`centroid_sq_distances` implements it for a whole batch at once.

:class:`MarginMixLoss` therefore takes either explicit centroids (``centroids=(C, D)``, the
running centroids of Algorithm 1) or none, in which case the centroids are the membership-weighted
means of the batch itself (Eq. 1 / Eq. 5) computed through Eq. 4. All maths in float32 (float64
stays float64), also under autocast; no Python loop over samples; no host synchronisation.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import check_reduction, reduce, working_dtype
from fer_nb.losses.device_checks import require
from fer_nb.losses.distances import DISTANCES, normalise, pairwise_sq_distances

__all__ = ["DISTANCES", "MarginMixLoss", "centroid_sq_distances", "eq11_gradient", "pairwise_sq_distances",
           "reference_margin_mix", "reference_kernel_centroid_sq_distances"]


def centroid_sq_distances(A: torch.Tensor, memberships: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5: squared distances ``(N, C)`` of every point to every membership-weighted centroid.

    ``A``: ``(N, M)`` generalised squared distances from the ``N`` query points to the ``M``
    reference points (``N = M`` and the same points for Eq. 4 proper); ``memberships``: ``(M, C)``
    non-negative weights ``mu_jc``. Needs ``A_ref`` too for the ``s_c^T A s_c`` term, so pass the
    square matrix of the reference points as ``A`` when queries = references (the usual case).
    Classes with zero total membership get distance 0 (mask them out; see :class:`MarginMixLoss`).
    """
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"centroid_sq_distances needs the square (N, N) matrix A, got {tuple(A.shape)}")
    if memberships.ndim != 2 or memberships.shape[0] != A.shape[1]:
        raise ValueError(f"memberships must be (N, C) with N = {A.shape[1]}, got {tuple(memberships.shape)}")
    mu = memberships.to(A.dtype)
    S = mu / mu.sum(0, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)  # columns s_c
    AS = A @ S                                                            # (A s_c)_i
    self_term = 0.5 * (S * AS).sum(0, keepdim=True)                       # 1/2 s_c^T A s_c
    return (AS - self_term).clamp_min(0.0)


def _targets(labels: torch.Tensor, num_classes: int, dtype: torch.dtype, name: str = "MarginMixLoss") -> torch.Tensor:
    """Hard ids (``-1`` = ignored row) or soft ``(N, C)`` targets -> ``(N, C)`` float targets (checked)."""
    if labels.ndim == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"{name}: labels as a 1-d tensor must be integer class ids (use labels.long()), "
                            f"got {labels.dtype}; or pass soft targets (N, {num_classes})")
        if labels.numel():
            require(((labels >= -1) & (labels < num_classes)).all(),
                    f"{name}: class ids must lie in [-1, {num_classes - 1}] (-1 = unlabelled, ignored)",
                    lambda: f"got min {int(labels.min())}, max {int(labels.max())}; build the loss with "
                            f"num_classes={max(int(labels.max()) + 1, num_classes)} or fix the labels")
        valid = labels >= 0
        t = torch.nn.functional.one_hot(labels.clamp_min(0), num_classes).to(dtype)
        return t * valid[:, None].to(dtype)
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        if not labels.dtype.is_floating_point:
            raise TypeError(f"{name}: soft targets (N, {num_classes}) must be floating point, got {labels.dtype}")
        if labels.numel():
            require(((labels >= 0) & torch.isfinite(labels)).all(),
                    f"{name}: soft targets must be finite and >= 0 (a distribution per row, all-zero = ignored row)",
                    lambda: f"got min {float(labels.min())}")
        return labels.to(dtype)
    raise ValueError(f"{name}: labels must be (N,) class ids or (N, {num_classes}) soft targets, "
                     f"got {tuple(labels.shape)}")


class MarginMixLoss(nn.Module):
    """Large-margin loss of Margin-Mix (Eq. 3), generalised to soft targets and Eq. 4-5 distances.

    Args:
        num_classes: ``C >= 2``.
        distance: ``"euclidean"`` (the paper's experiments), ``"cosine"`` or ``"rbf"`` (Eq. 4's
            generalised squared distance).
        normalize: use ``e_hat = e / ||e||`` (Eq. 2-3; default).
        normalize_centroids: normalise explicit ``centroids`` as Eq. 2 writes (``c / ||c||``);
            False uses them as given (Eq. 3's form, centroids of the normalised embeddings).
        squared: True (default): squared distances (what Eq. 4 returns and Eq. 11 differentiates);
            False: their square root (Eq. 2's plain distance).
        gamma: RBF bandwidth.
        reduction: ``"mean"`` over rows with a target, ``"sum"`` (the paper's sum), ``"none"``.
        eps: floor of norms and of the distance under a square root.

    ``forward(embeddings, labels, centroids=None, memberships=None)``:

    * ``labels``: ``(N,)`` ids (``-1`` rows ignored) or ``(N, C)`` soft targets (all-zero rows ignored);
    * ``centroids``: ``(C, D)`` explicit centroids; when ``None`` they are the membership-weighted
      means of this batch computed through Eq. 4-5 with ``memberships`` (default: the targets).
      Classes absent from the batch are left out of the push term.
    * ``class_mask``: ``(C,)`` bool, classes whose explicit centroid exists yet (others are left
      out of both terms).
    """

    def __init__(self, num_classes: int, distance: str = "euclidean", *, normalize: bool = True,
                 normalize_centroids: bool = False, squared: bool = True, gamma: float = 1.0,
                 reduction: str = "mean", eps: float = 1e-12):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"MarginMixLoss needs num_classes >= 2 (Eq. 3 divides by C - 1), got {num_classes}")
        if distance not in DISTANCES:
            raise ValueError(f"MarginMixLoss: distance must be one of {DISTANCES}, got {distance!r}")
        check_reduction(reduction, "MarginMixLoss")
        self.num_classes, self.distance, self.normalize = int(num_classes), distance, normalize
        self.normalize_centroids, self.squared, self.gamma = normalize_centroids, squared, float(gamma)
        self.reduction, self.eps = reduction, eps

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, distance={self.distance!r}, normalize={self.normalize}, "
                f"squared={self.squared}, reduction={self.reduction!r}")

    def distance_matrix(self, embeddings: torch.Tensor, centroids: torch.Tensor | None = None,
                        memberships: torch.Tensor | None = None,
                        class_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C)`` squared distances to the centroids and the ``(C,)`` mask of usable classes."""
        dt = working_dtype(embeddings)
        e = embeddings.to(dt)
        if self.normalize:
            e = normalise(e, self.eps)
        if centroids is not None:
            if centroids.ndim != 2 or centroids.shape != (self.num_classes, e.shape[1]):
                raise ValueError(f"MarginMixLoss: centroids must be ({self.num_classes}, {e.shape[1]}), got {tuple(centroids.shape)}")
            c = centroids.to(dt)
            if self.normalize_centroids:
                c = normalise(c, self.eps)
            d2 = pairwise_sq_distances(e, c, self.distance, self.gamma)
            present = (torch.ones(self.num_classes, dtype=torch.bool, device=e.device) if class_mask is None
                       else class_mask.to(device=e.device, dtype=torch.bool))
        else:
            if memberships is None:
                raise ValueError("MarginMixLoss: without explicit centroids pass memberships (or soft/hard labels) for Eq. 4-5")
            A = pairwise_sq_distances(e, None, self.distance, self.gamma)   # a_ii = 0 exactly
            d2 = centroid_sq_distances(A, memberships.to(dt))
            present = memberships.sum(0) > 0
        return d2, present

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor | None = None,
                memberships: torch.Tensor | None = None, class_mask: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        if embeddings.ndim != 2:
            raise ValueError(f"{name}: embeddings must be (batch, dim), got {tuple(embeddings.shape)}; "
                             f"flatten them with embeddings.flatten(1)")
        if labels.ndim == 0 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{name}: labels ({tuple(labels.shape)}) and embeddings ({embeddings.shape[0]} rows) "
                             f"differ in length")
        if memberships is not None and memberships.shape != (embeddings.shape[0], self.num_classes):
            raise ValueError(f"{name}: memberships must be ({embeddings.shape[0]}, {self.num_classes}), "
                             f"got {tuple(memberships.shape)}")
        if class_mask is not None and class_mask.shape != (self.num_classes,):
            raise ValueError(f"{name}: class_mask must be ({self.num_classes},) bool, got {tuple(class_mask.shape)}")
        with torch.autocast(embeddings.device.type, enabled=False):
            dt = working_dtype(embeddings)
            t = _targets(labels, self.num_classes, dt, name)
            if centroids is None and memberships is None:
                memberships = t
            used = t.sum(1) > 0                    # rows that reach the loss: a target, or a batch-centroid weight
            if centroids is None:
                memberships = memberships.to(dt)
                used = used | (memberships.sum(1) > 0)
            e = torch.where(used[:, None], embeddings.to(dt), torch.zeros((), dtype=dt, device=embeddings.device))
            return self.compute(e, t, centroids, memberships, class_mask)

    def compute(self, e: torch.Tensor, t: torch.Tensor, centroids: torch.Tensor | None = None,
                memberships: torch.Tensor | None = None, class_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 3 with soft targets ``t`` ``(N, C)``: ``sum_c t_ic [D_ic - 1/(C'-1) sum_{j != c} D_ij]`` per row
        (``C'`` = the classes with a centroid), over the rows with a target, reduced."""
        d2, present = self.distance_matrix(e, centroids, memberships, class_mask)
        d = d2 if self.squared else d2.clamp_min(self.eps).sqrt()
        pres = present.to(e.dtype)
        t = t * pres  # targets on absent classes carry no centroid
        tsum = t.sum(1)
        own = (t * d).sum(1) / tsum.clamp_min(torch.finfo(e.dtype).tiny)               # sum_c t_ic D_ic
        n_other = (pres.sum() - 1.0).clamp_min(1.0)
        others = ((d * pres).sum(1) - own) / n_other                                  # mean_{j != c} D_ij
        return reduce(own - others, tsum > 0, self.reduction)


def reference_kernel_centroid_sq_distances(e: torch.Tensor, memberships: torch.Tensor, distance: str = "euclidean",
                                           gamma: float = 1.0) -> torch.Tensor:
    """Loop reference of Eq. 4-5 written with the kernel itself, not with ``A``: for each point ``i``
    and class ``c`` (``mu`` normalised to weights ``s_j``)

    ``||phi(e_i) - sum_j s_j phi(e_j)||^2 = k(e_i, e_i) - 2 sum_j s_j k(e_i, e_j) + sum_jl s_j s_l k(e_j, e_l)``

    with ``k`` the Euclidean dot product, the cosine (dot product of the normalised vectors) or the
    Gaussian kernel ``exp(-gamma ||a - b||^2)`` (``distance`` ``"euclidean"``, ``"cosine"``, ``"rbf"``).
    """
    def k(a, b):
        if distance == "rbf":
            return torch.exp(-gamma * (a - b).pow(2).sum())
        if distance == "cosine":
            return a @ b / (a.norm() * b.norm())
        return a @ b

    n, C = memberships.shape
    out = e.new_zeros(n, C)
    for c in range(C):
        m = memberships[:, c].sum()
        if float(m) == 0:
            continue
        s = memberships[:, c] / m
        self_term = sum(s[j] * s[l] * k(e[j], e[l]) for j in range(n) for l in range(n))
        for i in range(n):
            out[i, c] = k(e[i], e[i]) - 2 * sum(s[j] * k(e[i], e[j]) for j in range(n)) + self_term
    return out


def reference_margin_mix(e: torch.Tensor, t: torch.Tensor, centroids: torch.Tensor, squared: bool = True,
                         normalize_centroids: bool = False, present: list[int] | None = None) -> torch.Tensor:
    """Loop reference of :class:`MarginMixLoss` with explicit centroids (Eq. 3, soft targets, mean over
    the rows with a target), term by term; ``present``: the classes with a centroid (default all)."""
    n, C = t.shape
    classes = list(range(C)) if present is None else list(present)
    total, count = e.new_zeros(()), 0
    for i in range(n):
        weight = sum(float(t[i, k]) for k in classes)
        if weight == 0:
            continue
        ei = e[i] / e[i].norm()

        def dist(k):
            ck = centroids[k] / centroids[k].norm() if normalize_centroids else centroids[k]
            d2 = (ei - ck).pow(2).sum()
            return d2 if squared else d2.sqrt()

        li = e.new_zeros(())
        for k in classes:
            others = sum(dist(j) for j in classes if j != k)
            li = li + t[i, k] / weight * (dist(k) - others / max(len(classes) - 1, 1))
        total = total + li
        count += 1
    return total / max(count, 1)


def eq11_gradient(embeddings: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                  exact_jacobian: bool = True) -> torch.Tensor:
    """Eq. 11: gradient of the per-row squared-distance margin term w.r.t. the raw embedding.

    ``g = 2(e_hat - c_hat^y) - 2/(C-1) sum_{j != y} (e_hat - c_hat^j)``, then through the
    normalisation's Jacobian. ``exact_jacobian=True`` uses ``(I - e_hat e_hat^T) / ||e||``;
    ``False`` uses the paper's ``(1 - e_hat_d^2) / ||e||`` (only the diagonal of that Jacobian).
    Rows are independent, so this is the gradient of ``MarginMixLoss(..., normalize_centroids=True,
    reduction="sum")`` with hard labels.
    """
    C = centroids.shape[0]
    norm = embeddings.norm(dim=1, keepdim=True)
    e_hat = embeddings / norm
    c_hat = centroids / centroids.norm(dim=1, keepdim=True)
    diff = e_hat[:, None, :] - c_hat[None, :, :]                     # (N, C, D)
    own = diff[torch.arange(len(labels)), labels]                     # (N, D)
    g_hat = 2 * own - 2.0 / (C - 1) * (diff.sum(1) - own)
    if exact_jacobian:
        return (g_hat - (g_hat * e_hat).sum(1, keepdim=True) * e_hat) / norm
    return g_hat * (1 - e_hat.pow(2)) / norm
