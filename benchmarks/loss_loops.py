"""Per-sample loop references of the book's losses, written the way public code often is (a
Python loop over samples or pairs, tensor ops inside), for timing against the vectorised losses.

Each case builds both versions on the same batch; :func:`run` checks that they agree before
timing them, so the speed-up is between two implementations of the same number.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.timing import time_call


def _data(batch, dim, classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g).to(device)
    y = (torch.arange(batch) % classes)[torch.randperm(batch, generator=g)].to(device)
    return x, y


def case_center(x, y, c):
    from fer_nb.losses.center import CenterLoss

    loss = CenterLoss(c, x.shape[1], squared=True).to(x.device).eval()
    loss.centers.copy_(torch.randn_like(loss.centers))
    cen = loss.centers

    def loop():
        return torch.stack([(x[i] - cen[y[i]]).pow(2).sum() for i in range(len(y))]).mean()

    return (lambda: loss(x, y)), loop


def case_large_margin(x, y, c):
    from fer_nb.losses.large_margin import LargeMarginLoss

    loss = LargeMarginLoss(c, x.shape[1]).to(x.device).eval()
    loss.centers.copy_(torch.randn_like(loss.centers))
    cen = loss.centers

    def loop():
        vals = []
        for i in range(len(y)):
            xh = x[i] / x[i].norm()
            d = torch.stack([(xh - cen[k] / cen[k].norm()).norm() for k in range(c)])
            j = int(y[i])
            vals.append(d[j] - (d.sum() - d[j]) / (c - 1))
        return torch.stack(vals).mean()

    return (lambda: loss(x, y)), loop


def case_triplet(x, y, c):
    from fer_nb.losses.triplet import TripletLoss

    loss = TripletLoss(margin=1.0, power=2)

    def loop():
        vals = []
        for a in range(len(y)):
            neg = x[y != y[a]]
            d_an = (neg - x[a]).pow(2).sum(1)
            for p in range(len(y)):
                if p != a and y[p] == y[a]:
                    vals.append(F.relu((x[p] - x[a]).pow(2).sum() - d_an + 1.0))
        return torch.cat(vals).mean()

    return (lambda: loss(x, y)), loop


def case_n_plus_one(x, y, c):
    from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss

    loss = NPlusOneTupleLoss(margin=0.0, power=2)

    def loop():
        vals = []
        for a in range(len(y)):
            d_an = (x[y != y[a]] - x[a]).pow(2).sum(1)
            for p in range(len(y)):
                if p != a and y[p] == y[a]:
                    z = (x[p] - x[a]).pow(2).sum() - d_an
                    vals.append(torch.logsumexp(torch.cat([z.new_zeros(1), z]), 0))
        return torch.stack(vals).mean()

    return (lambda: loss(x, y)), loop


def case_contrastive(x, y, c):
    from fer_nb.losses.contrastive import ContrastiveLoss

    loss = ContrastiveLoss(neg_margin=1.0)

    def loop():
        pos, neg, n_pos, n_neg = 0.0, 0.0, 0, 0
        for i in range(len(y)):
            d = (x - x[i]).pow(2).sum(1).clamp_min(1e-12).sqrt()
            same = y == y[i]
            same[i] = False
            diff = y != y[i]
            pos = pos + (0.5 * d[same].pow(2)).sum()
            neg = neg + (0.5 * F.relu(1.0 - d[diff]).pow(2)).sum()
            n_pos += int(same.sum())
            n_neg += int(diff.sum())
        return pos / max(n_pos, 1) + neg / max(n_neg, 1)

    return (lambda: loss(x, y)), loop


def case_arcface(x, y, c):
    from fer_nb.losses.angular_margin import AngularMarginLoss

    loss = AngularMarginLoss(x.shape[1], c, scale=64.0, margin=0.5).to(x.device)
    w = loss.weight if loss.weight.shape[0] == c else loss.weight.T

    def loop():
        vals = []
        for i in range(len(y)):
            cos = F.normalize(w, dim=1) @ (x[i] / x[i].norm())
            j = int(y[i])
            theta = torch.acos(cos[j].clamp(-1 + 1e-7, 1 - 1e-7))
            target = torch.where(theta > math.pi - 0.5, cos[j] - 0.5 * math.sin(0.5), torch.cos(theta + 0.5))
            logits = 64.0 * torch.cat([cos[:j], target[None], cos[j + 1:]])
            vals.append(torch.logsumexp(logits, 0) - logits[j])
        return torch.stack(vals).mean()

    return (lambda: loss(x, y)), loop


def case_cosface(x, y, c):
    from fer_nb.losses.cosface import CosFaceLoss

    loss = CosFaceLoss(x.shape[1], c).to(x.device)

    def loop():
        vals = []
        for i in range(len(y)):
            cos = F.normalize(loss.weight, dim=1) @ (x[i] / x[i].norm())
            j = int(y[i])
            logits = 64.0 * torch.cat([cos[:j], (cos[j] - 0.35)[None], cos[j + 1:]])
            vals.append(torch.logsumexp(logits, 0) - logits[j])
        return torch.stack(vals).mean()

    return (lambda: loss(x, y)), loop


def case_caf_critic(x, y, c):
    """All-pairs critic loss (Eq. 6-7) with its adaptive margin (Eq. 5, 8), both computed in the loop
    version as a loop reference would: pairs one anchor at a time, MI one latent dimension at a
    time, ``K`` by walking the sorted strong-weak distances until ``d_(k) >= MI + Delta(N, k)``."""
    import math

    from fer_nb.losses.caf_critic import CAFCriticLoss

    z = x[:, :16].contiguous()
    strong = y < (c // 2)
    loss = CAFCriticLoss()

    def vec():
        return loss(z, strong)

    def loop():
        n = len(z)
        zs, zw = z[strong], z[~strong]
        sigma = float(z.abs().median().clamp_min(1e-3))
        ms, mw = [], []
        for k in range(z.shape[1]):   # group means of the Gaussian-kernel features, per dimension
            ms.append(float(torch.exp(-zs[:, k].pow(2) / (2 * sigma**2)).mean()))
            mw.append(float(torch.exp(-zw[:, k].pow(2) / (2 * sigma**2)).mean()))
        am, bm = sum(ms) / len(ms), sum(mw) / len(mw)
        cov = sum((p - am) * (q - bm) for p, q in zip(ms, mw))
        den = math.sqrt(sum((p - am) ** 2 for p in ms) * sum((q - bm) ** 2 for q in mw))
        eta = cov / den if den > 1e-12 else 0.0
        mi = min(max(-0.5 * math.log1p(-min(eta * eta, 1 - 1e-6)), 0.0), 2.5)
        pos, n_pos, cross = 0.0, 0, []
        for i in range(n):
            if not strong[i]:
                continue
            d = (z - z[i]).pow(2).sum(1)
            later = torch.zeros_like(strong)
            later[i + 1:] = True
            pos = pos + d[strong & later].sum()
            n_pos += int((strong & later).sum())
            cross.append(d[~strong])
        cross = torch.cat(cross)
        k = 0
        for value in torch.sort(cross.detach()).values.tolist():
            if value < mi + math.log(n / 0.05) / (2 * (k + 1)):
                k += 1
            else:
                break
        alpha = mi + math.log(n / 0.05) / (2 * max(k, 1))
        hinge = F.relu(alpha - cross).sum()
        return pos / max(n_pos, 1) + 0.5 * hinge / max(len(cross), 1)

    return vec, loop


CASES = {
    "center (Eq. 1)": case_center,
    "large margin (Eq. 3)": case_large_margin,
    "triplet": case_triplet,
    "(N+1)-tuple (Eq. 1)": case_n_plus_one,
    "contrastive": case_contrastive,
    "ArcFace / angular margin (Eq. 15-16)": case_arcface,
    "CosFace": case_cosface,
    "CAF critic, all pairs (Eq. 6-7)": case_caf_critic,
}


def run(device: torch.device, batch: int = 256, dim: int = 128, classes: int = 7, quick: bool = False) -> list[dict]:
    rows = []
    x, y = _data(batch, dim, classes, device)
    for name, make in CASES.items():
        vec, loop = make(x, y, classes)
        v, lo = float(vec().detach()), float(loop().detach())
        if not math.isclose(v, lo, rel_tol=1e-3, abs_tol=1e-4):
            raise AssertionError(f"{name}: vectorised {v} != loop {lo}; the benchmark compares different numbers")
        t_vec = time_call(vec, device, warmup=2, iters=5 if quick else 20)
        t_loop = time_call(loop, device, warmup=1, iters=1, repeats=1 if quick else 3)
        rows.append({"loss": name, "batch": batch, "dim": dim, "vectorised_ms": 1e3 * t_vec,
                     "loop_ms": 1e3 * t_loop, "speedup": t_loop / t_vec, "value": v})
        print(f"  {name:40s} vec {1e3 * t_vec:8.2f} ms  loop {1e3 * t_loop:9.1f} ms  x{t_loop / t_vec:7.1f}", flush=True)
    return rows
