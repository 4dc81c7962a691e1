"""Racoviteanu et al. (BMVC 2019): the large-margin training step and the experiment loop.

What the paper adds on top of the losses (:mod:`fer_nb.losses.large_margin_loss`, center, island):

* :func:`supervision_and_targets` - the supervised term on the labelled rows and the classes the
  embedding loss uses for *every* row: Table 1 (Sec. 3.1, SSL) the true labels and, for the
  unlabelled rows, the network's own prediction; Table 2 (Sec. 3.2, transfer) the pseudo-emotions
  of the AU outputs (Eq. 6-7, :mod:`fer_nb.pseudo_emotions`).
* :func:`balanced_weight` - the loss balancing of Sec. 4.2 ("lambda_1 L_S ~ 0.8 lambda_2 L_M",
  same for lambda_3, lambda_4), applied per step from the detached magnitudes, capped by the
  preset weight, times :func:`lambda4_decay` for Table 2 (lambda_4 decreases during training).
* :func:`train_step` - Eq. 4 / Eq. 7's total loss, one optimiser step (bf16 autocast on CUDA, no
  host synchronisation: every logged value stays a device tensor).
* :func:`load_data` - Table 1's labelled / unlabelled / test sets and Table 2's AU sets, from
  SynthFACS or from ``DATA_ROOT`` alone (:func:`check_protocol` validates the combination).
* :func:`run_row`, :func:`run_table`, :func:`summarise`, :func:`ordering` - the experiment loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_nb import fast, metrics, pseudo_emotions as pe, report, train
from fer_nb.data.face_crop import crop_for
from fer_nb.data.schema import FaceArrays
from fer_nb.device import autocast
from fer_nb.losses.center import CenterLoss
from fer_nb.losses.island import IslandLoss
from fer_nb.losses.large_margin_loss import LargeMarginLoss, normalise
from fer_nb.models.large_margin_net import LargeMarginNet
from fer_nb.seed import seed_everything

#: Table 1 rows: embedding loss (None = softmax only), whether the unlabelled pool is used (SSL).
T1_ROWS: dict[str, tuple[str | None, bool]] = {
    "AlexNet softmax (Superv)": (None, False),
    "AlexNet + Island loss (Superv)": ("island", False),
    "AlexNet + Center loss (SSL)": ("center", True),
    "AlexNet + Island loss (SSL)": ("island", True),
    "AlexNet + LM loss (SSL)": ("lm", True),
}
#: Table 2 rows: embedding loss on pseudo-emotions, whether the unlabelled pool is used (transfer).
T2_ROWS: dict[str, tuple[str | None, bool]] = {
    "AlexNet (Sv)": (None, False),
    "AlexNet + center loss (Sv)": ("center", False),
    "AlexNet + island loss (T)": ("island", True),
    "AlexNet + LM loss (T)": ("lm", True),
}
#: Expression datasets (Table 1) and AU-coded datasets (Table 2) this chapter can read.
EXPRESSION_DATASETS = ("synthfacs", "rafdb", "ferplus", "fer2013")
AU_DATASETS = ("synthfacs", "emotionet", "ckplus")
POOLS = ("rest", "emotionet")               # Table 1's unlabelled pool
AU_POOLS = ("expression_pool", "au_unlabelled")   # Table 2's unlabelled pool
#: real AU labels are binary occurrences: an AU is present when the output is >= 0.5
BINARY_AU_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- the paper's step
def lambda4_decay(progress: float, final: float) -> float:
    """Linear decay of lambda_4 from 1 to ``final`` over training (``progress`` in [0, 1])."""
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"lambda4_final must be in [0, 1], got {final}")
    return 1.0 - (1.0 - final) * min(max(float(progress), 0.0), 1.0)


def balanced_weight(sup: torch.Tensor, emb: torch.Tensor, w_sup: float, cap: float, balance: float,
                    decay: float = 1.0) -> torch.Tensor:
    """Sec. 4.2: the embedding weight ``lambda`` with ``w_sup L_S = balance * lambda |L_emb|``.

    ``lambda = decay * min(w_sup |L_S| / (balance |L_emb|), cap)`` from the detached losses
    (``|L_emb|`` floored at 1e-3), so it is a per-step scalar on the losses' device and never
    a host number; no gradient flows through it.
    """
    if balance <= 0 or cap < 0:
        raise ValueError(f"balance must be > 0 and cap >= 0, got balance={balance}, cap={cap}")
    ratio = w_sup * sup.detach().abs() / (balance * emb.detach().abs().clamp_min(1e-3))
    return decay * ratio.clamp_max(cap)


def supervision_and_targets(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], n_lab: int,
                            task: str, au_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(supervised loss on the labelled rows, class of every row for the embedding loss)``.

    Table 1 (``task="t1"``): cross-entropy of the decision layer on the labelled rows only
    (Eq. 4's L_S); classes = true labels, and for the unlabelled rows the argmax of the network's
    own (detached) logits (Sec. 3.1). Table 2 (``"t2"``): masked MSE of the AU outputs on the
    labelled rows (Eq. 7's first term); classes = pseudo-emotions of the AU outputs of every row
    (Eq. 6-7), the labelled ones included.
    """
    if task == "t1":
        logits = out["logits"].float()
        sup = F.cross_entropy(logits[:n_lab], batch["expression"])
        labels = torch.cat([batch["expression"], batch["expression"].new_full((logits.shape[0] - n_lab,), -1)])
        return sup, LargeMarginLoss.self_labels(labels, logits)
    if task == "t2":
        aus = out["aus"].float()
        msk = batch["aus_mask"][:, au_cols].float()
        sup = ((aus[:n_lab] - batch["aus"][:, au_cols].float()) ** 2 * msk).sum() / msk.sum().clamp_min(1)
        return sup, pe.pseudo_emotion_labels(aus)
    raise ValueError(f"task must be 't1' (expressions, Table 1) or 't2' (AUs, Table 2), got {task!r}")


