"""Contrastive critic loss of the contrastive adversarial framework, CAF (Kim & Song, AAAI 2021).

Equations of the paper implemented here (``z`` are the critic's outputs ``(f_c o f_e)(x)``):

* Eq. 4, the contrastive critic function
  ``f_cont(z_i, z_j) = -xi_ij * max(0, xi_ij * (D^2(z_i, z_j) - alpha))`` with ``xi_ij = +1`` for a
  pair from the same group and ``-1`` otherwise; the margin is used only for the cross-group pairs.
* Eq. 6-7, the critic loss (the chi-squared VDM lower bound of Eq. 3 with ``f = f_cont``), minimised
  by the critic, estimated by Monte Carlo over **all** pairs of the mini-batch::

      L_c = 1/|P| sum_{i<j, both strong} D^2(z_i, z_j)
          + 1/(2|P+Q|) sum_{i strong, j weak} max(0, alpha_hat - D^2(z_i, z_j))
          [+ chi2_weight * 1/4 * mean over those pairs of f_cont^2   (the Eq. 3 regulariser, off by default)]

  ``|P|`` = number of strong-strong pairs, ``|P+Q|`` = number of strong-weak pairs.
* Eq. 5 and 8, the adaptive margin ``alpha_hat = MI(g(Z_s), g(Z_w)) + Delta(N, K)`` with
  ``MI = -1/2 log(1 - eta^2)`` (Gelfand-Yaglom, jointly Gaussian) and
  ``Delta(N, K) = log((N / c)^(1 / (2K))) = log(N / c) / (2K)``, ``c = 0.05`` (the reading under
  which Eq. 8's "sum of logs = log of the product" holds).

Choices the paper leaves open (documented, each an option):

* ``g`` is an element-wise Gaussian kernel ``exp(-z^2 / (2 sigma^2))`` (``sigma`` = median |z| of the
  batch when ``bandwidth=None``); ``eta`` is the Pearson correlation, across the ``d`` latent
  dimensions, of the group means of ``g(Z_s)`` and ``g(Z_w)``. Identical groups give ``eta = 1`` (large
  MI), groups the critic has told apart give ``eta`` near 0: the paper's "the critic lowers the
  dependence of Z_s and Z_w". ``eta^2`` is clipped to ``1 - 1e-6`` and MI to ``mi_max`` (2.5, the
  official code's clamp).
* ``K`` (the number of samples inside the margin) is the self-consistent count: sort the cross-group
  squared distances ``d_(1) <= d_(2) <= ...``; ``K = #{k : d_(k) < MI + Delta(N, k)}`` (a prefix,
  since ``d_(k)`` rises and ``Delta(N, k)`` falls with ``k``), at least 1. As the critic pushes the
  groups apart fewer pairs sit in the margin, ``K`` falls and ``Delta`` grows, as the paper says.
* ``margin="constant"``: ``alpha = MI + kappa`` (Table 4, ``kappa = 0.2``);
  ``margin="linear"``: ``alpha = MI + 0.1 + epoch * 5e-3`` (Table 4, ``kappa'``).
* ``pairs="code"``: the official code's fixed pairs ``(s_i, s_{-i-1})`` positive and
  ``(s_i, w_{-i-1})`` negative after truncating both groups to equal size.
* The margin is a detached (no-gradient) quantity by default, like a hyperparameter set per batch.
* ``positive_weight`` (1 = Eq. 7 as printed) scales the same-group pull. Near a collapsed critic
  (all ``z`` equal) Eq. 7 is, for a linear critic ``z = W f``, ``tr(W (w S_ss - S_sw / 2) W^T)`` with
  ``S_ss``/``S_sw`` the second moments of strong-strong / strong-weak feature differences: the
  collapse is stable unless some direction has ``S_sw / S_ss > 2 w`` (the notebook measures this).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fer_nb.losses.common import check_indicator, working_dtype
from fer_nb.losses.distances import pairwise_sq_distances

__all__ = ["CAFCriticLoss", "MARGINS", "PAIRS", "collapse_eigenvalue", "confidence_delta", "gaussian_kernel_features",
           "gaussian_mi", "margin_count", "reference_caf_critic", "reference_gaussian_mi"]

MARGINS = ("delta", "constant", "linear", "mi_only")
PAIRS = ("all", "code")


def gaussian_kernel_features(z: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Element-wise Gaussian kernel ``g(z) = exp(-z^2 / (2 sigma^2))``.

    ``bandwidth=None``: ``sigma`` = the median of ``|z|`` over all entries (``torch.median``: the
    lower of the two middle values for an even count), floored at ``1e-3``.
    """
    if bandwidth is None:
        sigma = z.detach().abs().median().clamp_min(1e-3)
    else:
        sigma = torch.as_tensor(float(bandwidth), dtype=z.dtype, device=z.device)
    return torch.exp(-z.pow(2) / (2 * sigma**2))


