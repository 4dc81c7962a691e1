"""Margin-Mix (Florea et al.), Algorithm 1, as a training step.

Per step (line numbers of Algorithm 1):

1. (2-3) embed the augmented labelled batch; update the class centroids by Eq. 1 with a centroid
   learning rate (0.5 in the paper): ``c <- c + lr (mean_{i in c} e_hat_i - c)``; a class seen for
   the first time starts at its batch mean. Centroids live in the space of the L2-normalised
   embeddings ``e_hat`` (Eq. 3), detached (no gradient reaches them);
2. (4-9) augment the unlabelled batch ``K`` (= N_aug) times and self-label every view by the fuzzy
   c-means memberships of Eq. 6, ``y_c = 1 / sum_j (||e - c^c|| / ||e - c^j||)^2`` (``hard``: the
   nearest centroid, Table 5's "with nearest centroid"), sum them over the views (Eq. 7,
   renormalised) and sharpen with ``T`` (Eq. 8);
3. (11-14) MixUp (Eq. 9) of labelled and self-labelled data against the concatenation of both,
   ``lambda' = max(lambda, 1 - lambda)``;
4. (15-16) total loss Eq. 10, ``L = L_S + lambda_M (L_M1 + lambda_u L_M2)``: ``L_S`` the (soft)
   cross entropy on the mixed labelled part, ``L_M1`` / ``L_M2`` the large-margin loss
   (:class:`~fer_nb.losses.margin_mix.MarginMixLoss`, squared Euclidean, soft targets) of the
   mixed labelled / unlabelled embeddings against the centroids; ``lambda_u`` ramps up linearly
   (as MixMatch's weight does). Weight decay: decoupled, through the weight EMA (MixMatch's code,
   which Margin-Mix was developed from).

``pred_u_weight`` (default 0, i.e. the paper's Eq. 10 literally) optionally adds MixMatch's
unlabelled prediction term ``mean ||softmax(z_u) - y_u'||^2`` with the self-labels as targets; the
paper's text does not say whether its code kept it.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.losses.large_margin import normalise
from fer_nb.losses.margin_mix import MarginMixLoss, pairwise_sq_distances
from fer_nb.ssl.mixmatch import SSLMethod, linear_rampup
from fer_nb.ssl.mixup import guess_labels, mixup, sample_lambda, sharpen, soft_cross_entropy


def fuzzy_cmeans_labels(d2: torch.Tensor, class_mask: torch.Tensor | None = None, m: float = 2.0,
                        eps: float = 1e-12) -> torch.Tensor:
    """Eq. 6: fuzzy c-means memberships from squared distances ``d2`` ``(N, C)`` to the centroids.

    ``y_ic = 1 / sum_j (d_ic / d_ij)^(2/(m-1))`` with ``d = sqrt(d2)``; the paper's exponent 2 is
    the usual fuzzifier ``m = 2``. Computed as ``softmax(-log(d2) / (m-1))`` (stable when a point
    sits on a centroid). Classes with ``class_mask == False`` (no centroid yet) get 0.
    """
    if m <= 1:
        raise ValueError(f"fuzzifier m must be > 1, got {m}")
    logits = -torch.log(d2.clamp_min(eps)) / (m - 1.0)
    if class_mask is not None:
        logits = logits.masked_fill(~class_mask.bool(), float("-inf"))
    return torch.softmax(logits, dim=1)


def nearest_centroid_labels(d2: torch.Tensor, class_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hard self-labels: one-hot of the nearest (existing) centroid (Table 5, "with nearest centroid")."""
    if class_mask is not None:
        d2 = d2.masked_fill(~class_mask.bool(), float("inf"))
    return F.one_hot(d2.argmin(1), d2.shape[1]).to(d2.dtype)


class Centroids(nn.Module):
    """Class centroids of Algorithm 1 (buffers ``centers (C, D)`` and ``seen (C,)``), Eq. 1 / Eq. 5.

    ``update(e_hat, memberships)``: batch centroid ``sum_i mu_ic e_i / sum_i mu_ic`` (Eq. 1 with
    soft or hard memberships ``mu``); ``c <- c + lr (batch - c)`` for classes in the batch, and a
    class seen for the first time is set to its batch centroid. Vectorised, no host sync.
    """

    def __init__(self, num_classes: int, dim: int, lr: float = 0.5):
        super().__init__()
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"centroid learning rate must be in (0, 1], got {lr}")
        self.lr = float(lr)
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, e: torch.Tensor, memberships: torch.Tensor) -> None:
        mu = memberships.to(self.centers.dtype)
        mass = mu.sum(0)                                             # (C,)
        batch = (mu.t() @ e.to(self.centers.dtype)) / mass.clamp_min(1e-12)[:, None]
        present = mass > 0
        rate = torch.where(self.seen, torch.full_like(mass, self.lr), torch.ones_like(mass)) * present
        self.centers.add_(rate[:, None] * (batch - self.centers))
        self.seen |= present