@dataclass(frozen=True)
class Weights:
    """Eq. 4 / Eq. 7 weights and the balancing rule's constants (from the preset)."""

    lambda1: float = 1.0
    lambda2: float = 0.5
    lambda3: float = 1.0
    lambda4: float = 0.5
    lambda4_final: float = 0.1
    balance: float = 0.8
    center_weight: float = 0.05

    @classmethod
    def from_cfg(cls, cfg) -> "Weights":
        return cls(**{k: float(cfg.hp[k]) for k in cls.__dataclass_fields__})


def train_step(model: nn.Module, aux: nn.Module | None, opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
               progress: float, *, task: str, kind: str | None, w: Weights, au_cols: torch.Tensor) -> dict:
    """One step of Eq. 4 (Table 1) or Eq. 7 (Table 2): ``w_sup L_S + lambda L_emb``.

    ``batch["image"]`` are the labelled rows; ``batch["u_image"]`` (SSL / transfer rows) the
    unlabelled rows appended after them. ``lambda`` follows :func:`balanced_weight` with the cap
    ``lambda2`` (Table 1) or ``lambda4`` (Table 2), times ``center_weight`` for the unbounded
    center/island losses, times :func:`lambda4_decay` in Table 2.
    """
    imgs = torch.cat([batch["image"], batch["u_image"]]) if "u_image" in batch else batch["image"]
    n_lab = batch["image"].shape[0]
    with autocast(imgs.device):
        out = model(imgs)
    sup, cls = supervision_and_targets(out, batch, n_lab, task, au_cols)
    w_sup, cap, decay = ((w.lambda1, w.lambda2, 1.0) if task == "t1"
                         else (w.lambda3, w.lambda4, lambda4_decay(progress, w.lambda4_final)))
    loss = w_sup * sup
    logs = {"sup": sup}
    if aux is not None:
        emb_loss = aux(out["embedding"].float(), cls)               # L_M / center / island, float32
        weight = balanced_weight(sup, emb_loss, w_sup, cap if kind == "lm" else cap * w.center_weight,
                                 w.balance, decay)
        loss = loss + weight * emb_loss
        logs.update(emb=emb_loss, emb_weight=weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    logs["loss"] = loss
    return logs


# ----------------------------------------------------------------------------- data
@dataclass
class LMData:
    """Table 1: ``expr_train`` (labelled), ``pool`` (labels hidden), ``expr_test``; Table 2:
    ``au_train``, ``au_pool``, ``au_test``; ``au_threshold`` turns AU values into occurrences."""

    expr_train: FaceArrays
    pool: FaceArrays
    expr_test: FaceArrays
    au_train: FaceArrays
    au_pool: FaceArrays
    au_test: FaceArrays
    au_threshold: float

    @property
    def num_classes(self) -> int:
        return self.expr_train.num_classes

    def to(self, device) -> "LMData":
        return LMData(*(getattr(self, k).to(device) for k in
                        ("expr_train", "pool", "expr_test", "au_train", "au_pool", "au_test")), self.au_threshold)


def hide_labels(ds: FaceArrays, name: str) -> FaceArrays:
    """The unlabelled pool: expression -1 and no AU annotation (the model never sees them)."""
    labels = dict(ds.labels)
    if "expression" in labels:
        labels["expression"] = torch.full_like(labels["expression"], -1)
    else:
        labels["expression"] = torch.full((len(ds),), -1, dtype=torch.long, device=ds.images.device)
    if "aus_mask" in labels:
        labels["aus_mask"] = torch.zeros_like(labels["aus_mask"])
    return FaceArrays(ds.images, labels, name, ds.class_names, dict(ds.info))


def check_protocol(cfg) -> None:
    """Reject combinations of DATASET / AU_DATASET / pools that make no sense, naming the fix."""
    ds, au, pool, au_pool = cfg.dataset, cfg.au_dataset, cfg.unlabelled_pool, cfg.au_pool
    if ds not in EXPRESSION_DATASETS:
        raise ValueError(f"DATASET={ds!r}: Table 1 needs expression labels; use one of {EXPRESSION_DATASETS}")
    if au not in AU_DATASETS:
        raise ValueError(f"AU_DATASET={au!r}: Table 2 needs AU-coded faces; use one of {AU_DATASETS}")
    if (ds == "synthfacs") != (au == "synthfacs"):
        raise ValueError(f"DATASET={ds!r} with AU_DATASET={au!r}: mixing SynthFACS with real faces makes the "
                         "unlabelled pools of another domain; use both 'synthfacs' or both real datasets")
    if pool not in POOLS:
        raise ValueError(f"unlabelled_pool={pool!r}; use one of {POOLS}")
    if au_pool not in AU_POOLS:
        raise ValueError(f"au_pool={au_pool!r}; use one of {AU_POOLS}")
    if au_pool == "au_unlabelled" and au not in ("emotionet", "synthfacs"):
        raise ValueError(f"au_pool='au_unlabelled' needs an AU dataset with an unlabelled split (EmotioNet); "
                         f"{au} has none: use au_pool='expression_pool'")
    if cfg.n_labelled < 1 or cfg.n_au_labelled < 1:
        raise ValueError("n_labelled and n_au_labelled must be >= 1")


def _cap(ds: FaceArrays, n: int, seed: int) -> FaceArrays:
    """At most ``n`` rows of ``ds`` (a seeded random subset; all rows when it has fewer)."""
    if len(ds) <= n:
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ds.subset(idx)


def _synthfacs(cfg) -> LMData:
    from fer_nb.data import synthfacs

    n_sub = cfg.n_subjects
    # rendered on cfg.device (the GPU when there is one: the gpu preset's 227 px wild faces are slow on a CPU)
    common = dict(domain=cfg.domain, image_size=cfg.image_size, class_priors="rafdb", device=cfg.device)
    pool = hide_labels(synthfacs.generate(cfg.n_unlabelled, seed=13, n_subjects=4 * n_sub, subject_offset=10_000,
                                          **common), "synthfacs-unlabelled")
    return LMData(
        expr_train=synthfacs.generate(cfg.n_labelled, seed=11, n_subjects=n_sub, subject_offset=0, **common),
        pool=pool,
        expr_test=synthfacs.generate(cfg.n_test, seed=14, n_subjects=n_sub, subject_offset=50_000, **common),
        au_train=synthfacs.generate(cfg.n_au_labelled, seed=12, n_subjects=n_sub, subject_offset=0, **common),
        au_pool=pool,
        au_test=synthfacs.generate(cfg.n_test, seed=15, n_subjects=n_sub, subject_offset=60_000, **common),
        au_threshold=float(cfg.au_threshold))


def _real(cfg) -> LMData:
    from fer_nb.data import registry, splits

    def load(name, split, **kw):
        return registry.load(name, cfg.data_root, split=split, image_size=cfg.image_size, channels=3, **kw)

    train_all, test = load(cfg.dataset, "train"), load(cfg.dataset, "test")
    n_lab = min(cfg.n_labelled, len(train_all))
    if cfg.unlabelled_pool == "rest":          # labelled subset + the rest of the train split, labels hidden
        lab_idx, rest_idx = (splits.labelled_split(train_all.labels["expression"], n_lab, seed=0, balanced=False)
                             if n_lab < len(train_all) else (torch.arange(len(train_all)), torch.arange(0)))
        if len(rest_idx) == 0:
            raise ValueError(f"unlabelled_pool='rest' needs n_labelled < the {len(train_all)} training images of "
                             f"{cfg.dataset}; lower n_labelled or use unlabelled_pool='emotionet'")
        expr_train, pool_src = train_all.subset(lab_idx), train_all.subset(rest_idx)
    else:
        expr_train, pool_src = _cap(train_all, n_lab, 1), load("emotionet", "unlabelled")
    pool = hide_labels(_cap(pool_src, cfg.n_unlabelled, 2), f"{pool_src.name}-unlabelled")
    if cfg.au_dataset == "emotionet":
        au_train, au_test = load("emotionet", "train"), load("emotionet", "test")
    else:                                      # CK+ peak frames with their FACS coding, split by subject
        ck = load("ckplus", "all", face_crop=crop_for("ckplus", cfg.data_root, cfg.face_crop))
        coded = ck.labels["aus_mask"].any(1).nonzero().squeeze(1)
        if len(coded) == 0:
            raise ValueError("AU_DATASET='ckplus' needs the original release with FACS/ files (the CK+48 variant "
                             "has no AU coding): add FACS_labels.zip or use AU_DATASET='emotionet'")
        ck = ck.subset(coded)
        tr, te = splits.train_val_by_subject(ck.labels["subject"], 0.25, seed=0)
        au_train, au_test = ck.subset(tr), ck.subset(te)
    au_pool = (hide_labels(_cap(load("emotionet", "unlabelled"), cfg.n_unlabelled, 3), "emotionet-unlabelled")
               if cfg.au_pool == "au_unlabelled" else pool)
    return LMData(expr_train, pool, _cap(test, cfg.n_test, 4), _cap(au_train, cfg.n_au_labelled, 5), au_pool,
                  _cap(au_test, cfg.n_test, 6), BINARY_AU_THRESHOLD)


def load_data(cfg) -> LMData:
    """Both tables' data for ``cfg`` (validated by :func:`check_protocol`), on ``cfg.device``."""
    check_protocol(cfg)
    data = _synthfacs(cfg) if cfg.dataset == "synthfacs" else _real(cfg)
    return data.to(cfg.device)


# ----------------------------------------------------------------------------- metrics
AU_COLS = pe.au_columns_index(pe.EMOTIONET_AUS)


def au_f1(pred_aus: torch.Tensor, target_aus: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> dict:
    """Per-AU F1 (percent) on EmotioNet's 12 AUs, + the paper's "Avg. small" and "Avg. full"."""
    f1 = 100 * metrics.f1_per_label(pred_aus >= threshold, target_aus >= threshold, mask)
    row = {f"AU{u}": float(v) for u, v in zip(pe.EMOTIONET_AUS, f1)}
    row["avg_small"] = float(np.mean([row[f"AU{u}"] for u in pe.TABLE2_SMALL_AUS]))
    row["avg_full"] = float(np.mean([row[f"AU{u}"] for u in pe.EMOTIONET_AUS]))
    return row


def evaluate_scores(model: nn.Module, test: FaceArrays, task: str, threshold: float, batch_size: int = 256) -> dict:
    """Table 1: accuracy, mean per-class accuracy (percent); Table 2: :func:`au_f1`; plus
    ``n_pred`` (classes predicted / AUs ever predicted present) for the convergence rule."""
    dev = test.images.device
    if task == "t1":
        p = train.predict(model, test.batches(batch_size, device=dev), keys=("expression",),
                          fn=lambda m, b: {"logits": m(b["image"])["logits"]})
        k = test.num_classes
        return {"acc": 100 * metrics.accuracy(p["logits"], p["expression"]),
                "mean_acc": 100 * metrics.mean_per_class_accuracy(p["logits"], p["expression"], k),
                "n_pred": float(len(torch.unique(p["logits"].argmax(1))))}
    p = train.predict(model, test.batches(batch_size, device=dev), keys=("aus", "aus_mask"),
                      fn=lambda m, b: {"pred_aus": m(b["image"])["aus"]})
    out = au_f1(p["pred_aus"], p["aus"][:, AU_COLS], p["aus_mask"][:, AU_COLS], threshold)
    out["n_pred"] = float((p["pred_aus"] >= threshold).any(0).sum())
    return out


CONVERGED: dict[str, Callable[[Mapping], bool]] = {
    "t1": lambda r: r["n_pred"] > 1,     # predicts more than one class
    "t2": lambda r: r["n_pred"] > 0,     # predicts at least one AU as present somewhere
}


# ----------------------------------------------------------------------------- experiment loop
def make_aux(kind: str | None, num_classes: int, cfg) -> nn.Module | None:
    """The embedding loss of a row: ``lm`` (Eq. 2-3), ``center`` (Eq. 1), ``island``, or None."""
    d = cfg.embedding_dim
    if kind is None:
        return None
    if kind == "lm":
        return LargeMarginLoss(num_classes, d, alpha=cfg.alpha)
    if kind == "center":
        return CenterLoss(num_classes, d, alpha=cfg.alpha)
    if kind == "island":
        return IslandLoss(num_classes, d, alpha=cfg.alpha, lambda1=cfg.island_lambda)
    raise ValueError(f"unknown embedding loss {kind!r}; use 'lm', 'center', 'island' or None")


class CentroidTrack(nn.Module):
    """Remembers the normalised centroids of the previous epoch (checkpointed) for Figure 4."""

    def __init__(self, centers: torch.Tensor):
        super().__init__()
        self.register_buffer("prev", normalise(centers.detach().clone()))


def new_model(cfg, data: LMData, task: str) -> LargeMarginNet:
    t1 = task == "t1"
    model = LargeMarginNet(data.expr_train.images.shape[1], cfg.width, num_classes=data.num_classes if t1 else 0,
                           num_aus=0 if t1 else len(AU_COLS), hidden=cfg.hidden, embedding_dim=cfg.embedding_dim,
                           dropout=cfg.dropout, pool_size=cfg.pool_size)
    return fast.prepare(model, cfg.device)


def run_row(cfg, data: LMData, task: str, row: str, seed: int):
    """Train one row of Table 1 (``task="t1"``) or Table 2 (``"t2"``) for one seed (checkpointed);
    return ``(test scores, history)``."""
    kind, use_pool = (T1_ROWS if task == "t1" else T2_ROWS)[row]
    seed_everything(seed)
    t1 = task == "t1"
    labelled, test, unl = ((data.expr_train, data.expr_test, data.pool) if t1
                           else (data.au_train, data.au_test, data.au_pool))
    model = new_model(cfg, data, task)
    aux = make_aux(kind, data.num_classes if t1 else len(pe.PSEUDO_EMOTIONS), cfg)
    modules, extra = {"model": model}, {}
    if aux is not None:
        modules["aux"] = aux.to(cfg.device)
        extra["track"] = CentroidTrack(aux.centers).to(cfg.device)
    opt = fast.optimizer("adam", model.parameters(), cfg.lr, cfg.device)
    w, cols = Weights.from_cfg(cfg), AU_COLS.to(cfg.device)
    nl, nu = cfg.batch_size, cfg.unlabelled_batch_size

    def batches(epoch):
        gl = torch.Generator().manual_seed(10_000 * seed + epoch)   # same order after a resume
        lab = list(labelled.batches(nl, shuffle=True, generator=gl, drop_last=len(labelled) >= nl))
        if use_pool:
            for b, u in zip(lab, unl.batches(nu, shuffle=True, generator=gl, drop_last=True)):
                b["u_image"] = u["image"]
        return lab

    def step(batch, ctx):
        return train_step(model, aux, opt, batch, ctx.progress, task=task, kind=kind, w=w, au_cols=cols)

    def evaluate(epoch):
        s = evaluate_scores(model, test, task, data.au_threshold)
        rec = {"val/acc": s["acc"], "val/mean_acc": s["mean_acc"]} if t1 else {"val/f1_full": s["avg_full"],
                                                                              "val/f1_small": s["avg_small"]}
        if aux is not None:
            now = normalise(aux.centers.detach())
            rec["centroid_move"] = float((now - extra["track"].prev).norm(dim=1).mean())
            extra["track"].prev.copy_(now)
        return rec

    h = cfg.run_hash(task=task, row=row, seed=seed)
    hist = train.fit_or_load(train.checkpoint_path(cfg.out_dir, f"{task}-{row}-s{seed}", h), h,
                             modules=modules, optimizers={"opt": opt}, train_step=step, train_batches=batches,
                             epochs=cfg.epochs, evaluate=evaluate, extra_state=extra, desc=f"{task} {row[:24]} s{seed}")
    return evaluate_scores(model, test, task, data.au_threshold), hist


def run_table(cfg, data: LMData, task: str) -> tuple[dict, dict]:
    """Every row of one table for every seed: ``({row: [scores per seed]}, {(row, seed): history})``."""
    rows = T1_ROWS if task == "t1" else T2_ROWS
    per_seed: dict[str, list] = {}
    hists = {}
    for row in rows:
        per_seed[row] = []
        for seed in cfg.seeds:
            s, h = run_row(cfg, data, task, row, seed)
            per_seed[row].append(s)
            hists[(row, seed)] = h
    return per_seed, hists


def summarise(per_seed: Mapping[str, list], task: str) -> dict:
    """Mean +- std over the converged seeds; a row where no seed converged is "nc"."""
    converged = CONVERGED[task]
    table = {}
    for row, runs in per_seed.items():
        ok = [r for r in runs if converged(r)]
        if not ok:
            table[row] = {k: "nc" for k in runs[0] if k != "n_pred"}
        else:
            table[row] = report.summarise_seeds([{k: v for k, v in r.items() if k != "n_pred"} for r in ok])
        table[row]["converged_seeds"] = float(len(ok))
    return table


def ordering(per_seed: Mapping[str, list], better: str, worse: str, metric: str, task: str) -> dict:
    """Seed-by-seed comparison of two rows; seeds where either run did not converge are counted apart."""
    converged = CONVERGED[task]
    a = np.array([r[metric] for r in per_seed[better]])
    b = np.array([r[metric] for r in per_seed[worse]])
    nc = np.array([not (converged(p) and converged(q)) for p, q in zip(per_seed[better], per_seed[worse])])
    return {"claim": f"{better} > {worse} ({metric})", "better mean": float(a.mean()), "worse mean": float(b.mean()),
            "mean diff": float((a - b).mean()), "diff std": float((a - b).std(ddof=1)) if len(a) > 1 else 0.0,
            "seeds where it holds": f"{int((a > b).sum())}/{len(a)}", "seeds with an nc run": int(nc.sum()),
            "holds (mean)": bool(a.mean() > b.mean())}


def paper_claims(t1_seeds: Mapping[str, list], t2_seeds: Mapping[str, list]) -> list[dict]:
    """The paper's orderings: LM (SSL) above each Table 1 baseline, LM (T) above Table 2's."""
    claims = []
    for m in ("acc", "mean_acc"):
        for worse in ("AlexNet + Center loss (SSL)", "AlexNet + Island loss (SSL)", "AlexNet softmax (Superv)"):
            claims.append(ordering(t1_seeds, "AlexNet + LM loss (SSL)", worse, m, "t1"))
    for m in ("avg_small", "avg_full"):
        claims.append(ordering(t2_seeds, "AlexNet + LM loss (T)", "AlexNet (Sv)", m, "t2"))
        claims.append(ordering(t2_seeds, "AlexNet + LM loss (T)", "AlexNet + island loss (T)", m, "t2"))
    return claims
