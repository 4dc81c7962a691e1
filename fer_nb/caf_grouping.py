"""Strong / weak emotion grouping of CAF (Kim & Song 2021, Algorithm 1 line 3; ablation "Grouping").

The paper: Otsu thresholds ``delta_a`` and ``delta_v`` on arousal and valence, the decision
threshold ``delta_r = sqrt(delta_a^2 + delta_v^2)``; weak ``Q = {i : sqrt(a_i^2 + v_i^2) < delta_r}``,
strong ``P`` the rest. Valence and arousal are signed, and ``delta_r`` is compared with a radius,
so the Otsu thresholds are taken on the magnitudes ``|a|`` and ``|v|`` (``signed=True`` uses the raw
values). Also here:

* :func:`otsu_threshold` - a real Otsu (1979): the histogram split maximising the between-class
  variance, vectorised over all candidate splits with cumulative sums;
* ``method="otsu_radius"`` - Otsu directly on the radius;
* ``method="kmeans"`` with ``k`` in 2, 3, 5 - the paper's comparison: k cluster centres per axis
  (1-D k-means), averaged to a threshold;
* ``method="code"`` - the official code's rule (:func:`code_threshold`): a "cumulative" fraction
  per axis (in effect ``sum(d[:m+1]) / sum(d)`` with ``m = (argmin + argmax) // 2`` in batch order,
  because its loop always returns on the first test), compared as ``a^2 + v^2 > th + 0.25``; if a
  group is empty, strong ``a^2 + v^2 > 0.65``, weak ``< 0.3``; both groups truncated to equal size.
"""
from __future__ import annotations

import torch

METHODS = ("otsu", "otsu_radius", "kmeans", "code")


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of 1-D ``values``: the bin edge maximising ``w0 w1 (mu0 - mu1)^2``.

    The histogram spans ``[min, max]`` with ``torch.histc``'s bins (value ``x`` in bin
    ``floor((x - min) * bins / (max - min))``, the maximum in the last); a constant input returns that
    constant. Everything stays on the values' device: nothing is read on the host, so the CAF step does
    not wait for the GPU here (it runs twice per mini-batch).
    """
    x = torch.as_tensor(values).detach().double().flatten()
    if x.numel() == 0:
        raise ValueError("otsu_threshold needs at least one value")
    lo, hi = x.min(), x.max()
    constant = (hi - lo) <= 1e-12
    span = torch.where(constant, torch.ones_like(lo), hi - lo)   # any width will do: a constant returns lo
    idx = ((x - lo) * bins / span).long().clamp_(0, bins - 1)
    hist = torch.zeros(bins, dtype=torch.float64, device=x.device).scatter_add_(0, idx, torch.ones_like(x))
    centres = lo + (torch.arange(bins, dtype=torch.float64, device=x.device) + 0.5) * span / bins
    p = hist / hist.sum()
    w0 = torch.cumsum(p, 0)[:-1]            # class 0 = bins [0..t], t = 0..bins-2
    m0 = torch.cumsum(p * centres, 0)[:-1]
    mt = (p * centres).sum()
    w1 = 1 - w0
    valid = (w0 > 0) & (w1 > 0)
    between = torch.where(valid, (mt * w0 - m0).pow(2) / (w0 * w1).clamp_min(1e-300), torch.zeros_like(w0))
    t = torch.argmax(between)
    return torch.where(constant, lo, lo + (t + 1) * span / bins).float()  # upper edge of bin t


def kmeans_threshold(values: torch.Tensor, k: int = 2, iters: int = 50) -> torch.Tensor:
    """Mean of the ``k`` centres of 1-D k-means (Lloyd, quantile initialisation) of ``values``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = torch.as_tensor(values).detach().double().flatten()
    q = (torch.arange(k, dtype=torch.float64, device=x.device) + 0.5) / k
    centres = torch.quantile(x, q)
    for _ in range(iters):
        assign = (x[:, None] - centres[None, :]).abs().argmin(1)
        onehot = torch.nn.functional.one_hot(assign, k).double()
        counts = onehot.sum(0)
        new = torch.where(counts > 0, (onehot * x[:, None]).sum(0) / counts.clamp_min(1), centres)
        if torch.allclose(new, centres):
            break
        centres = new
    return centres.mean().float()