class MarginMix(SSLMethod):
    """Margin-Mix training step (Algorithm 1, Eq. 6-10); see the module docstring.

    Args (beyond :class:`~fer_nb.ssl.mixmatch.SSLMethod`): ``T`` sharpening (0.25 on FER data; 0 =
    none), ``K`` = N_aug (2), ``alpha`` MixUp Beta parameter (0.75; 0 = no MixUp), ``lambda_M`` (1),
    ``lambda_u`` (0.4), ``centroid_lr`` (0.5), ``self_label`` ``"soft"`` (Eq. 6) or ``"hard"``,
    ``rampup`` (fraction of training for the ``lambda_u`` ramp), ``pred_u_weight`` (0).
    """

    name = "margin_mix"

    def __init__(self, model: nn.Module, num_classes: int, *, T: float = 0.25, K: int = 2, alpha: float = 0.75,
                 lambda_M: float = 1.0, lambda_u: float = 0.4, centroid_lr: float = 0.5, self_label: str = "soft",
                 rampup: float = 0.016, pred_u_weight: float = 0.0, **kw):
        super().__init__(model, num_classes, **kw)
        if self_label not in ("soft", "hard"):
            raise ValueError(f"self_label must be 'soft' (Eq. 6) or 'hard' (nearest centroid), got {self_label!r}")
        if K < 1:
            raise ValueError(f"K (N_aug) must be >= 1, got {K}")
        dim = getattr(model, "embedding_dim", None)
        if dim is None:
            raise ValueError("MarginMix needs a model with an `embedding_dim` attribute and forward(x, with_embedding=True)")
        self.T, self.K, self.alpha, self.lambda_M, self.lambda_u = T, K, alpha, lambda_M, lambda_u
        self.self_label, self.rampup, self.pred_u_weight = self_label, rampup, pred_u_weight
        self.centroids = Centroids(num_classes, dim, centroid_lr).to(next(model.parameters()).device)
        self.margin = MarginMixLoss(num_classes, "euclidean", normalize=True, squared=True, reduction="mean")

    def extra_state(self) -> dict:
        return {**super().extra_state(), "centroids": self.centroids}

    @torch.no_grad()
    def self_labels(self, e_u: torch.Tensor) -> torch.Tensor:
        """Eq. 6 (or nearest centroid) memberships of normalised embeddings ``e_u`` ``(N, D)``."""
        d2 = pairwise_sq_distances(e_u, self.centroids.centers)
        if self.self_label == "soft":
            return fuzzy_cmeans_labels(d2, self.centroids.seen)
        return nearest_centroid_labels(d2, self.centroids.seen)

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        C = self.num_classes
        xl = self.augment(batch["image"])
        yl = F.one_hot(batch["expression"], C).float()
        b = xl.shape[0]
        xus = [self.augment(batch["u_image"]) for _ in range(self.K)] if "u_image" in batch else []
        with torch.no_grad():  # lines 2-9: centroids from labelled embeddings, self-labels for unlabelled
            _, emb = self.model(torch.cat([xl, *xus]), with_embedding=True)
            e_hat = normalise(emb.float())
            self.centroids.update(e_hat[:b], yl)
            if xus:
                q = guess_labels(self.self_labels(e_hat[b:]).view(self.K, -1, C))  # Eq. 7
                q = sharpen(q, self.T)                                             # Eq. 8
        all_x = torch.cat([xl, *xus])
        all_y = torch.cat([yl, q.repeat(self.K, 1)]) if xus else yl
        lam = sample_lambda(self.alpha)
        mx, my = mixup(all_x, all_y, lam, torch.randperm(all_x.shape[0], device=all_x.device))  # Eq. 9
        logits, emb = self.model(mx, with_embedding=True)
        logits = logits.float()
        c, seen = self.centroids.centers, self.centroids.seen
        ls = soft_cross_entropy(logits[:b], my[:b])
        lm1 = self.margin(emb[:b], my[:b], centroids=c, class_mask=seen)
        w = linear_rampup(ctx.progress, self.rampup)
        loss = ls + self.lambda_M * lm1
        logs = {"loss_s": ls.detach(), "loss_m1": lm1.detach()}
        if xus:
            lm2 = self.margin(emb[b:], my[b:], centroids=c, class_mask=seen)
            loss = loss + self.lambda_M * self.lambda_u * w * lm2                              # Eq. 10
            logs["loss_m2"] = lm2.detach()
            if self.pred_u_weight > 0:
                lu = (torch.softmax(logits[b:], 1) - my[b:]).pow(2).mean()
                loss = loss + self.pred_u_weight * w * lu
                logs["loss_u"] = lu.detach()
        self._update(loss)
        logs["loss"] = loss.detach()
        return logs
