"""Margin-Mix (Florea et al., ECCV 2020): Algorithm 1 as a training step, and the experiments of Tables 1-5.

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
   (:class:`~fer_nb.losses.margin_mix_loss.MarginMixLoss`, squared Euclidean, soft targets) of the
   mixed labelled / unlabelled embeddings against the centroids; ``lambda_u`` ramps up linearly
   (as MixMatch's weight does). Weight decay: decoupled, through the weight EMA (MixMatch's code,
   which Margin-Mix was developed from).

``pred_u_weight`` (default 0, i.e. the paper's Eq. 10 literally) optionally adds MixMatch's
unlabelled prediction term ``mean ||softmax(z_u) - y_u'||^2`` with the self-labels as targets; the
paper's text does not say whether its code kept it. All forward passes run under
:func:`fer_nb.device.autocast` (bf16 on CUDA); losses are computed in float32.

**Experiments** (the chapter's Tables 1-5): :func:`load_data` (SynthFACS analogues with FER+ /
RAF-DB class priors, or the real datasets; FER+ keeps its 8 classes, contempt included),
:func:`table_budgets` (which table runs with which label budgets; ``"all"`` = the whole pool,
the paper's "All" column, keyed ``acc_all``), :func:`run_one` (one method x budget x seed through
:func:`fer_nb.train.fit_or_load`, BN recalibrated, evaluated; it also returns the test predictions),
:func:`run_fer_table`, :func:`run_ablation` (Table 5), :func:`run_ssl_table` (Tables 1-2, MixMatch
with Berthelot et al.'s per-benchmark settings, :data:`MIXMATCH_BENCHMARK_HP`) and
:func:`ordering_summary`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fer_nb import fast
from fer_nb.compiled import maybe_compile
from fer_nb.data.augment import Augment
from fer_nb.data.schema import FaceArrays
from fer_nb.losses.large_margin_loss import normalise
from fer_nb.losses.margin_mix_loss import MarginMixLoss, pairwise_sq_distances
from fer_nb.metrics import accuracy, mean_per_class_accuracy
from fer_nb.models.wrn import WideResNet
from fer_nb.seed import seed_everything
from fer_nb.ssl import (MeanTeacher, MixMatch, PairedBatches, Supervised, balanced_label_split, collapsed,
                        predict_classes, recalibrate_bn)
from fer_nb.ssl.mixmatch import SSLMethod, linear_rampup
from fer_nb.ssl.mixup import guess_labels, mixup, sample_lambda, sharpen, soft_cross_entropy
from fer_nb.train import checkpoint_path, fit, fit_or_load


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

    @torch.no_grad()
    def centroids_and_guess(self, xl: torch.Tensor, yl: torch.Tensor, xus: list[torch.Tensor]) -> torch.Tensor | None:
        """Algorithm 1, lines 2-9: update the centroids from the labelled embeddings (Eq. 1), then
        self-label each unlabelled view (Eq. 6), sum over the views and renormalise (Eq. 7) and
        sharpen (Eq. 8). Returns the ``(B_u, C)`` targets, or ``None`` without unlabelled views."""
        b = xl.shape[0]
        _, emb = self.forward(torch.cat([xl, *xus]), with_embedding=True)
        e_hat = normalise(emb.float())
        self.centroids.update(e_hat[:b], yl)                                         # Eq. 1
        if not xus:
            return None
        y6 = self.self_labels(e_hat[b:]).view(len(xus), -1, self.num_classes)         # Eq. 6
        return sharpen(guess_labels(y6), self.T)                                     # Eq. 7-8

    def loss(self, logits: torch.Tensor, emb: torch.Tensor, my: torch.Tensor, b: int,
             progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 10 on the mixed batch (first ``b`` rows labelled): ``L_S + lambda_M (L_M1 + w(t) lambda_u L_M2)``.

        The margin terms use the running centroids; classes without a centroid yet (``seen`` False)
        are left out of the pull and the push (``class_mask``)."""
        logits, emb = logits.float(), emb.float()
        c, seen = self.centroids.centers, self.centroids.seen
        ls = soft_cross_entropy(logits[:b], my[:b])                                     # L_S
        lm1 = self.margin(emb[:b], my[:b], centroids=c, class_mask=seen)               # L_M1
        loss = ls + self.lambda_M * lm1
        logs = {"loss_s": ls.detach(), "loss_m1": lm1.detach()}
        if logits.shape[0] > b:
            w = linear_rampup(progress, self.rampup)
            lm2 = self.margin(emb[b:], my[b:], centroids=c, class_mask=seen)           # L_M2
            loss = loss + self.lambda_M * self.lambda_u * w * lm2                      # Eq. 10
            logs["loss_m2"] = lm2.detach()
            if self.pred_u_weight > 0:
                lu = (torch.softmax(logits[b:], 1) - my[b:]).pow(2).mean()
                loss = loss + self.pred_u_weight * w * lu
                logs["loss_u"] = lu.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        """One step of Algorithm 1 (augment, centroids + self-labels, MixUp, Eq. 10, Adam, EMA)."""
        xl = self.augment(batch["image"])
        yl = F.one_hot(batch["expression"], self.num_classes).float()
        b = xl.shape[0]
        xus = [self.augment(batch["u_image"]) for _ in range(self.K)] if "u_image" in batch else []
        q = self.centroids_and_guess(xl, yl, xus)
        all_x = torch.cat([xl, *xus])
        all_y = torch.cat([yl, q.repeat(self.K, 1)]) if xus else yl
        lam = sample_lambda(self.alpha)
        mx, my = mixup(all_x, all_y, lam, torch.randperm(all_x.shape[0], device=all_x.device))  # Eq. 9
        logits, emb = self.forward(mx, with_embedding=True)
        loss, logs = self.loss(logits, emb, my, b, ctx.progress)
        self._update(loss)
        return logs