def gaussian_mi(z_s: torch.Tensor, z_w: torch.Tensor, bandwidth: float | None = None,
                mi_max: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MI, eta)``: MI of Gaussian-kernel features via their correlation, ``-1/2 log(1 - eta^2)``.

    ``eta`` is the Pearson correlation across latent dimensions of the group means of
    ``g(Z_s)`` and ``g(Z_w)``; 0 when a group is empty or either profile is constant.
    """
    if z_s.shape[0] == 0 or z_w.shape[0] == 0 or z_s.shape[1] < 2:
        zero = z_s.new_zeros(())
        return zero, zero
    g = gaussian_kernel_features(torch.cat([z_s, z_w]), bandwidth)
    ms, mw = g[: z_s.shape[0]].mean(0), g[z_s.shape[0]:].mean(0)
    a, b = ms - ms.mean(), mw - mw.mean()
    denom = (a.pow(2).sum() * b.pow(2).sum()).sqrt()
    eta = torch.where(denom > 1e-12, (a * b).sum() / denom.clamp_min(1e-12), torch.zeros_like(denom))
    eta2 = eta.pow(2).clamp(max=1 - 1e-6)
    mi = (-0.5 * torch.log1p(-eta2)).clamp(0.0, mi_max)
    return mi, eta


def confidence_delta(n: int | torch.Tensor, k: int | torch.Tensor, c: float = 0.05) -> torch.Tensor:
    """Eq. 8's confidence interval ``Delta(N, K) = log(N / c) / (2 K)``."""
    n = torch.as_tensor(n, dtype=torch.float64)
    k = torch.as_tensor(k, dtype=torch.float64)
    if bool((k < 1).any()) or bool((n < 1).any()):
        raise ValueError(f"Delta(N, K) needs N >= 1 and K >= 1, got N={n}, K={k}")
    return torch.log(n / c) / (2 * k)