def code_threshold(d: torch.Tensor) -> torch.Tensor:
    """The official code's ``cumulative_thresholding(d, 0.75, 0.95)`` as it behaves.

    Its test ``w_l >= 0.75 w or w_l < 0.95 w`` is always true, so it returns at once:
    ``sum(d[0 : m + 1]) / sum(d)`` with ``m = (argmin(d) + argmax(d)) // 2`` (batch order).
    """
    d = torch.as_tensor(d).detach().double().flatten()
    m = (int(torch.argmin(d)) + int(torch.argmax(d))) // 2
    total = d.sum()
    if abs(float(total)) < 1e-12:
        return torch.zeros((), dtype=torch.float32, device=d.device)
    return (d[: m + 1].sum() / total).float()


def decision_threshold(va: torch.Tensor, method: str = "otsu", k: int = 2, signed: bool = False,
                       bins: int = 256) -> torch.Tensor:
    """``delta_r`` of Algorithm 1 for ``va`` ``(N, 2)`` = (valence, arousal)."""
    va = torch.as_tensor(va).detach().float()
    if va.ndim != 2 or va.shape[1] != 2:
        raise ValueError(f"va must be (N, 2) (valence, arousal), got {tuple(va.shape)}")
    if method not in METHODS:
        raise ValueError(f"unknown grouping method {method!r}; use one of {METHODS}")
    v, a = (va[:, 0], va[:, 1]) if signed else (va[:, 0].abs(), va[:, 1].abs())
    if method == "otsu":
        return torch.sqrt(otsu_threshold(a, bins) ** 2 + otsu_threshold(v, bins) ** 2)
    if method == "otsu_radius":
        return otsu_threshold(va.norm(dim=1), bins)
    if method == "kmeans":
        return torch.sqrt(kmeans_threshold(a, k) ** 2 + kmeans_threshold(v, k) ** 2)
    # "code": threshold on the squared radius, see code_threshold
    return torch.sqrt(code_threshold(va[:, 0]) ** 2 + code_threshold(va[:, 1]) ** 2)


def group(va: torch.Tensor, method: str = "otsu", k: int = 2, threshold: torch.Tensor | float | None = None,
          signed: bool = False) -> torch.Tensor:
    """Boolean ``(N,)`` strong mask (True = strong emotion, P; False = weak, Q).

    ``threshold``: a precomputed ``delta_r`` (e.g. from the whole training set); otherwise it is
    computed from ``va`` itself (per mini-batch, as Algorithm 1 does inside its loop).
    For ``method="code"`` samples outside both groups (after equal-size truncation) are dropped:
    use :func:`group_code` to get both masks.
    """
    va = torch.as_tensor(va)
    if method == "code":
        strong, _ = group_code(va)
        return strong
    delta_r = decision_threshold(va, method, k, signed) if threshold is None else torch.as_tensor(threshold)
    r = va.float().norm(dim=1)
    return r >= delta_r.to(r.device)


def group_code(va: torch.Tensor, offset: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """The official code's grouping: ``(strong_mask, weak_mask)``, disjoint, equal counts (vectorised)."""
    va = torch.as_tensor(va).float()
    r2 = va.pow(2).sum(1)
    th = decision_threshold(va, "code").to(r2.device)
    strong, weak = r2 > th + offset, r2 < th + offset
    if not bool(strong.any()) or not bool(weak.any()):
        strong, weak = r2 > 0.65, r2 < 0.3
    if not bool(strong.any()):
        strong = weak.clone()
    m = int(min(strong.sum(), weak.sum()))
    keep_s = strong & (torch.cumsum(strong.long(), 0) <= m)
    keep_w = weak & (torch.cumsum(weak.long(), 0) <= m)
    return keep_s, keep_w