# ===================================================================================== experiments

#: the four methods of Tables 3-4, by the rows the paper prints
METHODS = {"supervised": Supervised, "mean_teacher": MeanTeacher, "mixmatch": MixMatch, "margin_mix": MarginMix}
METHOD_ROWS = {"supervised": "Supervised WideResNet", "mean_teacher": "MeanTeacher", "mixmatch": "MixMatch",
               "margin_mix": "MarginMix"}
#: FER tables: dataset, SynthFACS class priors, channels, contempt kept (FER+ has 8 classes, RAF-DB 7)
FER_TABLES = {"table3": ("ferplus", 1, True), "table4": ("rafdb", 3, False)}
#: Tables 1-2 label budgets per balanced benchmark
SSL_BUDGETS = {"cifar10": [250, 1000, 4000], "cifar100": [10000], "svhn": [1000, 4000], "stl10": [1000, 5000]}
MIXMATCH_BENCHMARK_HP = {
    "cifar10": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 75.0},
    "cifar100": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 150.0},
    "svhn": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 250.0},
    "stl10": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 50.0},
}
"""MixMatch's hyper-parameters on the balanced benchmarks of Tables 1-2, per benchmark.

Berthelot et al., "MixMatch: A Holistic Approach to Semi-Supervised Learning" (NeurIPS 2019),
Section 4.1 and their official code (google-research/mixmatch: ``T = 0.5`` and ``K = nu = 2`` fixed
in ``mixmatch.py``; ``--beta=0.75`` and ``--w_match`` 75 for CIFAR-10 in ``runs/table5.sh``, 150
for CIFAR-100 in ``runs/table1.sh``, 250 for SVHN in ``runs/table6.sh``, 50 for STL-10 in
``runs/table2.sh``): sharpening ``T``, unlabelled augmentations ``K``, MixUp ``alpha`` and the
unlabelled loss weight ``lambda_u``. Tables 1-2 of Margin-Mix compare against MixMatch on these
benchmarks; the Margin-Mix paper lowered ``T`` from 0.5 to 0.25 for the FER datasets only
(Section 5), so Tables 3-4 keep the preset's ``T`` and ``lambda_u_mixmatch``. Read through
:func:`mixmatch_benchmark_hp`; :func:`run_ssl_table` passes them to MixMatch's step.
"""
#: Table 5 rows: preset short name -> (paper row, MarginMix overrides)
ABLATIONS = {
    "T0.5": ("Sharpening T=0.5", {"T": 0.5}), "T0": ("No sharpening T=0", {"T": 0.0}),
    "hard": ("with nearest centroid", {"self_label": "hard"}), "no_ema": ("without parameter EMA", {"ema_decay": None}),
    "no_mixup": ("without MixUp", {"alpha": 0.0}), "K1": ("N_aug=1", {"K": 1}),
}