def margin_count(cross_d2: torch.Tensor, base: torch.Tensor, n: int, c: float = 0.05,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Self-consistent ``K``: the number of sorted cross distances with ``d_(k) < base + Delta(N, k)``.

    ``d_(k) < t_k`` holds exactly when at least ``k`` distances lie below ``t_k``, and a distance
    ``d`` lies below ``t_k = base + L / (2k)`` (``L = log(N / c)``) for every ``k <= k_max(d)`` with
    ``k_max = ceil(L / (2 (d - base))) - 1`` (all ``k`` when ``d <= base``). So a histogram of
    ``k_max`` and a reversed cumulative sum give the counts ``c(k)`` for every ``k`` at once, and
    ``K = #{k : c(k) >= k}``: ``O(M)`` work for ``M`` distances, no sort, no host synchronisation.
    ``mask`` (the shape of ``cross_d2``) selects the cross distances among all entries, so the caller
    need not gather them (a boolean-mask gather has a data-dependent size: a host sync on a GPU).
    """
    d = cross_d2.detach().flatten().double()
    m_all = d.numel()
    if m_all == 0:
        return torch.ones((), dtype=torch.long, device=cross_d2.device)
    keep = torch.ones_like(d, dtype=torch.bool) if mask is None else mask.flatten()
    m = keep.sum().to(d.dtype)                                   # how many distances are selected
    log_term = math.log(max(n, 1) / c)
    excess = d - base.detach().double()
    k_max = torch.where(excess > 0, torch.ceil(log_term / (2 * excess.clamp_min(1e-300))) - 1, m)
    k_max = torch.where(keep, torch.minimum(k_max.clamp_min(0), m), torch.zeros_like(k_max)).long()
    hist = torch.zeros(m_all + 1, dtype=torch.long, device=d.device).scatter_add_(0, k_max, torch.ones_like(k_max))
    below = hist.flip(0).cumsum(0).flip(0)[1:]          # below[k - 1] = #{d : k_max(d) >= k}, k = 1..M
    ks = torch.arange(1, m_all + 1, device=d.device)
    return (below >= ks).long().sum().clamp_min(1)


class CAFCriticLoss(nn.Module):
    """Critic loss ``L_c`` of CAF (Eq. 4-8), minimised by the critic; see the module docstring.

    ``forward(embeddings, labels, epoch=0)``: ``embeddings`` ``(B, d)`` critic outputs ``z``,
    ``labels`` ``(B,)`` group indicator (1/True = strong emotion, P; 0/False = weak, Q).
    Returns a scalar (``reduction="mean"`` of Eq. 7); ``self.last`` holds the margin's parts
    (``mi``, ``eta``, ``delta``, ``K``, ``alpha``) of the last call, as floats-in-tensors.
    """

    def __init__(self, margin: str = "delta", kappa: float = 0.2, kappa0: float = 0.1,
                 kappa_slope: float = 5e-3, c: float = 0.05, bandwidth: float | None = None,
                 mi_max: float = 2.5, pairs: str = "all", chi2_weight: float = 0.0,
                 detach_margin: bool = True, positive_weight: float = 1.0):
        super().__init__()
        if margin not in MARGINS:
            raise ValueError(f"CAFCriticLoss: unknown margin {margin!r}; use one of {MARGINS}")
        if pairs not in PAIRS:
            raise ValueError(f"CAFCriticLoss: unknown pairs {pairs!r}; use one of {PAIRS}")
        if c <= 0:
            raise ValueError(f"CAFCriticLoss: the confidence parameter c must be > 0, got {c}")
        if not positive_weight > 0:
            raise ValueError(f"CAFCriticLoss: positive_weight must be > 0 (1 = Eq. 7 as printed), got {positive_weight}")
        self.margin, self.kappa, self.kappa0, self.kappa_slope = margin, kappa, kappa0, kappa_slope
        self.c, self.bandwidth, self.mi_max, self.pairs = c, bandwidth, mi_max, pairs
        self.chi2_weight, self.detach_margin = chi2_weight, detach_margin
        self.positive_weight = float(positive_weight)
        self.last: dict[str, torch.Tensor] = {}

    def adaptive_margin(self, z_s: torch.Tensor, z_w: torch.Tensor, cross_d2: torch.Tensor,
                        n: int, epoch: int = 0, cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``alpha_hat`` of Eq. 5 / 8 (or its constant / linear ablations); ``cross_d2`` the cross-group
        squared distances, or all of them with ``cross_mask`` selecting the cross pairs."""
        zs, zw = (z_s.detach(), z_w.detach()) if self.detach_margin else (z_s, z_w)
        mi, eta = gaussian_mi(zs, zw, self.bandwidth, self.mi_max)
        if self.margin == "delta":
            k = margin_count(cross_d2, mi, n, self.c, mask=cross_mask)
            extra = (math.log(max(n, 1) / self.c) / (2 * k.double())).to(mi.dtype)
        elif self.margin == "constant":
            k, extra = torch.zeros((), dtype=torch.long), mi.new_tensor(self.kappa)
        elif self.margin == "linear":
            k, extra = torch.zeros((), dtype=torch.long), mi.new_tensor(self.kappa0 + epoch * self.kappa_slope)
        else:
            k, extra = torch.zeros((), dtype=torch.long), mi.new_zeros(())
        alpha = mi + extra
        self.last = {"mi": mi.detach(), "eta": eta.detach(), "delta": extra.detach(),
                     "K": k.detach(), "alpha": alpha.detach()}
        return alpha

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError(f"CAFCriticLoss: embeddings must be (B, d) critic outputs, got shape "
                             f"{tuple(embeddings.shape)}")
        strong = check_indicator(labels, embeddings.shape[0], "CAFCriticLoss").to(embeddings.device)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(embeddings.to(working_dtype(embeddings)), strong, epoch)

    def compute(self, z: torch.Tensor, strong: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """Eq. 7 (+ Eq. 3's regulariser): mean strong-strong ``D^2`` + half the mean cross hinge
        ``max(0, alpha_hat - D^2)``, ``alpha_hat`` from Eq. 5 / 8; ``strong`` is the bool P/Q mask."""
        n = z.shape[0]
        d2 = pairwise_sq_distances(z)  # (B, B) squared Euclidean distances, one GEMM
        if self.pairs == "all":
            upper = torch.ones(n, n, dtype=torch.bool, device=z.device).triu(1)
            pos_mask = upper & strong[:, None] & strong[None, :]
            neg_mask = strong[:, None] & ~strong[None, :]
        else:  # the official code's fixed pairs after truncation to equal group sizes
            pos_mask, neg_mask = self._code_pairs(strong)
        alpha = self.adaptive_margin(z[strong], z[~strong], d2, n, epoch, cross_mask=neg_mask)
        n_pos = pos_mask.sum().clamp_min(1).to(z.dtype)
        n_neg = neg_mask.sum().clamp_min(1).to(z.dtype)
        pos_term = (d2 * pos_mask).sum() / n_pos
        hinge = torch.relu(alpha - d2) * neg_mask
        neg_term = 0.5 * hinge.sum() / n_neg
        loss = self.positive_weight * pos_term + neg_term
        if self.chi2_weight:
            # Eq. 3's third term on f_cont: f = -D^2 on same-group pairs, +hinge on cross pairs
            f2 = (d2.pow(2) * pos_mask).sum() + hinge.pow(2).sum()
            loss = loss + self.chi2_weight * 0.25 * f2 / (n_pos + n_neg)
        return loss

    @staticmethod
    def _code_pairs(strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx_s = torch.nonzero(strong).flatten()
        idx_w = torch.nonzero(~strong).flatten()
        m = min(idx_s.numel(), idx_w.numel())
        n = strong.numel()
        pos = torch.zeros(n, n, dtype=torch.bool, device=strong.device)
        neg = torch.zeros_like(pos)
        if m == 0:
            return pos, neg
        s, w = idx_s[:m], idx_w[:m]
        ar = torch.arange(m, device=strong.device)
        pos[s, s[m - 1 - ar]] = True
        pos[s, s] = False  # (s_i, s_i) in the middle of an odd group has zero distance: dropped
        neg[s, w[m - 1 - ar]] = True
        return pos, neg


def _pair_moments(f: torch.Tensor, strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S_ss, S_sw)``: second moments of strong-strong and strong-weak feature differences."""
    if f.ndim != 2 or strong.shape != (f.shape[0],):
        raise ValueError(f"need features (N, D) and a (N,) strong mask, got {tuple(f.shape)} and {tuple(strong.shape)}")
    if int(strong.sum()) < 2 or int((~strong).sum()) < 2:
        raise ValueError("collapse_eigenvalue needs at least two strong and two weak samples")
    fs, fw = f[strong], f[~strong]
    d = f.shape[1]
    cov_s, cov_w = torch.cov(fs.T).reshape(d, d), torch.cov(fw.T).reshape(d, d)
    dmu = (fs.mean(0) - fw.mean(0))[:, None]
    return 2 * cov_s, cov_s + cov_w + dmu @ dmu.T


def collapse_eigenvalue(features: torch.Tensor, strong: torch.Tensor, ridge: float = 1e-3,
                        validate: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Largest generalised eigenvalue of ``(S_sw, S_ss)`` on ``features`` ``(N, D)``: the collapse test.

    ``S_ss = 2 Cov_s`` is the second moment of strong-strong feature differences and
    ``S_sw = Cov_s + Cov_w + (mu_s - mu_w)(mu_s - mu_w)^T`` that of strong-weak differences. For a
    linear critic ``z = W f`` with every cross pair inside the margin, Eq. 7 equals
    ``tr(W (w S_ss - S_sw / 2) W^T) + alpha / 2`` (``w`` = ``positive_weight``), so the collapsed
    critic ``W = 0`` is a stable minimum exactly when this eigenvalue is ``<= 2 w``. ``ridge`` (times
    the mean variance) regularises ``S_ss`` when ``D`` approaches the number of samples.

    With many dimensions and few samples the in-sample eigenvalue is biased upwards (the top
    direction fits noise). ``validate=(features2, strong2)``: take the top direction from
    ``features`` and return its ratio ``u^T S_sw u / u^T S_ss u`` on the held-out ``features2``.
    """
    f = features.detach().double()
    s_ss, s_sw = _pair_moments(f, strong.to(f.device).bool())
    eye = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
    s_ss = s_ss + ridge * float(torch.diagonal(s_ss).mean().clamp_min(1e-12)) * eye
    chol = torch.linalg.cholesky(s_ss)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)
    values, vectors = torch.linalg.eigh(inv @ s_sw @ inv.T)
    if validate is None:
        return values[-1]
    u = inv.T @ vectors[:, -1]                       # top generalised eigenvector in feature space
    f2 = validate[0].detach().double().to(f.device)
    v_ss, v_sw = _pair_moments(f2, validate[1].to(f.device).bool())
    return (u @ v_sw @ u) / (u @ v_ss @ u).clamp_min(1e-30)


def reference_gaussian_mi(z: torch.Tensor, strong: torch.Tensor, sigma: float | None = None,
                          mi_max: float = 2.5) -> tuple[float, float]:
    """Loop reference of :func:`gaussian_mi` in plain Python floats: ``(MI, eta)``.

    ``sigma=None``: the lower median of ``|z|`` (sorted, element ``(n - 1) // 2``), as the loss's default.
    """
    rows = z.tolist()
    flags = [bool(v) for v in strong.tolist()]
    if sigma is None:
        values = sorted(abs(v) for row in rows for v in row)
        sigma = max(values[(len(values) - 1) // 2], 1e-3)
    zs = [r for r, f in zip(rows, flags) if f]
    zw = [r for r, f in zip(rows, flags) if not f]
    d = len(rows[0])

    def g(v):
        return math.exp(-v * v / (2 * sigma * sigma))

    ms = [sum(g(r[k]) for r in zs) / len(zs) for k in range(d)]
    mw = [sum(g(r[k]) for r in zw) / len(zw) for k in range(d)]
    a_bar, b_bar = sum(ms) / d, sum(mw) / d
    cov = sum((ms[k] - a_bar) * (mw[k] - b_bar) for k in range(d))
    den = math.sqrt(sum((v - a_bar) ** 2 for v in ms) * sum((v - b_bar) ** 2 for v in mw))
    eta = cov / den if den > 1e-12 else 0.0
    return min(mi_max, max(0.0, -0.5 * math.log1p(-min(eta * eta, 1 - 1e-6)))), eta


def reference_caf_critic(z: torch.Tensor, strong: torch.Tensor, margin: str = "delta", sigma: float | None = None,
                         kappa: float = 0.2, epoch: int = 0, c: float = 0.05,
                         chi2_weight: float = 0.0) -> tuple[torch.Tensor, float]:
    """Loop reference of :class:`CAFCriticLoss` with ``pairs="all"``: ``(loss, alpha)``, one strong anchor at a time.

    ``K`` by walking the sorted strong-weak distances while ``d_(k) < MI + Delta(N, k)`` (Eq. 8).
    """
    n = len(z)
    flags = [bool(v) for v in strong.tolist()]
    mi, _ = reference_gaussian_mi(z, strong, sigma)
    pos, cross = [z.new_zeros(0)], [z.new_zeros(0)]
    weak = torch.tensor([not f for f in flags], dtype=torch.bool, device=z.device)
    for i in range(n):                               # one strong anchor at a time
        if not flags[i]:
            continue
        d2 = (z - z[i]).pow(2).sum(1)
        later = torch.tensor([flags[j] and j > i for j in range(n)], dtype=torch.bool, device=z.device)
        pos.append(d2[later])
        cross.append(d2[weak])
    pos, cross = torch.cat(pos), torch.cat(cross)
    if margin == "delta":
        k = 0
        for value in sorted(cross.tolist()):
            if value < mi + math.log(n / c) / (2 * (k + 1)):
                k += 1
            else:
                break
        alpha = mi + math.log(n / c) / (2 * max(k, 1))
    elif margin == "constant":
        alpha = mi + kappa
    elif margin == "linear":
        alpha = mi + 0.1 + epoch * 5e-3
    else:
        alpha = mi
    hinge = torch.relu(alpha - cross)
    loss = pos.sum() / max(1, len(pos)) + 0.5 * hinge.sum() / max(1, len(cross))
    if chi2_weight:
        f2 = pos.pow(2).sum() + hinge.pow(2).sum()
        loss = loss + chi2_weight * 0.25 * f2 / (max(1, len(pos)) + max(1, len(cross)))
    return loss, alpha
