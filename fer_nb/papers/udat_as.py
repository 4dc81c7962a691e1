"""UDAT / UDAT-AS (Takashima et al.): the training step and the experiment loop of Tables I and II.

The paper's contribution as code, apart from the infrastructure it uses:

* :func:`udat_step`: one update of Eq. 19-21 (Eq. 9-11 for the softmax domain head): the label loss
  ``L_y`` on the labelled source batch (Eq. 7 / 17) plus the domain loss ``L_d`` / ``L_r`` on source +
  target (Eq. 8 / 18) through the gradient reversal layer, one ``backward()``, one SGD step.
* :func:`train_run` / :func:`run`: one row of a table for one lambda and one seed;
  :func:`run_tables`: every row of Tables I and II in both directions, lambda chosen per table,
  direction and method on the labelled *target validation* pool with the first seed (the paper does
  not say which data chose its lambda), the other seeds at the chosen lambda.
* :func:`load_domains`: the two domains A and B of ``DATASET``: SynthFACS lab/wild, or any ordered pair
  ``"<source>-<target>"`` of registered datasets labelled with the 7 basic expressions
  (:data:`SEVEN_EXPRESSION_DATASETS`), each read from ``DATA_ROOT`` by its own protocol
  (:data:`PROTOCOLS`). Contempt (FER+, AffectNet, CK+) is not one of the 7: those images are dropped.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from fer_nb import fast, metrics, train
from fer_nb.data.schema import EXPRESSIONS, FaceArrays
from fer_nb.device import autocast
from fer_nb.models.udat import UDATNet, udat_losses
from fer_nb.progress import bar
from fer_nb.seed import seed_everything

__all__ = [
    "METHODS", "DIRECTIONS", "CLAIM", "SEVEN_EXPRESSION_DATASETS", "PROTOCOLS", "PAIR_SEP", "SAME_IMAGES",
    "dataset_names", "parse_dataset", "seven_classes", "three_channels", "real_pools", "load_domains",
    "make_net", "sgd", "udat_step", "paired_batches", "evaluate", "train_run", "run", "run_tables",
    "cell", "assemble_tables", "metric_key", "ordering", "timing",
]

#: The five rows of Tables I and II: which domain is labelled and which domain head (None = no G_d).
METHODS: dict[str, dict[str, Any]] = {
    "Train on target": {"head": None, "labelled": "target"},
    "Source only": {"head": None, "labelled": "source"},
    "UDAT (using softmax loss)": {"head": "softmax", "labelled": "source"},
    "UDAT-AS": {"head": "angular", "labelled": "source"},
    "UDAT-AS with margin": {"head": "angular_margin", "labelled": "source"},
}
#: The two columns of each table: (source, target) domain keys.
DIRECTIONS: dict[str, tuple[str, str]] = {"A_to_B": ("A", "B"), "B_to_A": ("B", "A")}
#: The paper's claim, best first (Sec. VI-C).
CLAIM = ["Train on target", "UDAT-AS with margin", "UDAT-AS", "UDAT (using softmax loss)", "Source only"]

#: How each dataset gives train / validation / test pools: (training split, test split or ``None`` =
#: subject-disjoint test and validation subjects drawn from the one split, loader keywords).
#: A dataset with an official test split holds out a random tenth of its training split for validation.
PROTOCOLS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "fer2013": ("train", "test", {}),
    "ferplus": ("train", "test", {}),
    "rafdb": ("train", "test", {}),
    "sfew": ("train", "val", {}),            # Test/ has no public labels: the validation set is the test
    "affectnet": ("train", "val", {}),       # the test set is not public: the validation set is the test
    "ckplus": ("all", None, {"neutral_first": True}),  # first frame of each sequence = neutral
    "jaffe": ("all", None, {}),
}
#: Registered datasets whose labels cover the 7 basic expressions (neutral + 6); others are refused
#: (e.g. MMI has no neutral class, AFEW-VA/Aff-Wild are valence-arousal, EmotioNet is AU-centred).
SEVEN_EXPRESSION_DATASETS: tuple[str, ...] = tuple(PROTOCOLS)
#: ``DATASET = "<source>" + PAIR_SEP + "<target>"``; no registry name contains it and it is safe in file names.
PAIR_SEP = "-"
#: Pairs that share their images (FER+ relabels FER2013's images): no domain shift, refused.
SAME_IMAGES = (frozenset({"fer2013", "ferplus"}),)
#: Display names of the domains.
DISPLAY = {"fer2013": "FER2013", "ferplus": "FER+", "rafdb": "RAF-DB", "sfew": "SFEW", "affectnet": "AffectNet",
           "ckplus": "CK+", "jaffe": "JAFFE"}


def dataset_names() -> list[str]:
    """Every ``DATASET`` this chapter accepts: ``synthfacs`` and each ordered pair of 7-expression datasets."""
    return ["synthfacs"] + [f"{a}{PAIR_SEP}{b}" for a, b in itertools.permutations(SEVEN_EXPRESSION_DATASETS, 2)
                            if frozenset((a, b)) not in SAME_IMAGES]


def parse_dataset(dataset: str) -> tuple[str, str] | None:
    """``"ferplus-ckplus"`` -> ``("ferplus", "ckplus")`` (A = first, B = second); ``"synthfacs"`` -> ``None``.

    Both directions of the pair are run (the two columns of Tables I and II); the order only names
    A and B. Raises ``ValueError`` naming the fix for anything that is not a pair of two different
    registered datasets labelled with the 7 basic expressions.
    """
    from fer_nb.data.registry import NAMES

    if not isinstance(dataset, str):
        raise TypeError(f"DATASET must be a string such as 'synthfacs' or 'fer2013-rafdb', got {dataset!r}")
    if dataset == "synthfacs":
        return None
    parts = dataset.split(PAIR_SEP)
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"DATASET {dataset!r}: use 'synthfacs' or two dataset names joined by {PAIR_SEP!r}, "
                         f"e.g. 'fer2013{PAIR_SEP}rafdb' (the paper's pair) or 'ferplus{PAIR_SEP}ckplus'")
    a, b = parts
    for name in parts:
        if name not in NAMES:
            raise ValueError(f"DATASET {dataset!r}: {name!r} is not a registered dataset; "
                             f"use two of {list(SEVEN_EXPRESSION_DATASETS)}")
        if name not in SEVEN_EXPRESSION_DATASETS:
            raise ValueError(f"DATASET {dataset!r}: {name!r} is not labelled with the 7 basic expressions "
                             f"(neutral, anger, disgust, fear, happiness, sadness, surprise), so a 7-class "
                             f"classifier cannot be trained or tested on it; "
                             f"use two of {list(SEVEN_EXPRESSION_DATASETS)}")
    if a == b:
        raise ValueError(f"DATASET {dataset!r}: source and target are the same dataset, so there is no domain "
                         f"shift to adapt to; name two different datasets (the pair runs in both directions)")
    if frozenset((a, b)) in SAME_IMAGES:
        raise ValueError(f"DATASET {dataset!r}: FER+ relabels FER2013's own images, so the two share every image "
                         f"and there is no domain shift; pair either with another dataset, "
                         f"e.g. 'fer2013{PAIR_SEP}rafdb'")
    return a, b


def seven_classes(ds: FaceArrays) -> FaceArrays:
    """Keep the 7 basic expressions: drop contempt (canonical index 7) and unlabelled images (-1).

    FER+, AffectNet and CK+ have an 8th class, contempt, which the paper's 7-class task (FER2013,
    RAF-DB) lacks; its images are removed rather than merged into another class.
    """
    y = ds.labels["expression"]
    keep = torch.nonzero((y >= 0) & (y < 7)).flatten()
    if len(keep) == 0:
        raise ValueError(f"{ds.name}: no image is labelled with one of the 7 basic expressions")
    sub = ds.subset(keep)
    return FaceArrays(sub.images, sub.labels, ds.name, EXPRESSIONS[:7], dict(ds.info, contempt_dropped=int(
        (y == 7).sum())))


def three_channels(ds: FaceArrays) -> FaceArrays:
    """Grayscale repeated to RGB (the paper's input is 224x224x3 for FER2013 as well)."""
    if ds.images.shape[1] == 3:
        return ds
    return FaceArrays(ds.images.expand(-1, 3, -1, -1).contiguous(), ds.labels, ds.name, ds.class_names, ds.info)


def _cap(ds: FaceArrays, n: int | None, seed: int) -> FaceArrays:
    if n and len(ds) > n:
        return ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n])
    return ds