def column(n: int | str) -> str:
    """Column key of a label budget: ``acc_<n>``, or ``acc_all`` for the whole pool (paper.yaml's "All")."""
    return "acc_all" if n == "all" else f"acc_{n}"


def table_budgets(cfg) -> dict[str, list]:
    """``{table: label budgets}`` this run trains. SynthFACS runs both FER analogues (Table 4 only
    where the scale lists ``budgets_rafdb``); a real FER dataset runs its own table (RAF-DB falls
    back to ``budgets`` when the scale has no ``budgets_rafdb``, so it never trains nothing); a
    balanced benchmark runs Table 1 or 2."""
    hp = cfg.hp
    if cfg.dataset == "synthfacs":
        out = {"table3": list(hp["budgets"])}
        if hp["budgets_rafdb"]:
            out["table4"] = list(hp["budgets_rafdb"])
        return out
    if cfg.dataset == "ferplus":
        return {"table3": list(hp["budgets"])}
    if cfg.dataset == "rafdb":
        return {"table4": list(hp["budgets_rafdb"] or hp["budgets"])}
    if cfg.dataset in SSL_BUDGETS:
        return {"table1" if cfg.dataset.startswith("cifar") else "table2": SSL_BUDGETS[cfg.dataset]}
    raise ValueError(f"Margin-Mix has no table for DATASET={cfg.dataset!r}; use one of "
                     f"synthfacs, ferplus, rafdb, {', '.join(SSL_BUDGETS)}")


def load_data(cfg) -> dict[str, tuple[FaceArrays, FaceArrays]]:
    """``{table: (training pool, test set)}`` on ``cfg.device`` for every table of :func:`table_budgets`.

    SynthFACS: training subjects 0-39, test subjects 40-59 (subject-independent), FER+ priors with
    contempt (8 classes, grey) for Table 3 and RAF-DB priors (7 classes, colour) for Table 4, in the
    preset's ``domain`` and ``wild_severity`` (``domain: wild, wild_severity: 0.1`` is the setting
    whose difficulty ``benchmarks/synthfacs_vs_ferplus.py`` measured closest to real FER+; a
    ``wild_severity`` below 1 with the lab domain is an error, since lab faces ignore it). Real
    data: ``fer_nb.data.registry`` at ``image_size`` (absent data is an error)."""
    hp, S, out = cfg.hp, cfg.hp["image_size"], {}
    domain, severity = hp.get("domain", "wild"), hp.get("wild_severity", 1.0)
    if cfg.dataset == "synthfacs" and domain != "wild" and severity != 1.0:
        raise ValueError(f"wild_severity={severity!r} scales SynthFACS's wild domain only, but domain={domain!r}; "
                         f"set domain='wild' (wild_severity=0.1 is the FER+-calibrated setting) or drop wild_severity")
    for table in table_budgets(cfg):
        if cfg.dataset == "synthfacs":
            priors, ch, contempt = FER_TABLES[table]
            kw = dict(domain=domain, image_size=S, class_priors=priors, channels=ch,
                      with_contempt=contempt, wild_severity=severity)
            from fer_nb.data import synthfacs
            train = synthfacs.generate(hp["n_train"], seed=11, n_subjects=40, subject_offset=0, device=cfg.device, **kw)
            test = synthfacs.generate(hp["n_test"], seed=12, n_subjects=20, subject_offset=40, device=cfg.device, **kw)
        else:
            from fer_nb.data import registry
            train = registry.load(cfg.dataset, cfg.data_root, split="train", image_size=S)
            test = registry.load(cfg.dataset, cfg.data_root, split="test", image_size=S)
        if table == "table3" and train.num_classes != 8:
            raise ValueError(f"Table 3 (FER+) needs the paper's 8 classes (contempt kept), got {train.class_names}")
        out[table] = (train.to(cfg.device), test.to(cfg.device))
    return out


def mixmatch_benchmark_hp(dataset: str) -> dict:
    """MixMatch's ``{T, K, alpha, lambda_u}`` for a Tables 1-2 benchmark (:data:`MIXMATCH_BENCHMARK_HP`,
    Berthelot et al. 2019); an unknown benchmark is an error naming the known ones."""
    if dataset not in MIXMATCH_BENCHMARK_HP:
        raise ValueError(f"no MixMatch settings for benchmark {dataset!r}: Tables 1-2 run on "
                         f"{', '.join(MIXMATCH_BENCHMARK_HP)} (add it to MIXMATCH_BENCHMARK_HP with Berthelot et "
                         f"al.'s values); FER data (synthfacs, ferplus, rafdb) runs Tables 3-4 through run_fer_table, "
                         f"with the preset's T and lambda_u_mixmatch")
    return dict(MIXMATCH_BENCHMARK_HP[dataset])


