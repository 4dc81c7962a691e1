"""Liu et al. (CVPRW 2017): (N+M)-tuple pre-training / fine-tuning steps and the experiment loop.

The loss itself (Eq. 3, 8, 10 and Algorithm 1's online positive mining) is
:class:`fer_nb.losses.nm_tuple_clusters.NMTupleClustersLoss`; the identity-aware tuples come from
:class:`fer_nb.data.samplers.IdentityAwareSampler`; the two-branch network (Eq. 13) is
:class:`fer_nb.models.inception_fer.InceptionFER`. This module holds what the paper does with them:

* :func:`pretrain_step` - softmax pre-training of the convolutional groups and the EC branch
  (Sec. 5.2, FER2013 in the paper).
* :func:`finetune_step` - one fine-tuning step on a batch of identity-aware tuples: softmax on
  the queries plus ``alpha`` times the metric loss on the tuple (Sec. 5.3; "the weights of two
  loss functions are set equally").
* :func:`load_protocols` - the subject-independent protocols (CK+ 8 folds, last three frames;
  MMI 10 folds, three middle frames; SFEW train/val) on SynthFACS or on the real data, and the
  pre-training pool (:func:`check_protocol` validates ``DATASET`` / ``PRETRAIN_DATASET``).
* :func:`run_experiments` - pre-train, then every variant on every fold; :func:`sequence_decision`,
  :func:`identity_leakage` and the table builders turn the outputs into the paper's tables.

Both training stages run the network through :func:`fer_nb.compiled.maybe_compile` (preset key
``compile_network``; ``"auto"``: CUDA graphs on CUDA, where the Inception net at 48 px is bound by kernel
launches, and eager elsewhere); evaluation and checkpoints use the eager module, which shares its weights.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from fer_nb import fast, metrics, train
from fer_nb.compiled import maybe_compile
from fer_nb.data import augment, splits
from fer_nb.data.face_crop import crop_for, equalize, to_gray
from fer_nb.data.samplers import IdentityAwareSampler, tuple_groups
from fer_nb.data.schema import EXPRESSIONS, FaceArrays
from fer_nb.device import autocast
from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
from fer_nb.models.inception_fer import InceptionFER
from fer_nb.seed import seed_everything

CK_NAMES = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
MMI_NAMES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
SFEW_NAMES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
ABBR = {"anger": "AN", "contempt": "CO", "disgust": "DI", "fear": "FE", "happiness": "HA",
        "neutral": "NE", "sadness": "SA", "surprise": "SU"}
#: variant -> (branches, metric loss)
VARIANTS: dict[str, tuple[int, str]] = {
    "1B(N+1)Softmax": (1, "nplus1"),
    "2B(N+1)Softmax": (2, "nplus1"),
    "1B(N+M)Softmax": (1, "nm"),
    "2B(N+M)Softmax": (2, "nm"),
}
PROTOCOL_DATASETS = ("synthfacs", "ckplus", "mmi", "sfew")
PRETRAIN_DATASETS = ("synthfacs", "fer2013", "ferplus")
TABLE_OF = {"ckplus": "table1", "mmi": "table2", "sfew": "table4"}


# ----------------------------------------------------------------------------- data
def restrict(ds: FaceArrays, names: tuple[str, ...]) -> FaceArrays:
    """Keep the classes ``names`` (in that order), re-index ``expression`` to 0..K-1, make the
    images grey and histogram-equalised (Liu et al.'s preprocessing)."""
    y = ds.labels["expression"]
    lut = torch.full((len(ds.class_names),), -1, dtype=torch.long, device=y.device)
    for i, nm in enumerate(names):
        if nm in ds.class_names:
            lut[ds.class_names.index(nm)] = i
    new = lut[y.clamp_min(0)].masked_fill(y < 0, -1)
    keep = (new >= 0).nonzero().squeeze(1)
    out = ds.subset(keep)
    out.labels["expression"] = new[keep]
    out = to_gray(out)
    return FaceArrays(equalize(out.images), out.labels, out.name, tuple(names), out.info)


def check_protocol(cfg) -> None:
    """``DATASET`` picks the fine-tuning protocols, ``PRETRAIN_DATASET`` (hp ``pretrain_dataset``)
    the softmax pre-training pool; a real one of either needs ``DATA_ROOT``."""
    if cfg.dataset not in PROTOCOL_DATASETS:
        raise ValueError(f"DATASET={cfg.dataset!r} is not a fine-tuning protocol; use one of {PROTOCOL_DATASETS} "
                         "(FER2013 / FER+ are pre-training sets: pass them as PRETRAIN_DATASET)")
    if cfg.pretrain_dataset not in PRETRAIN_DATASETS:
        raise ValueError(f"PRETRAIN_DATASET={cfg.pretrain_dataset!r}; use one of {PRETRAIN_DATASETS}")
    if cfg.pretrain_dataset != "synthfacs" and cfg.data_root is None:
        raise ValueError(f"PRETRAIN_DATASET={cfg.pretrain_dataset!r} needs the data on disk: pass DATA_ROOT (or set "
                         "FER_NB_DATA), or use PRETRAIN_DATASET='synthfacs'")


def prior(names, with_contempt: bool) -> list[float]:
    """SynthFACS class weights in canonical order: 1 for the protocol's classes, 0 otherwise."""
    canon = EXPRESSIONS if with_contempt else EXPRESSIONS[:7]
    return [1.0 if nm in names else 0.0 for nm in canon]


def clip_frames(seq: FaceArrays, where: str) -> torch.Tensor:
    """Rows of three frames per SynthFACS clip: ``"apex"`` = the last three of the clip cut at its
    apex (CK+ clips end at the peak), ``"middle"`` = the three middle frames (MMI)."""
    frames = seq.info["frames"]
    n_seq = len(seq) // frames
    curve = seq.info["curve"].reshape(n_seq, frames).cpu()
    if where == "apex":
        offs = curve.argmax(1).clamp_min(2)[:, None] + torch.arange(-2, 1)[None, :]
    else:
        offs = ((frames - 3) // 2 + torch.arange(3))[None, :].expand(n_seq, 3)
    return (torch.arange(n_seq)[:, None] * frames + offs).reshape(-1)


def _synth_protocol(cfg, kind: str) -> dict:
    from fer_nb.data import synthfacs

    h = cfg.image_size
    if kind in ("ckplus", "mmi"):
        ck = kind == "ckplus"
        names = CK_NAMES if ck else MMI_NAMES
        seq = synthfacs.generate_sequences(cfg.ck_sequences if ck else cfg.mmi_sequences, cfg.frames,
                                           seed=100 if ck else 200, image_size=h, n_subjects=cfg.n_subjects,
                                           subject_offset=1000 if ck else 2000, with_contempt=ck,
                                           class_priors=prior(names, ck), channels=1)
        data = restrict(seq.subset(clip_frames(seq, "apex" if ck else "middle")), names)
        return {"data": data, "k": cfg.ck_folds if ck else cfg.mmi_folds, "identities": True}
    tr = synthfacs.generate(cfg.sfew_train, seed=300, domain="wild", image_size=h, channels=1,
                            n_subjects=cfg.sfew_subjects, subject_offset=3000)
    va = synthfacs.generate(cfg.sfew_val, seed=400, domain="wild", image_size=h, channels=1,
                            n_subjects=max(2, cfg.sfew_subjects // 2), subject_offset=4000)
    return {"train": restrict(tr, SFEW_NAMES), "val": restrict(va, SFEW_NAMES), "identities": True}


def _real_protocol(cfg, kind: str) -> dict:
    from fer_nb.data import registry

    def load(split=None, **kw):
        return registry.load(kind, cfg.data_root, split=split, image_size=cfg.image_size, channels=1, **kw)

    if kind == "sfew":
        tr, va = restrict(load("train"), SFEW_NAMES), restrict(load("val"), SFEW_NAMES)
        known = bool((tr.labels["subject"] >= 0).all())
        if not known:   # SFEW releases no identities: every image is its own "subject" (see the chapter)
            tr.labels["subject"] = torch.arange(len(tr))
            va.labels["subject"] = torch.arange(len(va)) + len(tr)
        return {"train": tr, "val": va, "identities": known}
    ds = load(face_crop=crop_for(kind, cfg.data_root, cfg.face_crop))
    names = CK_NAMES if kind == "ckplus" else MMI_NAMES
    return {"data": restrict(ds, names), "k": cfg.ck_folds if kind == "ckplus" else cfg.mmi_folds,
            "identities": True}


def load_protocols(cfg) -> dict:
    """``{protocol: {"data", "k"} or {"train", "val"}, plus "identities"}`` on ``cfg.device``:
    all three SynthFACS protocols, or the one real protocol ``DATASET`` names."""
    check_protocol(cfg)
    kinds = ("ckplus", "mmi", "sfew") if cfg.dataset == "synthfacs" else (cfg.dataset,)
    out = {}
    for kind in kinds:
        p = _synth_protocol(cfg, kind) if cfg.dataset == "synthfacs" else _real_protocol(cfg, kind)
        out[kind] = {k: (v.to(cfg.device) if isinstance(v, FaceArrays) else v) for k, v in p.items()}
    return out


def pretrain_pool(cfg, seed: int) -> FaceArrays:
    """The softmax pre-training images: FER2013 / FER+ train split (at most ``pool_n``) or SynthFACS lab stills."""
    if cfg.pretrain_dataset == "synthfacs":
        from fer_nb.data import synthfacs

        ds = synthfacs.generate(cfg.pool_n, seed=500 + seed, domain="lab", image_size=cfg.image_size, channels=1,
                                n_subjects=60, subject_offset=5000, with_contempt=True)
    else:
        from fer_nb.data import registry

        ds = registry.load(cfg.pretrain_dataset, cfg.data_root, split="train", image_size=cfg.image_size, channels=1)
        if len(ds) > cfg.pool_n:
            ds = ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:cfg.pool_n])
    return restrict(ds, tuple(n for n in EXPRESSIONS if n in ds.class_names)).to(cfg.device)


# ----------------------------------------------------------------------------- the paper's steps
def prepare_input(x_uint8: torch.Tensor, train_mode: bool, pad: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 faces -> per-image zero mean / unit variance floats (Sec. 5.1); in training, random
    shifts (reflection padding by ``pad``) and horizontal flips. ``generator`` must live on the
    images' device (or be None)."""
    x = x_uint8.float().div_(255.0)
    if train_mode:
        x = augment.random_flip(augment.random_crop(x, pad, generator=generator), generator=generator)
    mu = x.mean((1, 2, 3), keepdim=True)
    sd = x.std((1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mu) / sd


def pretrain_step(model, opt, images_u8: torch.Tensor, labels: torch.Tensor, pad: int,
                  generator: torch.Generator | None = None) -> dict:
    """Softmax pre-training of the convolutional groups + EC branch: one step, no host sync."""
    x = prepare_input(images_u8, True, pad, generator)
    with autocast(x.device):
        logits = model(x)["logits"]
    loss = F.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss}


def finetune_step(model, loss_fn, opt, images_u8: torch.Tensor, labels: torch.Tensor, tuples: torch.Tensor,
                  alpha: float, pad: int, generator: torch.Generator | None = None) -> dict:
    """One fine-tuning step on ``tuples`` ``(X, 1 + M + N)`` rows of ``images_u8`` (query first):
    softmax on the X queries + ``alpha`` x the metric loss on every tuple (groups = tuples).

    For the (N+M) variants ``loss_fn`` is the adaptive (N+M)-tuple clusters loss (Eq. 10 with
    Algorithm 1's mining inside each tuple's positive cluster); for (N+1) the (N+1)-tuple loss (Eq. 1).
    The metric loss reads the float32 embedding (bf16 autocast covers only the network).
    """
    size = tuples.shape[1]
    rows = tuples.reshape(-1)
    x = prepare_input(images_u8[rows], True, pad, generator)
    y = labels[rows]
    groups = tuple_groups(tuples.shape[0], size, x.device)
    with autocast(x.device):
        out = model(x)
    ce = F.cross_entropy(out["logits"][::size].float(), y[::size])
    ml = loss_fn(out["embedding"].float(), y, groups=groups)
    loss = ce + alpha * ml
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss, "softmax": ce, "metric": ml}


def new_model(cfg, num_classes: int, branches: int) -> InceptionFER:
    return fast.prepare(InceptionFER(num_classes, in_channels=1, width=cfg.width, hidden=cfg.hidden,
                                     embedding_dim=cfg.embedding_dim, branches=branches), cfg.device)


def metric_loss(cfg, metric: str, embedding_dim: int):
    if metric == "nplus1":
        return NPlusOneTupleLoss(margin=cfg.nplus1_margin).to(cfg.device)
    if metric == "nm":
        return NMTupleClustersLoss(adaptive=True, embedding_dim=embedding_dim,
                                   init_reference=cfg.init_reference).to(cfg.device)
    raise ValueError(f"metric must be 'nplus1' or 'nm', got {metric!r}")


def pretrain(cfg, seed: int) -> dict:
    """Softmax pre-training (checkpointed); returns the trunk + EC-branch weights (no classifier)."""
    seed_everything(seed)
    pool = pretrain_pool(cfg, seed)
    model = new_model(cfg, pool.num_classes, 1)
    opt = fast.optimizer("adam", model.parameters(), cfg.pretrain_lr, cfg.device)
    net = maybe_compile(model, cfg.compile_network, cfg.device)   # CUDA graphs on CUDA ("auto")
    g = torch.Generator(device=cfg.device).manual_seed(seed)

    def batches(epoch):
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(10_000 * seed + epoch))
        return list(order.to(cfg.device).split(cfg.pretrain_batch))

    def step(idx, ctx):
        return pretrain_step(net, opt, pool.images[idx], pool.labels["expression"][idx], cfg.crop_pad, g)

    h = cfg.run_hash(stage="pretrain", seed=seed)
    train.fit_or_load(train.checkpoint_path(cfg.out_dir, f"pretrain-seed{seed}", h), h, modules={"model": model},
                      optimizers={"opt": opt}, train_step=step, train_batches=batches, epochs=cfg.pretrain_epochs,
                      steps_per_epoch=-(-len(pool) // cfg.pretrain_batch), desc=f"pretrain seed {seed}")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}


@torch.no_grad()
def infer(model, ds: FaceArrays, rows: torch.Tensor, batch_size: int = 512) -> dict:
    """Test outputs (CPU float32): logits, FC2 ``features``, ``embedding`` + the rows' labels."""
    model.eval()
    outs = {"logits": [], "features": [], "embedding": []}
    rows = rows.to(ds.images.device)
    for chunk in rows.split(batch_size):
        with autocast(ds.images.device):
            o = model(prepare_input(ds.images[chunk], False))
        for k in outs:
            outs[k].append(o[k].float())
    out = {k: torch.cat(v).cpu() for k, v in outs.items()}
    for key in ("expression", "subject", "sequence"):
        if key in ds.labels:
            out[key] = ds.labels[key][rows].cpu()
    return out


def fold_rows(subjects: torch.Tensor, k: int, fold: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Subject-independent ``(train, val, test)`` rows: test = fold ``fold``, val = the next fold,
    train = the other ``k - 2`` (the paper's 6/1/1 split of CK+'s 8 folds)."""
    folds = [test.to(subjects.device) for _, test in splits.subject_kfold(subjects.cpu(), k, seed=0)]
    t, v = fold % k, (fold + 1) % k
    return torch.cat([f for i, f in enumerate(folds) if i not in (t, v)]), folds[v], folds[t]


def finetune(cfg, proto: Mapping, kind: str, variant: str, seed: int, fold: int, state: dict) -> dict:
    """Fine-tune one variant on one fold of one protocol (checkpointed); test outputs + history."""
    branches, metric = VARIANTS[variant]
    p = proto[kind]
    if "data" in p:
        tr_ds = ev_ds = p["data"]
        train_rows, val_rows, test_rows = fold_rows(tr_ds.labels["subject"], p["k"], fold)
    else:
        tr_ds, ev_ds = p["train"], p["val"]
        train_rows = torch.arange(len(tr_ds), device=tr_ds.images.device)
        val_rows = test_rows = torch.arange(len(ev_ds), device=ev_ds.images.device)
    seed_everything(seed)
    model = new_model(cfg, tr_ds.num_classes, branches)
    model.load_state_dict(state, strict=False)                  # trunk + EC branch from pre-training
    loss_fn = metric_loss(cfg, metric, model.embedding_dim)
    opt = fast.optimizer("adam", list(model.parameters()) + list(loss_fn.parameters()), cfg.lr, cfg.device)
    net = maybe_compile(model, cfg.compile_network, cfg.device)   # CUDA graphs on CUDA ("auto"); eager model evaluates
    y_all, s_all = tr_ds.labels["expression"], tr_ds.labels["subject"]
    g = torch.Generator(device=cfg.device).manual_seed(seed)
    tr_cpu = train_rows.cpu()

    def batches(epoch):
        g_epoch = torch.Generator().manual_seed(100_000 * seed + 1000 * fold + epoch)   # same tuples after a resume
        sam = IdentityAwareSampler(y_all[tr_cpu.to(y_all.device)].cpu(), s_all[tr_cpu.to(s_all.device)].cpu(),
                                   cfg.n_positives, generator=g_epoch)
        return [tr_cpu[b.indices].to(cfg.device) for b in sam.epoch(cfg.tuples_per_batch)]

    def step(tuples, ctx):
        return finetune_step(net, loss_fn, opt, tr_ds.images, y_all, tuples, cfg.alpha, cfg.crop_pad, g)

    def evaluate(epoch):
        out = infer(model, ev_ds, val_rows)
        return {"val/acc": 100 * metrics.accuracy(out["logits"], out["expression"])}

    h = cfg.run_hash(stage="finetune", protocol=kind, variant=variant, seed=seed, fold=fold)
    hist = train.fit_or_load(train.checkpoint_path(cfg.out_dir, f"{kind}-{variant}-seed{seed}-fold{fold}", h), h,
                             modules={"model": model, "loss": loss_fn}, optimizers={"opt": opt}, train_step=step,
                             train_batches=batches, epochs=cfg.epochs, evaluate=evaluate,
                             steps_per_epoch=-(-len(train_rows) // cfg.tuples_per_batch),
                             desc=f"{kind} {variant} s{seed} f{fold}")
    return {"test": infer(model, ev_ds, test_rows), "history": hist, "K": tr_ds.num_classes,
            "names": ev_ds.class_names}


# ----------------------------------------------------------------------------- evaluation
def sequence_decision(out: Mapping[str, torch.Tensor], rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level ``(pred, target)``: ``"max"`` = the frame with the highest probability
    decides (CK+), ``"mean"`` = the highest average score (MMI)."""
    if rule not in ("max", "mean"):
        raise ValueError(f"rule must be 'max' (CK+) or 'mean' (MMI), got {rule!r}")
    uniq, inv = torch.unique(out["sequence"], return_inverse=True)
    prob = out["logits"].softmax(1)
    k = prob.shape[1]
    if rule == "mean":
        pred = (torch.zeros(len(uniq), k).index_add_(0, inv, prob) / torch.bincount(inv)[:, None]).argmax(1)
    else:
        top = prob.max(1).values
        best = torch.full((len(uniq),), -1.0).scatter_reduce(0, inv, top, reduce="amax")
        is_best = top == best[inv]
        pred = torch.zeros(len(uniq), dtype=torch.long).scatter_(0, inv[is_best], prob.argmax(1)[is_best])
    target = torch.zeros(len(uniq), dtype=torch.long).scatter_(0, inv, out["expression"])
    return pred, target


def identity_leakage(emb: torch.Tensor, subject: torch.Tensor, expression: torch.Tensor) -> tuple[float, float]:
    """1-NN subject accuracy (percent) among images of OTHER expressions, and its chance level.

    For each test image the nearest test image (Euclidean, in ``emb``) showing a different
    expression is found; leakage = how often it is the same person. Same-expression neighbours are
    excluded so the probe cannot succeed through the expression (or neighbouring frames of a clip).
    Chance = the expected hit rate of a random such neighbour.
    """
    dist = torch.cdist(emb.double(), emb.double())
    other = expression[:, None] != expression[None, :]
    dist = dist.masked_fill(~other, float("inf"))
    has = other.any(1)
    hit = (subject[dist.argmin(1)] == subject)[has].double().mean()
    same = (subject[:, None] == subject[None, :]) & other
    chance = (same.sum(1).double() / other.sum(1).clamp_min(1))[has].mean()
    return 100 * float(hit), 100 * float(chance)


def folds_for(cfg, proto: Mapping, kind: str, seed: int) -> list[int]:
    """``folds_per_seed: one`` = seed s tests fold s mod k; ``all`` = every fold. SFEW has one split."""
    if kind == "sfew":
        return [0]
    k = proto[kind]["k"]
    return [seed % k] if cfg.folds_per_seed == "one" else list(range(k))


def evaluate_run(kind: str, r: dict, identities: bool) -> dict:
    """Accuracy (image and sequence level), nc flag, confusion matrix and identity leakage of one run."""
    out, k = r["test"], r["K"]
    rec = {"img_acc": 100 * metrics.accuracy(out["logits"], out["expression"]),
           "nc": bool(len(torch.unique(out["logits"].argmax(1))) == 1)}
    if kind != "sfew":
        sp, st = sequence_decision(out, "max" if kind == "ckplus" else "mean")
        rec["seq_acc"] = 100 * metrics.accuracy(F.one_hot(sp, k).float(), st)
        rec["cm"] = metrics.confusion_matrix(F.one_hot(sp, k).float(), st, k)
    else:
        rec["seq_acc"] = rec["img_acc"]
        rec["cm"] = metrics.confusion_matrix(out["logits"], out["expression"], k)
    if identities:
        rec["leak_emb"], rec["leak_chance"] = identity_leakage(out["embedding"], out["subject"], out["expression"])
        rec["leak_fc2"], _ = identity_leakage(out["features"], out["subject"], out["expression"])
    return rec


def run_experiments(cfg, proto: Mapping) -> list[dict]:
    """Pre-train per seed, then fine-tune every variant on every fold of every protocol."""
    runs = []
    for seed in cfg.seeds:
        state = pretrain(cfg, seed)
        for kind in proto:
            for fold in folds_for(cfg, proto, kind, seed):
                for variant in VARIANTS:
                    r = finetune(cfg, proto, kind, variant, seed, fold, state)
                    rec = {"protocol": kind, "variant": variant, "seed": seed, "fold": fold, "K": r["K"],
                           "names": r["names"], "history": r["history"], "out": r["test"]}
                    rec.update(evaluate_run(kind, r, proto[kind]["identities"]))
                    runs.append(rec)
    return runs


# ----------------------------------------------------------------------------- tables
def runs_frame(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "out", "cm", "names")} for r in runs])


def _mean_std(values) -> tuple[float, float]:
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    return float(v.mean()), (float(v.std()) if len(v) > 1 else 0.0)


def accuracy_tables(frame: pd.DataFrame) -> dict:
    """Table 3 (CK+ / MMI, sequence level, + image level) and Table 5 (SFEW validation), mean +- std
    over seeds and folds; a variant whose every run predicts one class is ``"nc"``."""
    tables = {}
    for table, kinds in (("table3", ("ckplus", "mmi")), ("table5", ("sfew",))):
        kinds = [k for k in kinds if k in set(frame.protocol)]
        if not kinds:
            continue
        rows = {}
        for v in VARIANTS:
            row = {}
            for kind in kinds:
                sel = frame[(frame.protocol == kind) & (frame.variant == v)]
                col = "val" if kind == "sfew" else kind
                m, s = _mean_std(sel.seq_acc)
                row[col] = "nc" if bool(sel.nc.all()) else m
                row[f"{col}_std"], row[f"{col}_nc_runs"] = s, float(sel.nc.sum())
                if kind != "sfew":
                    row[f"{kind}_image_level"] = _mean_std(sel.img_acc)[0]
            rows[v] = row
        tables[table] = rows
    return tables


def mean_confusion(runs: list[dict], kind: str, variant: str = "2B(N+M)Softmax") -> tuple[torch.Tensor, tuple]:
    """Row-normalised confusion matrix (percent), averaged over the runs of ``kind``/``variant``."""
    sel = [r for r in runs if r["protocol"] == kind and r["variant"] == variant]
    cms = [100 * r["cm"].double() / r["cm"].double().sum(1, keepdim=True).clamp_min(1) for r in sel]
    return torch.stack(cms).mean(0), sel[0]["names"]


def leakage_table(frame: pd.DataFrame) -> dict:
    """Identity leakage of the metric embedding and of FC2 per variant and protocol (mean, std)."""
    out = {}
    kinds = [k for k in dict.fromkeys(frame.protocol)
             if "leak_emb" in frame and frame[frame.protocol == k].leak_emb.notna().all()]
    for v in VARIANTS:
        row = {}
        for kind in kinds:
            sel = frame[(frame.protocol == kind) & (frame.variant == v)]
            for key, col in (("leak_emb", f"{kind}_embedding"), ("leak_fc2", f"{kind}_fc2")):
                row[col], row[f"{col}_std"] = _mean_std(sel[key])
            row[f"{kind}_chance"] = _mean_std(sel.leak_chance)[0]
        out[v] = row
    return out


def spearman(a, b) -> float:
    """Rank correlation of two score lists (0 when either is constant)."""
    ra, rb = pd.Series(list(a)).rank(), pd.Series(list(b)).rank()
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else 0.0


def ordering_rows(frame: pd.DataFrame, paper_tables: Mapping) -> list[dict]:
    """Per protocol: our ranking of the variants, its Spearman correlation with the paper's, and
    whether 2B(N+M) is our best variant."""
    rows = []
    for kind in dict.fromkeys(frame.protocol):
        paper_acc = [paper_tables["table5"]["rows"][v]["val"] if kind == "sfew"
                     else paper_tables["table3"]["rows"][v][kind] for v in VARIANTS]
        ours = [_mean_std(frame[(frame.protocol == kind) & (frame.variant == v)].seq_acc)[0] for v in VARIANTS]
        best = list(VARIANTS)[int(np.argmax(ours))]
        ranked = " > ".join(v for _, v in sorted(zip(ours, VARIANTS), reverse=True))
        rows.append({"protocol": kind, "ours (best first)": ranked,
                     "spearman vs paper": round(spearman(paper_acc, ours), 2), "2B(N+M) best": best == "2B(N+M)Softmax",
                     "acc": dict(zip(VARIANTS, ours))})
    return rows