def real_pools(name: str, root, image_size: int, n_train: int, n_val: int, n_test: int, *, seed: int = 0,
               cache: bool = True) -> dict[str, FaceArrays]:
    """Train / validation / test pools of real dataset ``name`` (7 classes, RGB, ``image_size`` px).

    Protocol (:data:`PROTOCOLS`): an official test split is the test pool and a random tenth of the
    training split is the validation pool; a dataset with one split (CK+, JAFFE) is split by subject
    (about 20% of the subjects test, 15% of the rest validation), so no person is in two pools.
    Each pool is capped at ``n_*`` images (a random subset).
    """
    from fer_nb.data import registry
    from fer_nb.data.splits import train_val_by_subject

    if name not in PROTOCOLS:
        raise ValueError(f"{name!r} has no UDAT-AS protocol; use one of {list(PROTOCOLS)}")
    train_split, test_split, kw = PROTOCOLS[name]

    def load(split):
        ds = registry.load(name, root, split=split, image_size=image_size, channels=3, cache=cache, **kw)
        return three_channels(seven_classes(ds))

    full = load(train_split)
    g = torch.Generator().manual_seed(7 + seed)
    if test_split is not None:
        perm = torch.randperm(len(full), generator=g)
        n_hold = max(1, len(full) // 10)
        train_ds, val_ds, test_ds = full.subset(perm[n_hold:]), full.subset(perm[:n_hold]), load(test_split)
    else:
        subjects = full.labels["subject"]
        rest, test_idx = train_val_by_subject(subjects, 0.2, seed=seed)
        tr, va = train_val_by_subject(subjects[rest], 0.15, seed=seed + 1)
        train_ds, val_ds, test_ds = full.subset(rest[tr]), full.subset(rest[va]), full.subset(test_idx)
    return {"train": _cap(train_ds, n_train, 1), "val": _cap(val_ds, n_val, 2), "test": _cap(test_ds, n_test, 3)}


def load_domains(cfg, *, cache: bool = True) -> dict[str, Any]:
    """Domains A and B of ``cfg.dataset`` (train / val / test each) and the identity pre-training pool.

    Returns ``{"names": {"A": ..., "B": ...}, "data": {"A": pools, "B": pools}, "pretrain": FaceArrays with
    identity labels in ``expression``, "n_ids": int}``. The pre-training pool (the VGGFace stand-in of
    Table II) is a third SynthFACS pool of both domains with subjects disjoint from every other pool.
    """
    from fer_nb.data import concat, synthfacs

    pair = parse_dataset(cfg.dataset)
    gen_device = cfg.device if cfg.device.type == "cuda" else "cpu"

    def synth(domain, n, seed, offset, n_subjects):
        ds = synthfacs.generate(n, seed=seed, domain=domain, image_size=cfg.image_size, n_subjects=n_subjects,
                                subject_offset=offset, wild_severity=cfg.wild_severity, device=gen_device)
        return three_channels(ds)

    if pair is None:
        names = {"A": "lab", "B": "wild"}
        data = {}
        for k, (key, dom) in enumerate(names.items()):
            base = 10_000 * (k + 1)
            data[key] = {"train": synth(dom, cfg.n_train, 11 + k, base, cfg.n_subjects),
                         "val": synth(dom, cfg.n_val, 21 + k, base + 1000, cfg.n_subjects),
                         "test": synth(dom, cfg.n_test, 31 + k, base + 2000, cfg.n_subjects)}
    else:
        names = {"A": DISPLAY[pair[0]], "B": DISPLAY[pair[1]]}
        data = {key: real_pools(name, cfg.data_root, cfg.image_size, cfg.n_train, cfg.n_val, cfg.n_test,
                                cache=cache) for key, name in zip("AB", pair)}
    half = max(1, cfg.pretrain_subjects // 2)
    parts = [synth(dom, cfg.n_pretrain // 2, 41 + k, 50_000 + k * half, half)
             for k, dom in enumerate(("lab", "wild"))]
    pre = concat(parts, name="pretrain-pool")
    domain_of = torch.cat([torch.full((len(p),), k, device=pre.images.device) for k, p in enumerate(parts)])
    _, ids = torch.unique(pre.labels["subject"] + 1_000_000 * domain_of, return_inverse=True)
    n_ids = int(ids.max()) + 1
    pre = FaceArrays(pre.images, {"expression": ids}, "identities", tuple(str(i) for i in range(n_ids)), {})
    data = {k: {s: d.to(cfg.device) for s, d in v.items()} for k, v in data.items()}
    return {"names": names, "data": data, "pretrain": pre.to(cfg.device), "n_ids": n_ids}


def make_net(cfg, head: str | None = None, lam: float = 0.0, num_classes: int = 7) -> UDATNet:
    """The preset's modified VGG16 with domain head ``head`` (None or one of ``DOMAIN_HEADS``) on ``cfg.device``."""
    net = UDATNet(3, num_classes, width=cfg.width, fc_dim=cfg.fc_dim, domain_head=head, domain_dim=cfg.domain_dim,
                  lambda_=lam, scale=cfg.angular_scale, margin=cfg.angular_margin, overflow=cfg.overflow,
                  batch_norm=cfg.batch_norm, pool_size=cfg.pool_size, dropout=cfg.dropout)
    return fast.prepare(net, cfg.device)


def sgd(cfg, net: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD of Eq. 4 / 19-21 (with the preset's momentum and weight decay; fused on CUDA)."""
    return fast.optimizer("sgd", net.parameters(), cfg.lr, cfg.device, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)


def udat_step(net: UDATNet, opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
              device: torch.device) -> dict[str, torch.Tensor]:
    """One UDAT / UDAT-AS update, Eq. 19-21 (Eq. 9-11 with the softmax domain head).

    ``L = L_y + L_d``: ``L_y`` is the cross-entropy of the labelled source batch (Eq. 7 / 17), ``L_d``
    the domain classifier's loss over the source batch (domain 0) and ``batch["target_image"]``
    (domain 1, labels unused; Eq. 8 / 18) through the gradient reversal layer. One ``backward()``
    then gives ``G_y`` the gradient of ``L_y`` (Eq. 19), ``G_d`` that of ``L_d`` (Eq. 20) and ``G_f``
    ``dL_y/dtheta_f - lambda dL_d/dtheta_f`` (Eq. 21); one SGD step applies all three. Without a
    target batch (or a domain head) it is the plain supervised step of Eq. 3-4. bf16 autocast on
    CUDA (and on CPU with ``FER_NB_CPU_BF16=1``); returns detached scalar tensors (no host sync).
    """
    with autocast(device):
        out = udat_losses(net, batch["image"], batch["expression"], batch.get("target_image"))
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return {k: v.detach() for k, v in out.items()}


def paired_batches(labelled: FaceArrays, unlabelled: FaceArrays | None, batch_size: int, device: torch.device,
                   seed: int, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled labelled batches; with ``unlabelled`` each also carries an equally large ``target_image``
    batch, drawn from a reshuffled endless stream of the target pool (its labels are never read)."""
    g = torch.Generator().manual_seed(1_000 * seed + epoch)
    it = labelled.batches(batch_size, shuffle=True, generator=g, device=device, drop_last=True)
    if unlabelled is None:
        yield from it
        return
    if len(unlabelled) < batch_size:
        raise ValueError(f"the unlabelled target pool has {len(unlabelled)} images, fewer than batch_size "
                         f"{batch_size}; lower batch_size or use more target images")
    gu = torch.Generator().manual_seed(1_000 * seed + epoch + 500)
    targets = itertools.chain.from_iterable(
        unlabelled.batches(batch_size, shuffle=True, generator=gu, device=device, drop_last=True)
        for _ in itertools.count())
    for b in it:
        b["target_image"] = next(targets)["image"]
        yield b


@torch.no_grad()
def evaluate(net: UDATNet, ds: FaceArrays, device: torch.device, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy (%) on ``ds``, the non-converged flag (every prediction one class) and the FC2 features."""
    def fn(m, b):
        with autocast(device):
            f = m.features(b["image"])
            logits = m.classify(f)
        return {"logits": logits.float(), "feat": f.float()}

    out = train.predict(net, ds.batches(batch_size, device=device), fn=fn, keys=("expression",))
    pred = out["logits"].argmax(1)
    return {"acc": 100 * metrics.accuracy(pred, out["expression"]), "nc": int(pred.unique().numel() == 1),
            "feat": out["feat"]}


def train_run(cfg, net: UDATNet, labelled: FaceArrays, unlabelled: FaceArrays | None, seed: int, name: str,
              run_hash: str, epochs: int, progress: bool = False) -> train.History:
    """Train ``net`` with :func:`udat_step` for ``epochs`` epochs of the labelled pool (checkpointed)."""
    opt = sgd(cfg, net)
    if len(labelled) < cfg.batch_size:
        raise ValueError(f"{name}: the labelled pool has {len(labelled)} images, fewer than batch_size "
                         f"{cfg.batch_size}; lower batch_size or use more images")
    return train.fit_or_load(
        train.checkpoint_path(cfg.out_dir, name, run_hash), run_hash,
        modules={"net": net}, optimizers={"opt": opt},
        train_step=lambda batch, ctx: udat_step(net, opt, batch, cfg.device),
        train_batches=lambda ep: paired_batches(labelled, unlabelled, cfg.batch_size, cfg.device, seed, ep),
        epochs=epochs, steps_per_epoch=len(labelled) // cfg.batch_size, desc=name, progress=progress)


def run(cfg, data: Mapping, table: str, direction: str, method: str, lam: float, seed: int,
        init: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train one row of one table at one lambda and seed; return target val/test accuracy (%), the nc flag,
    the history, the seconds it took and the FC2 test features of both domains (for Figure 3)."""
    src, tgt = DIRECTIONS[direction]
    spec = METHODS[method]
    seed_everything(seed)
    net = make_net(cfg, spec["head"], lam)
    if init is not None:
        net.load_feature_state_dict(init)
    labelled = data[tgt if spec["labelled"] == "target" else src]["train"]
    unlabelled = data[tgt]["train"] if spec["head"] else None
    rh = cfg.run_hash(table=table, direction=direction, method=method, lam=lam, seed=seed)
    t0 = time.perf_counter()
    name = f"{table}-{direction}-{spec['head']}-{spec['labelled']}-l{lam}-s{seed}"
    hist = train_run(cfg, net, labelled, unlabelled, seed, name, rh, cfg.epochs)
    val, test, src_test = (evaluate(net, data[k][s], cfg.device)
                           for k, s in ((tgt, "val"), (tgt, "test"), (src, "test")))
    return {"val": val["acc"], "test": test["acc"], "nc": test["nc"], "lambda": lam, "history": hist,
            "seconds": time.perf_counter() - t0, "feat_source": src_test["feat"], "feat_target": test["feat"]}


def run_tables(cfg, data: Mapping, grids: Mapping[str, list[float]], inits: Mapping[str, Any],
               progress: bool = True) -> tuple[dict, dict, dict]:
    """Every row of every table in ``grids`` (``{table: lambda grid}``), both directions.

    First seed: each UDAT variant at every lambda of the grid, the plain rows at lambda 0; the lambda
    with the best *target validation* accuracy (first best) is chosen per table, direction and method.
    Other seeds: the chosen lambda only. Returns ``(results, sweeps, chosen)`` keyed by
    ``(table, direction, method)``: ``results`` one run per seed, ``sweeps`` the first seed's runs.
    """
    plan = [(t, d, m, lam) for t, d, m in itertools.product(grids, DIRECTIONS, METHODS)
            for lam in (grids[t] if METHODS[m]["head"] else [0.0])]
    first = cfg.seeds[0]
    sweeps: dict = {}
    for t, d, m, lam in bar(plan, desc=f"seed {first}: sweep", disable=not progress):
        sweeps.setdefault((t, d, m), []).append(run(cfg, data, t, d, m, lam, first, inits[t]))
    chosen = {k: max(rs, key=lambda r: r["val"])["lambda"] for k, rs in sweeps.items()}
    results = {k: [max(rs, key=lambda r: r["val"])] for k, rs in sweeps.items()}
    rest = [(k, s) for k in sweeps for s in cfg.seeds[1:]]
    for (t, d, m), s in bar(rest, desc="other seeds, chosen lambda", disable=not progress):
        results[(t, d, m)].append(run(cfg, data, t, d, m, chosen[(t, d, m)], s, inits[t]))
    return results, sweeps, chosen


def cell(rs: list[Mapping]) -> dict[str, Any]:
    """A table cell: mean and sample sd of the test accuracy over seeds, ``"nc"`` if a seed is non-converged."""
    if any(r["nc"] for r in rs):
        return {"value": "nc"}
    vals = [r["test"] for r in rs]
    return {"value": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}


def assemble_tables(results: Mapping, sweeps: Mapping, chosen: Mapping, seeds) -> dict[str, dict]:
    """``metrics.json`` tables: each paper table (rows x ``acc_<direction>``), the lambda sweep, per-seed accuracy."""
    tables: dict[str, dict] = {}
    per_seed = {}
    for (table, direction, method), rs in results.items():
        c = cell(rs)
        row = tables.setdefault(table, {}).setdefault(method, {})
        row[f"acc_{direction}"] = c["value"]
        if c["value"] != "nc":
            row[f"acc_{direction}_std"] = c["std"]
        per_seed[f"{table} {direction} {method}"] = {f"seed{s}": r["test"] for s, r in zip(seeds, rs)}
    tables["lambda_selection"] = {
        " ".join(k): {"lambda": chosen[k], **{f"val_acc_lambda_{r['lambda']:g}": r["val"] for r in rs}}
        for k, rs in sweeps.items() if METHODS[k[2]]["head"]}
    tables["per_seed_test_acc"] = per_seed
    return tables


def metric_key(*parts: str) -> str:
    """``metrics.json`` summary key of ``parts``: joined by ``_``, spaces to ``_``, brackets dropped."""
    return "_".join(parts).replace(" ", "_").replace("(", "").replace(")", "")


def ordering(results: Mapping, table: str, direction: str) -> tuple[bool, list[str], list[str], dict[str, float]]:
    """Does the paper's ordering :data:`CLAIM` hold for one table and direction?

    Returns ``(holds, ours, nc_rows, summary)``: ``holds`` needs strictly decreasing means in the
    claim's order and no nc row; ``ours`` is our ordering of the means (a non-converged row ranks below
    every converged one); ``nc_rows`` the rows with an nc seed; ``summary`` the mean over seeds of each
    neighbouring difference in the claim (and its sample sd) for ``metrics.json``.
    """
    nc_rows = [m for m in CLAIM if any(r["nc"] for r in results[(table, direction, m)])]
    mean = {m: float(np.mean([r["test"] for r in results[(table, direction, m)]])) for m in CLAIM}
    ours = sorted(CLAIM, key=lambda m: (m in nc_rows, -mean[m]))
    summary = {}
    for hi, lo in zip(CLAIM, CLAIM[1:]):
        pairs = zip(results[(table, direction, hi)], results[(table, direction, lo)])
        diffs = [a["test"] - b["test"] for a, b in pairs]
        summary[metric_key(table, direction, hi, "minus", lo)] = float(np.mean(diffs))
        summary[metric_key(table, direction, hi, "minus", lo, "sd")] = (
            float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0)
    strictly = all(mean[hi] > mean[lo] for hi, lo in zip(CLAIM, CLAIM[1:]))  # ties do not hold
    holds = ours == CLAIM and not nc_rows and strictly
    summary[metric_key(table, direction, "ordering_holds")] = float(holds)
    summary[metric_key(table, direction, "nc_rows")] = float(len(nc_rows))
    return holds, ours, nc_rows, summary


def timing(cfg, sweeps: Mapping, results: Mapping, table2_run: bool) -> dict[str, float]:
    """Measured seconds per plain / UDAT run and, when Table II was skipped, its projected cost in minutes
    (same protocol as Table I, or only Table I's chosen lambdas; identity pre-training priced per step)."""
    runs = [(k, r) for k, rs in sweeps.items() for r in rs] + [(k, r) for k, rs in results.items() for r in rs[1:]]
    sec = {kind: [r["seconds"] for (_, _, m), r in runs if bool(METHODS[m]["head"]) == (kind == "udat")]
           for kind in ("plain", "udat")}
    out = {"mean_seconds_per_plain_run": float(np.mean(sec["plain"])),
           "mean_seconds_per_udat_run": float(np.mean(sec["udat"])),
           "training_seconds": float(sum(r["seconds"] for _, r in runs))}
    if not table2_run:
        n_seeds, n_dir = len(cfg.seeds), len(DIRECTIONS)
        per_step = out["mean_seconds_per_plain_run"] / max(1, (cfg.n_train // cfg.batch_size) * cfg.epochs)
        pre_s = per_step * (cfg.n_pretrain // cfg.batch_size) * cfg.pretrain_epochs
        plain_s = n_dir * 2 * n_seeds * out["mean_seconds_per_plain_run"]
        udat = out["mean_seconds_per_udat_run"]
        out["table2_projected_minutes_same_protocol"] = (
            pre_s + plain_s + n_dir * 3 * (len(cfg.lambdas) + n_seeds - 1) * udat) / 60
        out["table2_projected_minutes_chosen_lambda_only"] = (pre_s + plain_s + n_dir * 3 * n_seeds * udat) / 60
    return out
