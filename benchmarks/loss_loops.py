"""The loop references of the book's losses (``reference_<name>`` beside each loss in
:mod:`fer_nb.losses`: a Python loop over samples or pairs with tensor ops inside, the way public code
often is) timed against the vectorised losses.

Each case builds both versions on the same batch; :func:`run` checks that they agree before
timing them, so the speed-up is between two implementations of the same number.
"""
from __future__ import annotations

import math

import torch

from benchmarks.timing import time_call


def _data(batch, dim, classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g).to(device)
    y = (torch.arange(batch) % classes)[torch.randperm(batch, generator=g)].to(device)
    return x, y


def case_center(x, y, c):
    from fer_nb.losses.center import CenterLoss, reference_center

    loss = CenterLoss(c, x.shape[1], squared=True).to(x.device).eval()
    loss.centers.copy_(torch.randn_like(loss.centers))
    return (lambda: loss(x, y)), (lambda: reference_center(x, y, loss.centers, squared=True))


def case_large_margin(x, y, c):
    from fer_nb.losses.large_margin_loss import LargeMarginLoss, reference_large_margin

    loss = LargeMarginLoss(c, x.shape[1]).to(x.device).eval()
    loss.centers.copy_(torch.randn_like(loss.centers))
    return (lambda: loss(x, y)), (lambda: reference_large_margin(x, y, loss.centers))


def case_triplet(x, y, c):
    from fer_nb.losses.triplet import TripletLoss, reference_triplet

    loss = TripletLoss(margin=1.0, power=2)
    return (lambda: loss(x, y)), (lambda: reference_triplet(x, y, margin=1.0, power=2))


def case_n_plus_one(x, y, c):
    from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss, reference_n_plus_one

    loss = NPlusOneTupleLoss(margin=0.0, power=2)
    return (lambda: loss(x, y)), (lambda: reference_n_plus_one(x, y, margin=0.0))


def case_contrastive(x, y, c):
    from fer_nb.losses.contrastive import ContrastiveLoss, reference_contrastive

    loss = ContrastiveLoss(neg_margin=1.0)
    return (lambda: loss(x, y)), (lambda: reference_contrastive(x, y, neg_margin=1.0))


def case_arcface(x, y, c):
    from fer_nb.losses.angular_margin import AngularMarginLoss, reference_arcface

    loss = AngularMarginLoss(x.shape[1], c, scale=64.0, margin=0.5).to(x.device)
    return (lambda: loss(x, y)), (lambda: reference_arcface(x, loss.weight, y, 64.0, 0.5).mean())


def case_cosface(x, y, c):
    from fer_nb.losses.cosface import CosFaceLoss, reference_cosface

    loss = CosFaceLoss(x.shape[1], c).to(x.device)
    return (lambda: loss(x, y)), (lambda: reference_cosface(x, loss.weight, y, 64.0, 0.35).mean())


def case_caf_critic(x, y, c):
    """All-pairs critic loss (Eq. 6-7) with its adaptive margin (Eq. 5, 8) and the default bandwidth."""
    from fer_nb.losses.caf_critic import CAFCriticLoss, reference_caf_critic

    z = x[:, :16].contiguous()
    strong = y < (c // 2)
    loss = CAFCriticLoss()
    return (lambda: loss(z, strong)), (lambda: reference_caf_critic(z, strong)[0])


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