def build_method(cfg, method: str, model: nn.Module, num_classes: int, **over) -> SSLMethod:
    """One of :data:`METHODS` with the preset's hyper-parameters; ``over`` replaces MixMatch's
    (``T``, ``K``, ``alpha``, ``lambda_u``, ``rampup``) or MarginMix's keyword arguments
    (``ema_decay`` for every method). The supervised baseline and Mean Teacher take no other overrides."""
    hp = cfg.hp
    common = {"lr": hp["lr"], "ema_decay": over.pop("ema_decay", hp["ema_decay"]), "weight_decay": 0.02 * hp["lr"],
              "augment": Augment(flip=cfg.dataset != "svhn", pad=hp["image_size"] // 8)}
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(METHODS)}")
    if method in ("supervised", "mean_teacher") and over:
        raise ValueError(f"{method} takes no overrides besides ema_decay, got {sorted(over)}; overrides apply to "
                         f"mixmatch and margin_mix (set the preset's hyper-parameters through HP instead)")
    if method == "supervised":
        return Supervised(model, num_classes, mixup_alpha=hp["alpha"], **common)
    if method == "mean_teacher":
        return MeanTeacher(model, num_classes, consistency=hp["mt_consistency"], rampup=hp["rampup"], **common)
    if method == "mixmatch":
        kw = {"T": hp["T"], "K": hp["K"], "alpha": hp["alpha"], "lambda_u": hp["lambda_u_mixmatch"],
              "rampup": hp["rampup"], **over}
        return MixMatch(model, num_classes, **kw, **common)
    kw = {"T": hp["T"], "K": hp["K"], "alpha": hp["alpha"], "lambda_M": hp["lambda_M"], "lambda_u": hp["lambda_u"],
          "centroid_lr": hp["centroid_lr"], "rampup": hp["rampup"], **over}
    return MarginMix(model, num_classes, **kw, **common)


def run_one(cfg, data: dict, table: str, method: str, n_labels: int | str, seed: int, *, checkpoint: bool = True,
            **over) -> dict:
    """Train one (method, label budget, seed) run on ``data[table] = (pool, test)`` and evaluate the
    EMA model after recalibrating its BN statistics on training images (:func:`evaluate`).

    ``over`` goes to :func:`build_method` (Table 5's ablations, Tables 1-2's MixMatch settings) and
    into the run hash. The method trains the network through :func:`fer_nb.compiled.maybe_compile`
    (preset key ``compile_network``; ``"auto"``: CUDA graphs on CUDA, eager elsewhere); the EMA copy,
    the checkpoints and the evaluation use the eager module, whose parameters the compiled one shares. ``checkpoint=True`` trains through :func:`fer_nb.train.fit_or_load` (a re-run
    with the same hash loads the run); ``checkpoint=False`` trains the same steps through
    :func:`fer_nb.train.fit` and writes nothing, for callers whose data the run hash does not
    identify (``benchmarks/synthfacs_vs_ferplus.py`` trains on data it generates itself).

    Returns ``acc``, ``mean_acc`` (%), ``nc`` (one class takes >= 98 % of the test predictions),
    ``pred_hist``, ``predictions`` (the predicted class per test image, ``int64`` numpy array in
    test-set order) and the last training ``loss``."""
    hp = cfg.hp
    train, test = data[table]
    C = train.num_classes
    n = len(train) if n_labels == "all" else int(n_labels)
    lab_idx, unl_idx = balanced_label_split(train.labels["expression"].cpu(), n, C,
                                            torch.Generator().manual_seed(1000 + seed))
    lab, unl = train.subset(lab_idx), train.subset(unl_idx)
    seed_everything(seed)
    model = fast.prepare(WideResNet(C, hp["depth"], hp["widen_factor"], train.images.shape[1],
                                    bn_momentum=hp["bn_momentum"]), cfg.device)
    m = build_method(cfg, method, model, C, **dict(over))
    m.model = maybe_compile(model, hp["compile_network"], cfg.device)   # CUDA graphs on CUDA ("auto")
    pool = unl if (method != "supervised" and len(unl)) else None
    run = dict(modules={"model": model}, optimizers=m.optimizers(), train_step=m.train_step,
               train_batches=lambda ep: PairedBatches(lab, pool, hp["batch_size"], hp["steps"], seed, ep, cfg.device),
               epochs=hp["epochs"], extra_state=m.extra_state(), steps_per_epoch=hp["steps"],
               desc=f"{table} {method} n={n_labels} s{seed}")
    if checkpoint:
        rh = cfg.run_hash(table=table, method=method, n=n_labels, seed=seed, over=sorted(over.items()))
        hist = fit_or_load(checkpoint_path(cfg.out_dir, f"{table}-{method}-{n_labels}-s{seed}", rh), rh, **run)
    else:
        hist = fit(**run)
    return {**evaluate(cfg, m.eval_model, train, test, seed), "loss": hist.last().get("train/loss", float("nan"))}


def evaluate(cfg, model: nn.Module, train: FaceArrays, test: FaceArrays, seed: int) -> dict:
    """Recalibrate ``model``'s BN statistics on ``recal_batches`` shuffled training batches of
    ``4 x batch_size`` (generator seeded by ``seed``), then classify ``test``.

    Returns ``acc``, ``mean_acc`` (%), ``nc`` (the papers' "not converged": one class takes >= 98 %
    of the predictions), ``pred_hist`` (predictions per class) and ``predictions`` (the predicted
    class per test image, ``int64`` numpy array in test-set order)."""
    hp, C = cfg.hp, train.num_classes
    recal = train.batches(4 * hp["batch_size"], shuffle=True, generator=torch.Generator().manual_seed(seed),
                          device=cfg.device)
    recalibrate_bn(model, (b["image"] for b in recal), max_batches=hp["recal_batches"])
    pred = predict_classes(model, test, 256, cfg.device)
    yt = test.labels["expression"].cpu()
    return {"acc": 100 * accuracy(pred, yt), "mean_acc": 100 * mean_per_class_accuracy(pred, yt, C),
            "nc": collapsed(pred, C), "pred_hist": torch.bincount(pred, minlength=C).tolist(),
            "predictions": pred.numpy()}


def _cell(runs: list[dict], key: str) -> dict:
    """Mean +- std over the seeds that did not collapse; ``"nc"`` when every seed collapsed."""
    ok = [r["acc"] for r in runs if not r["nc"]]
    cell = {key: "nc"} if not ok else {key: float(np.mean(ok)),
                                        f"{key}_std": float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0}
    cell[f"nc_runs_{key[4:]}"] = float(sum(r["nc"] for r in runs))
    return cell


def run_fer_table(cfg, data: dict, table: str, budgets: list, seeds, log=print) -> tuple[dict, dict]:
    """Tables 3-4: every method x budget x seed. Returns (rows for :func:`fer_nb.report.compare`, raw runs)."""
    rows, results = {}, {}
    for method, row in METHOD_ROWS.items():
        for n in budgets:
            runs = [run_one(cfg, data, table, method, n, s) for s in seeds]
            results[(table, method, n)] = runs
            rows.setdefault(row, {}).update(_cell(runs, column(n)))
            log(f"{table} {row:22s} n={n!s:>5}: acc {[round(r['acc'], 1) for r in runs]} nc {[r['nc'] for r in runs]} "
                f"predictions/class (seed {seeds[0]}) {runs[0]['pred_hist']}")
    return rows, results


def run_ablation(cfg, data: dict, results: dict) -> dict:
    """Table 5: Margin-Mix at ``ablation_budget`` on the first seed, baseline + the preset's ``ablation`` rows."""
    n5, s0 = cfg.hp["ablation_budget"], cfg.seeds[0]
    base = results.get(("table3", "margin_mix", n5), [None])[0] or run_one(cfg, data, "table3", "margin_mix", n5, s0)
    rows = {"Baseline (T=0.25, lambda_M=1, lambda_u=0.4)": {"acc": "nc" if base["nc"] else base["acc"]}}
    for short in cfg.hp["ablation"]:
        name, over = ABLATIONS[short]
        r = run_one(cfg, data, "table3", "margin_mix", n5, s0, **over)
        rows[name] = {"acc": "nc" if r["nc"] else r["acc"]}
    return rows


def run_ssl_table(cfg, data: dict, table: str, budgets: list) -> dict:
    """Tables 1-2 (balanced benchmarks on disk): MixMatch and Margin-Mix error (%) per budget.

    MixMatch runs with Berthelot et al.'s settings for ``cfg.dataset`` (:data:`MIXMATCH_BENCHMARK_HP`:
    ``T = 0.5``, ``K = 2``, ``alpha = 0.75``, ``lambda_u`` 75 / 150 / 250 / 50 for CIFAR-10 / CIFAR-100 /
    SVHN / STL-10), not the preset's FER values (the Margin-Mix paper lowered ``T`` to 0.25 for FER
    only); Margin-Mix keeps the preset's (the paper, Section 4: ``lambda_M = 1``, ``lambda_u = 0.4``)."""
    settings = {"mixmatch": mixmatch_benchmark_hp(cfg.dataset), "margin_mix": {}}   # unknown benchmark: error first
    rows = {}
    for method, row in (("mixmatch", "MixMatch"), ("margin_mix", "MarginMix")):
        for n in budgets:
            err = [100 - run_one(cfg, data, table, method, n, s, **settings[method])["acc"] for s in cfg.seeds]
            rows.setdefault(row, {})[f"{cfg.dataset}_{n}"] = float(np.mean(err))
            rows[row][f"{cfg.dataset}_{n}_std"] = float(np.std(err, ddof=1)) if len(err) > 1 else 0.0
    return rows


def ordering_summary(data: dict, results: dict, plan: dict, scale: str = "small") -> tuple[dict, list[str]]:
    """Per table and budget: mean accuracy of the converged seeds per method, Margin-Mix minus
    MixMatch / supervised, nc counts, the majority-class rate; and the ordering lines to print
    (marked as a pipeline check at ``smoke``, where they are not findings)."""
    summary, lines = {}, []
    for table, budgets in plan.items():
        if table not in FER_TABLES:
            continue
        yt = data[table][1].labels["expression"].cpu()
        majority = 100 * float(torch.bincount(yt).max()) / len(yt)  # always predicting the top class
        summary[f"{table}_majority_rate"] = majority
        for n in budgets:
            mean = {}
            for m in METHOD_ROWS:
                runs = results[(table, m, n)]
                summary[f"{table}_{m}_nc_{n}"] = float(sum(r["nc"] for r in runs))
                ok = [r["acc"] for r in runs if not r["nc"]]
                if ok:
                    mean[m] = summary[f"{table}_{m}_acc_{n}"] = float(np.mean(ok))
            for other in ("mixmatch", "supervised"):
                if "margin_mix" in mean and other in mean:
                    summary[f"{table}_marginmix_minus_{other}_{n}"] = mean["margin_mix"] - mean[other]
            order = sorted(mean, key=mean.get, reverse=True)
            lines.append(f"{table} n={n}: ordering (converged runs) {' > '.join(f'{m} {mean[m]:.1f}' for m in order)}; "
                         f"majority-class rate {majority:.1f} %, above it: {[m for m in order if mean[m] > majority]}")
    if scale == "smoke":
        lines = ["[smoke run: a pipeline check, not a finding; read the recorded run] " + line for line in lines]
    summary["runs"] = float(sum(len(v) for v in results.values()))
    summary["nc_runs"] = float(sum(r["nc"] for v in results.values() for r in v))
    return summary, lines


def plot_accuracy_vs_labels(data: dict, results: dict, plan: dict):
    """Test accuracy against the label budget per method (mean +- std over seeds), one panel per FER table."""
    import matplotlib.pyplot as plt

    tables = [t for t in plan if t in FER_TABLES]
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.2), squeeze=False)
    for ax, table in zip(axes[0], tables):
        pool = len(data[table][0])
        xs = [pool if n == "all" else n for n in plan[table]]
        for method, row in METHOD_ROWS.items():
            accs = [[r["acc"] for r in results[(table, method, n)]] for n in plan[table]]
            ax.errorbar(xs, [np.mean(a) for a in accs], yerr=[np.std(a) for a in accs], marker="o", capsize=3,
                        label=row)
        ax.set_xscale("log")
        ax.set(xlabel="labelled images", ylabel="test accuracy (%)", title=f"{table} ({data[table][0].name})")
    axes[0][0].legend(fontsize=9)
    fig.tight_layout()
    return fig
