"""CAF (Kim & Song, AAAI 2021): Algorithm 1 as training steps, and the experiments of Tables 1-4.

**Algorithm 1** (one mini-batch; :class:`CAFSteps`):

* group the batch into strong (P) and weak (Q) emotions by the Otsu thresholds of line 3
  (:func:`grouping_masks`; the paper's k-means and the official code's rule as options);
* **critic step** (:meth:`CAFSteps.critic_step`): minimise ``L_c`` (Eq. 7, or an ablation critic)
  over the critic parameters ``theta_c`` only; the encoder's features are computed without
  gradient, so ``theta_e`` and the regressor do not move (FisherGAN's multiplier is updated after it);
* **adversarial step** (:meth:`CAFSteps.adversarial_step`): ``L_adv = -1/N_w sum_i (f_c o f_e)(x_w_i)``
  (the 16 critic outputs averaged, as the code), weight ``adv_weight`` (1 in the paper, 0.1 in the
  code), minimised over the encoder ``theta_e`` only, with the critic **frozen**
  (``requires_grad_(False)``: it receives no gradient at all) and the regressor untouched;
* **AV step** (:meth:`CAFSteps.av_step`): ``L_AV = L_RMSE + eps (L_PCC + L_CCC)`` over encoder and
  regressor.

``step_order="paper"`` runs critic, adversarial, AV; ``"code"`` runs AV, critic, adversarial (the
official code). Each step runs its forward pass under :func:`fer_nb.device.autocast` (bf16 on CUDA)
and computes its loss in float32. The optimizers are Adam with betas (0.5, 0.9)
(:func:`fer_nb.fast.optimizer`, fused on CUDA). No ``.item()`` in a step; the step does read one
flag from the device (whether the batch has both groups: a batch whose split leaves a group empty
skips the critic and adversarial steps, as Algorithm 1 cannot form pairs) and the adversarial step
forwards the weak images alone (boolean indexing), which the critic losses' own per-group indexing
needs anyway.

**Experiments** (:func:`run_experiments`): the Table 4 ablation rows on the stills analogue (its
CAF row is Table 1's), ResNet18 rows as the preset asks, CAF and no-critic on sequences (Table 2)
and traces (Table 3); every stills model evaluated on unseen and on seen subjects (person
independence), with a subject 1-NN identity probe. Real datasets (AffectNet / AFEW-VA / Aff-Wild)
train for the preset's ``iterations`` with the learning rate decayed every ``lr_decay_iters``
iterations, as the paper schedules them; SynthFACS analogues train for ``epochs``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from fer_nb import caf_grouping, fast, metrics, report, train
from fer_nb.data.schema import FaceArrays
from fer_nb.device import autocast
from fer_nb.losses.caf_critic import CAFCriticLoss, collapse_eigenvalue
from fer_nb.losses.fisher_ipm import FisherIPMLoss
from fer_nb.losses.mmd_critic import MMDCriticLoss
from fer_nb.losses.va_regression import VARegressionLoss
from fer_nb.models.caf_net import CAFNet
from fer_nb.seed import seed_everything

ROW = {"none": "no critic", "fisher": "FisherGAN", "gramnet": "GramNet", "mmd": "MMD",
       "caf_delta": "CAF w/ Delta", "caf_kappa": "CAF w/ constant kappa", "caf_linear": "CAF w/ linear kappa'",
       "caf_pull": "CAF w/ Delta, pull (ours)"}
ENC = {"alexnet": "AlexNet (tuned)", "resnet18": "ResNet18"}
CRITICS = tuple(ROW)
#: real dataset -> (train split, test split, which analogue it replaces)
REAL = {"affectnet": ("train", "validation", "stills"), "afew_va": ("train", "test", "sequences"),
        "affwild": ("train", "test", "trace")}
VA_METRICS = ("rmse", "sagr", "pcc", "ccc")


def row_name(critic: str, pull_weight: float) -> str:
    """Table row of a critic (the "pull" row names its weight)."""
    return f"CAF w/ Delta, pull {pull_weight:g} (ours)" if critic == "caf_pull" else ROW[critic]


# ------------------------------------------------------------------------------------- the pieces


def make_critic_loss(kind: str, rho: float = 1e-6, pull_weight: float = 0.25) -> nn.Module | None:
    """The critic loss of a Table 4 row: none, FisherGAN (IPM), GramNet/MMD, or CAF's Eq. 7 with the
    adaptive margin (``caf_delta``), a constant (``caf_kappa``) or linear (``caf_linear``) one."""
    if kind not in ROW:
        raise ValueError(f"unknown critic {kind!r}; use one of {CRITICS}")
    if kind == "none":
        return None
    if kind == "fisher":
        return FisherIPMLoss(rho=rho)
    if kind in ("gramnet", "mmd"):
        return MMDCriticLoss(kind)
    margin = {"caf_delta": "delta", "caf_kappa": "constant", "caf_linear": "linear", "caf_pull": "delta"}[kind]
    return CAFCriticLoss(margin=margin, kappa=0.2, positive_weight=pull_weight if kind == "caf_pull" else 1.0)


def make_model(encoder: str, in_channels: int, hp, with_critic: bool, device: torch.device) -> CAFNet:
    """AlexNet (``width``, ``pool_size`` of the preset) or torchvision ResNet18, + regressor (+ critic)."""
    if encoder == "alexnet":
        net = CAFNet("alexnet", in_channels, width=hp["width"], pool_size=hp["pool_size"], with_critic=with_critic)
    elif encoder == "resnet18":
        net = CAFNet("resnet18", in_channels, small_input=False, with_critic=with_critic)
    else:
        raise ValueError(f"unknown encoder {encoder!r}; use one of {tuple(ENC)}")
    return fast.prepare(net, device)


def grouping_masks(va: torch.Tensor, grouping: str = "otsu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(strong, weak)`` masks of one batch (Algorithm 1, line 3). Otsu / k-means split every
    sample; the official code's rule (``"code"``) drops some and truncates the groups to equal size."""
    if grouping == "code":
        return caf_grouping.group_code(va)
    method, k = ("kmeans", int(grouping[6:])) if grouping.startswith("kmeans") else (grouping, 2)
    strong = caf_grouping.group(va, method, k=k)
    return strong, ~strong


# ------------------------------------------------------------------------------------ Algorithm 1


class CAFSteps:
    """The three updates of Algorithm 1 for one :class:`~fer_nb.models.caf_net.CAFNet` (module docstring).

    Args:
        model: encoder + regressor (+ critic).
        critic_loss: from :func:`make_critic_loss` (``None``: AV step only, the no-critic baseline).
        lr, betas: Adam (the paper: 1e-4, (0.5, 0.9)).
        adv_weight: weight of ``L_adv`` (paper 1, code 0.1). av_weight: ``eps`` of ``L_AV``.
        step_order: ``"paper"`` (critic, adversarial, AV) or ``"code"`` (AV, critic, adversarial).
        grouping: ``otsu`` | ``otsu_radius`` | ``kmeans<k>`` | ``code``.
        resize: input side for the encoder (ResNet18 rows on resized images), ``None`` = as given.
    """

    def __init__(self, model: CAFNet, critic_loss: nn.Module | None, *, lr: float, betas=(0.5, 0.9),
                 adv_weight: float = 1.0, av_weight: float = 0.5, step_order: str = "paper",
                 grouping: str = "otsu", resize: int | None = None):
        if step_order not in ("paper", "code"):
            raise ValueError(f"step_order must be 'paper' or 'code', got {step_order!r}")
        if (critic_loss is None) != (model.critic is None):
            raise ValueError("a critic loss needs a model with a critic and vice versa "
                             "(CAFNet(with_critic=critic_loss is not None))")
        self.model, self.closs = model, critic_loss
        self.device = next(model.parameters()).device
        self.av_loss = VARegressionLoss(av_weight)
        self.adv_weight, self.step_order, self.grouping, self.resize = adv_weight, step_order, grouping, resize
        opt = lambda m: fast.optimizer("adam", m.parameters(), lr, self.device, betas=tuple(betas))  # noqa: E731
        self.opts = {"enc": opt(model.encoder), "reg": opt(model.regressor)}
        if model.critic is not None:
            self.opts["critic"] = opt(model.critic)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """Resize the batch for the encoder when ``resize`` asks (antialiased bilinear)."""
        if self.resize is None or x.shape[-1] == self.resize:
            return x
        return nn.functional.interpolate(x, size=self.resize, mode="bilinear", antialias=True, align_corners=False)

    def av_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``L_AV`` over encoder and regressor (the critic does not take part)."""
        with autocast(self.device):
            pred = self.model(x)
        loss = self.av_loss(pred.float(), y.float())
        self.opts["enc"].zero_grad(set_to_none=True)
        self.opts["reg"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["enc"].step()
        self.opts["reg"].step()
        return loss.detach()

    def critic_step(self, x: torch.Tensor, strong: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """``L_c`` over ``theta_c`` only: encoder features without gradient (``x``: the grouped samples)."""
        with torch.no_grad(), autocast(self.device):
            feats = self.model.encoder(x)
        with autocast(self.device):
            z = self.model.critic(feats)
        z = z.float()
        loss = self.closs(z, strong, epoch=epoch) if isinstance(self.closs, CAFCriticLoss) else self.closs(z, strong)
        self.opts["critic"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["critic"].step()
        if isinstance(self.closs, FisherIPMLoss):
            self.closs.update_multiplier()
        return loss.detach()

    def adversarial_step(self, x_weak: torch.Tensor) -> torch.Tensor:
        """``L_adv = -adv_weight * 1/N_w sum_i mean_d (f_c o f_e)(x_w_i)_d`` over ``theta_e`` only, critic frozen."""
        critic = self.model.critic
        critic.requires_grad_(False)                       # freeze theta_c: no gradient reaches it
        try:
            with autocast(self.device):
                z_w = critic(self.model.encoder(x_weak))
            loss = -self.adv_weight * z_w.float().mean()
            self.opts["enc"].zero_grad(set_to_none=True)
            loss.backward()
            self.opts["enc"].step()
        finally:
            critic.requires_grad_(True)
        return loss.detach()

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        """One mini-batch of Algorithm 1 (the ``train_step`` of :func:`fer_nb.train.fit`)."""
        x, y = self.prep(batch["image"]), batch["va"]
        zero = torch.zeros((), device=x.device)
        logs = {"av": zero, "critic": zero, "adv": zero}
        if self.model.critic is not None:
            strong, weak = grouping_masks(y, self.grouping)
            both = bool(strong.any() & weak.any())         # one device read: pairs need both groups
            use = strong | weak
        order = ("critic", "adv", "av") if self.step_order == "paper" else ("av", "critic", "adv")
        for name in order:
            if name == "av":
                logs["av"] = self.av_step(x, y)
            elif self.model.critic is None or not both:
                continue
            elif name == "critic":
                xs, ss = (x[use], strong[use]) if self.grouping == "code" else (x, strong)
                logs["critic"] = self.critic_step(xs, ss, ctx.epoch)
            else:
                logs["adv"] = self.adversarial_step(x[weak])
        if isinstance(self.closs, CAFCriticLoss) and self.closs.last:
            logs["alpha"] = self.closs.last["alpha"].float()
        return logs


# ------------------------------------------------------------------------------------------ data


def split_seen(ds: FaceArrays, n_seen: int, seed: int = 0) -> tuple[FaceArrays, FaceArrays]:
    """Hold out ``n_seen`` random images of the TRAINING subjects (the person-dependent test set)."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).to(ds.images.device)
    return ds.subset(perm[n_seen:], ds.name + "/train"), ds.subset(perm[:n_seen], ds.name + "/seen-test")


def n_subjects(ds: FaceArrays) -> int:
    subj = ds.labels.get("subject")
    return 0 if subj is None or bool((subj < 0).all()) else int(subj[subj >= 0].unique().numel())


def build_data(cfg) -> dict[str, tuple[FaceArrays, FaceArrays | None, FaceArrays]]:
    """``{"stills" | "sequences" | "trace": (train, seen-test or None, unseen-test)}`` on ``cfg.device``.

    SynthFACS: "wild" stills (AffectNet analogue, Tables 1/4), onset-apex-offset clips (AFEW-VA,
    Table 2), continuous traces (Aff-Wild, Table 3); test subjects disjoint from training ones.
    A real dataset fills its own analogue (``max_train`` > 0 caps its training set)."""
    hp, dev = cfg.hp, cfg.device
    data = {}
    if cfg.dataset == "synthfacs":
        from fer_nb.data import synthfacs
        from fer_nb.data.schema import concat
        wild = dict(domain="wild", image_size=hp["image_size"], wild_severity=hp["wild_severity"], device=dev)
        pool = synthfacs.generate(hp["n_train"] + hp["n_seen_test"], seed=11, n_subjects=hp["n_subjects"],
                                  subject_offset=0, **wild)
        unseen = synthfacs.generate(hp["n_test"], seed=12, n_subjects=hp["n_test_subjects"], subject_offset=1000,
                                    **wild)
        data["stills"] = (*split_seen(pool, hp["n_seen_test"]), unseen)
        seq = [synthfacs.generate_sequences(n, frames=hp["frames"], seed=s, n_subjects=k, subject_offset=o, **wild)
               for n, s, k, o in ((hp["n_sequences"], 13, hp["n_subjects"], 0),
                                  (hp["n_test_sequences"], 14, hp["n_test_subjects"], 1000))]
        data["sequences"] = (seq[0], None, seq[1])
        tr = concat([synthfacs.generate_trace(hp["trace_frames"], seed=20 + s, subject=s, **wild)
                     for s in range(hp["trace_subjects"])], name="traces/train")
        te = concat([synthfacs.generate_trace(hp["test_trace_frames"], seed=40 + s, subject=2000 + s, **wild)
                     for s in range(2)], name="traces/test")
        data["trace"] = (tr, None, te)
    else:
        from fer_nb.data import registry
        train_split, test_split, kind = REAL[cfg.dataset]
        full = registry.load(cfg.dataset, cfg.data_root, split=train_split, image_size=hp["image_size"])
        if hp["max_train"] and len(full) > hp["max_train"]:
            full = full.subset(torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[: hp["max_train"]])
        test = registry.load(cfg.dataset, cfg.data_root, split=test_split, image_size=hp["image_size"])
        tr, seen = split_seen(full, min(hp["n_seen_test"], len(full) // 10))
        data[kind] = (tr, seen if kind == "stills" else None, test)
    return {k: tuple(d.to(dev) if d is not None else None for d in v) for k, v in data.items()}


def schedule(cfg, n_train: int, batch_size: int) -> dict:
    """Steps per epoch, epochs and the LR decay period (in epochs) of one run.

    Real datasets: the paper's schedule in iterations (``iterations`` in chunks of
    ``iters_per_epoch``, ``x lr_decay`` every ``lr_decay_iters``); SynthFACS: ``epochs`` passes over
    the data, ``x lr_decay`` every ``lr_decay_every`` epochs."""
    hp = cfg.hp
    if cfg.dataset != "synthfacs":
        per = hp["iters_per_epoch"]
        return {"steps": per, "epochs": max(1, hp["iterations"] // per),
                "decay_every": max(1, hp["lr_decay_iters"] // per), "cycle": True}
    return {"steps": n_train // batch_size, "epochs": hp["epochs"], "decay_every": hp["lr_decay_every"], "cycle": False}


def cycled_batches(data: FaceArrays, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` batches drawn from concatenated random permutations (images stay where ``data`` is)."""
    n = len(data)
    idx = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * batch_size / n))])
    idx = idx[: steps * batch_size].view(steps, batch_size).to(data.images.device)
    for s in range(steps):
        yield {"image": data.images[idx[s]].float().div_(255.0), "va": data.labels["va"][idx[s]]}


# ------------------------------------------------------------------------------------- training


def train_caf(cfg, tag: str, data: FaceArrays, encoder: str, critic: str, seed: int, grouping: str | None = None):
    """Algorithm 1 for one (analogue, encoder, critic, seed) through :func:`fer_nb.train.fit_or_load`.

    Returns ``(model, history)``; checkpointed under ``cfg.out_dir`` (a re-run loads it)."""
    hp = cfg.hp
    grouping = grouping or hp["grouping"]
    seed_everything(seed)
    model = make_model(encoder, data.images.shape[1], hp, critic != "none", cfg.device)
    closs = make_critic_loss(critic, hp["rho"], hp["pull_weight"])
    closs = closs.to(cfg.device) if closs is not None else None
    steps = CAFSteps(model, closs, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), adv_weight=hp["adv_weight"],
                     av_weight=hp["av_weight"], step_order=hp["step_order"], grouping=grouping,
                     resize=hp["resnet_image_size"] if encoder == "resnet18" else None)
    bs = min(hp["resnet_batch_size"] if encoder == "resnet18" else hp["batch_size"], len(data))
    plan = schedule(cfg, len(data), bs)
    scheds = {k: torch.optim.lr_scheduler.StepLR(o, plan["decay_every"], hp["lr_decay"]) for k, o in steps.opts.items()}

    def batches(epoch):
        g = torch.Generator().manual_seed(1000 * seed + epoch)
        if plan["cycle"]:
            return cycled_batches(data, bs, plan["steps"], g)
        return data.batches(bs, shuffle=True, generator=g, device=cfg.device, drop_last=True)

    modules = {"model": model}
    if isinstance(closs, FisherIPMLoss):
        modules["fisher"] = closs  # its Lagrange multiplier is checkpointed with the model
    rh = cfg.run_hash(tag=tag, encoder=encoder, critic=critic, seed=seed, grouping=grouping, n=len(data))
    hist = train.fit_or_load(
        train.checkpoint_path(cfg.out_dir, f"{tag}-{encoder}-{critic}-{grouping}-s{seed}", rh), rh,
        modules=modules, optimizers=steps.opts, schedulers=scheds, train_step=steps.train_step, train_batches=batches,
        steps_per_epoch=plan["steps"], epochs=plan["epochs"],
        desc=f"{tag} {ENC[encoder]} {row_name(critic, hp['pull_weight'])} s{seed}")
    model.resize = steps.resize
    return model, hist


# ------------------------------------------------------------------------------------ evaluation


def _prep_eval(model, x):
    size = getattr(model, "resize", None)
    if size is None or x.shape[-1] == size:
        return x
    return nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def evaluate(model: CAFNet, data: FaceArrays) -> tuple[dict, bool, torch.Tensor]:
    """Global RMSE/SAGR/PCC/CCC per dimension, whether the predictions are constant ("nc"), predictions."""
    out = train.predict(model, data.batches(256, device=data.images.device),
                        fn=lambda m, b: m(_prep_eval(m, b["image"])).float(), keys=("va",))
    pred, y = out["output"], out["va"]
    mm = metrics.va_metrics(pred, y)
    row = {f"{m}_{d[0]}": mm[f"{m}_{d}"] for m in VA_METRICS for d in ("valence", "arousal")}
    return row, bool((pred.std(0) < 1e-3).any()), pred


def code_metrics(pred: torch.Tensor, y: torch.Tensor, batch: int = 16) -> dict:
    """The official evaluation: per-batch-mean RMSE, PCC = cov(ddof 1) / (std(ddof 0) std(ddof 0))."""
    pred, y = pred.double(), y.double()
    n, out = len(y), {}
    chunks = torch.split(torch.arange(n), batch)
    for j, d in enumerate("va"):
        out[f"rmse_{d}"] = float(torch.stack([(pred[c, j] - y[c, j]).pow(2).mean().sqrt() for c in chunks]).mean())
        cov1 = float(((pred[:, j] - pred[:, j].mean()) * (y[:, j] - y[:, j].mean())).sum() / (n - 1))
        sp, sy = float(pred[:, j].std(unbiased=False)), float(y[:, j].std(unbiased=False))
        out[f"pcc_{d}"] = cov1 / (sp * sy)
        bias = float(pred[:, j].mean() - y[:, j].mean())
        out[f"ccc_{d}"] = 2 * sp * sy * out[f"pcc_{d}"] / (sp**2 + sy**2 + bias**2)
    return out


def encoder_features(model: CAFNet, data: FaceArrays, keys=("va",)) -> dict:
    return train.predict(model, data.batches(256, device=data.images.device),
                         fn=lambda m, b: m.encoder(_prep_eval(m, b["image"])).float(), keys=keys)


def subject_1nn(model: CAFNet, data: FaceArrays) -> float:
    """Leave-one-out 1-NN subject accuracy on encoder features: how much identity the features carry."""
    feats = encoder_features(model, data, keys=("subject",))
    f = nn.functional.normalize(feats["output"].double(), dim=1)
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    return float((feats["subject"][d.argmin(1)] == feats["subject"]).double().mean())


# ----------------------------------------------------------------------------------- experiments


def run_experiments(cfg, data: dict) -> SimpleNamespace:
    """Every run of the chapter, per seed (see the module docstring). Returns a namespace with
    ``runs`` ((table, row) -> metric dicts over seeds), ``nc``, ``person``, ``ident``, ``hist``,
    ``models`` and ``preds`` (first seed)."""
    hp = cfg.hp
    r = SimpleNamespace(runs={}, nc={}, person={}, ident={}, hist={}, models={}, preds={})

    def record(table, row, result):
        r.runs.setdefault((table, row), []).append(result[0])
        r.nc[(table, row)] = r.nc.get((table, row), 0) + int(result[1])

    for seed in cfg.seeds:
        resnet_seed = hp["resnet18"] and seed in cfg.seeds[: hp["resnet_seeds"]]
        if "stills" in data:
            tr, seen, unseen = data["stills"]
            for critic in hp["ablation"]:
                model, hist = train_caf(cfg, "stills", tr, "alexnet", critic, seed)
                name = row_name(critic, hp["pull_weight"])
                res = evaluate(model, unseen)
                record("table4", f"{name} (AlexNet (tuned))", res)
                if critic == "caf_delta":
                    record("table1", "Ours (AlexNet (tuned))", res)
                r.person.setdefault((name, "unseen subjects"), []).append(res[0])
                r.person.setdefault((name, "seen subjects"), []).append(evaluate(model, seen)[0])
                if n_subjects(unseen) > 1:  # identity probe only where subject ids exist
                    r.ident.setdefault(name, []).append(subject_1nn(model, unseen))
                r.hist[(f"{name} (AlexNet (tuned))", seed)] = hist
                if seed == cfg.seeds[0]:
                    r.models[("stills", critic)], r.preds[("stills", critic)] = model, res[2]
            for grouping in hp["grouping_runs"]:
                model, _ = train_caf(cfg, "stills", tr, "alexnet", "caf_delta", seed, grouping=grouping)
                record("grouping", f"CAF w/ Delta, {grouping} grouping", evaluate(model, unseen))
            if resnet_seed and "table1" in hp["resnet_tables"]:
                for critic in (hp["ablation"] if "table4" in hp["resnet_tables"] else ["caf_delta"]):
                    model, _ = train_caf(cfg, "stills", tr, "resnet18", critic, seed)
                    res = evaluate(model, unseen)
                    record("table4", f"{row_name(critic, hp['pull_weight'])} (ResNet18)", res)
                    if critic == "caf_delta":
                        record("table1", "Ours (ResNet18)", res)
        for kind, table in (("sequences", "table2"), ("trace", "table3")):
            if kind not in data:
                continue
            tr, _, te = data[kind]
            for encoder in ["alexnet"] + (["resnet18"] if resnet_seed and table in hp["resnet_tables"] else []):
                for critic in ("none", "caf_delta"):
                    model, _ = train_caf(cfg, kind, tr, encoder, critic, seed)
                    res = evaluate(model, te)
                    record(table, f"{'Ours' if critic == 'caf_delta' else 'no critic'} ({ENC[encoder]})", res)
                    if seed == cfg.seeds[0] and encoder == "alexnet":
                        r.models[(kind, critic)], r.preds[(kind, critic)] = model, res[2]
    return r


def summarise(runs: dict, nc: dict) -> dict:
    """``{table: {row: mean/std over seeds, nc_seeds, n_seeds}}``; a row whose every seed gave constant
    predictions is ``{"status": "nc"}`` (shown, never hidden)."""
    tables = {}
    for (table, row), vals in runs.items():
        if nc.get((table, row), 0) == len(vals):
            tables.setdefault(table, {})[row] = {"status": "nc", "nc_seeds": len(vals)}
            continue
        s = report.summarise_seeds(vals)
        s.update(nc_seeds=nc.get((table, row), 0), n_seeds=len(vals))
        tables.setdefault(table, {})[row] = s
    return tables


def wide(tables: dict, table: str, metric_list):
    """One table as ``row x metric`` with ``mean ± std`` cells."""
    import pandas as pd

    return pd.DataFrame({row: {m: (f"{v[m]:.3f} ± {v[m + '_std']:.3f}" if m in v else v.get("status", "—"))
                               for m in metric_list} for row, v in tables.get(table, {}).items()}).T


def compare(tables: dict, table: str, metric_list, cfg=None):
    """paper | recorded | this run for our rows and the paper's CAF rows ("nc" rows shown as nc).

    ``cfg``: this run's configuration; it chooses the recorded run shown beside it (the same dataset
    and scale, or for a smoke run the largest recorded scale of the same dataset: see
    :func:`fer_nb.report.recorded_for`) and whether a delta to the paper is computed. Without it
    there is neither a recorded column nor a delta."""
    dataset, scale = (cfg.dataset, cfg.scale) if cfg is not None else (None, None)
    recorded = report.recorded_for("caf", scale, dataset)
    frame = report.compare("caf", table, tables.get(table, {}), metrics=metric_list, cfg=cfg, recorded=recorded)
    recorded_rows = (recorded or {}).get("tables", {}).get(table, {})
    for column, rows in (("this run", tables.get(table, {})), ("recorded", recorded_rows)):
        nc_rows = [r for r, v in rows.items() if v.get("status") == "nc"]
        frame.loc[frame["row"].isin(nc_rows), column] = "nc"
    keep = frame["row"].isin(list(tables.get(table, {}))) | (frame["recorded"] != "—") | \
        frame["row"].str.startswith(("Ours", "CAF"))
    return frame[keep].reset_index(drop=True)


def person_independence(person: dict, ident: dict) -> dict:
    """Unseen vs seen subjects per model row, their gap (mean ± std over seeds), subject 1-NN accuracy."""
    keys = ("rmse_v", "rmse_a", "ccc_v", "ccc_a")
    out = {}
    for (row, where), vals in person.items():
        s = report.summarise_seeds(vals)
        out[f"{row}: {where}"] = {k: s[k] for k in keys} | {k + "_std": s[k + "_std"] for k in keys}
    for row in dict.fromkeys(r for r, _ in person):
        gaps = [{k: a[k] - b[k] for k in keys}
                for a, b in zip(person[(row, "unseen subjects")], person[(row, "seen subjects")])]
        out[f"{row}: gap (unseen - seen)"] = report.summarise_seeds(gaps)
        if row in ident:
            out[f"{row}: unseen subjects"].update(report.summarise_seeds([{"subject_1nn": v} for v in ident[row]]))
    return out


def critic_health(cfg, data: dict, models: dict) -> dict:
    """For the first seed's stills models: the held-out ``lambda_max`` of the encoder features
    (section 1.8's collapse criterion, threshold ``2w``), and for a critic its active ReLU fraction,
    output spread and cross / within-strong distance ratio on 512 training images."""
    tr = data["stills"][0]
    probe = next(tr.batches(512, device=cfg.device))
    probe_strong, _ = grouping_masks(probe["va"], cfg.hp["grouping"])
    half = len(tr) // 2  # the direction from one half, its ratio on the other
    fit_half, val_half = tr.subset(torch.arange(half)), tr.subset(torch.arange(half, 2 * half))

    def feats(model, ds):
        out = encoder_features(model, ds)
        return out["output"].double(), grouping_masks(out["va"], cfg.hp["grouping"])[0]

    health = {}
    for (kind, critic), model in models.items():
        if kind != "stills":
            continue
        model.eval()
        f_fit, s_fit = feats(model, fit_half)
        h = {"lambda_max of encoder features (held out)":
             float(collapse_eigenvalue(f_fit, s_fit, ridge=0.1, validate=feats(model, val_half))),
             "collapse threshold 2w": 2 * (cfg.hp["pull_weight"] if critic == "caf_pull" else 1.0)}
        if model.critic is not None:
            with torch.no_grad():
                f = model.encoder(probe["image"]).float()
                hidden = model.critic.net[1](model.critic.net[0](f))  # pre-ReLU activations
                z = model.critic(f).double()
            d2 = torch.cdist(z, z).pow(2)
            s_, w_ = probe_strong, ~probe_strong
            ratio = d2[s_][:, w_].mean() / d2[s_][:, s_].mean().clamp_min(1e-30)
            h.update({"active ReLU fraction": float((hidden > 0).float().mean()),
                      "output std (mean over dims)": float(z.std(0).mean()),
                      "cross / within-strong distance": float(ratio)})
        health[row_name(critic, cfg.hp["pull_weight"])] = h
    return health


def summary_and_verdicts(cfg, tables: dict, health: dict) -> tuple[dict, list[str]]:
    """Finite summary numbers for ``metrics.json`` and the verdict lines (CAF vs each baseline)."""
    pw = cfg.hp["pull_weight"]
    mean_va = lambda row, m: (row[f"{m}_v"] + row[f"{m}_a"]) / 2  # noqa: E731
    out, t4 = {}, tables.get("table4", {})
    for critic in ("none", "fisher", "gramnet", "caf_delta", "caf_kappa", "caf_linear", "caf_pull"):
        row = t4.get(f"{row_name(critic, pw)} (AlexNet (tuned))")
        if row and "status" not in row:
            out[f"{critic}_rmse_unseen"], out[f"{critic}_ccc_unseen"] = mean_va(row, "rmse"), mean_va(row, "ccc")
    key_of = {row_name(k, pw): k for k in ROW}
    pi = tables.get("person_independence", {})
    for name in key_of:
        gap = pi.get(f"{name}: gap (unseen - seen)")
        if gap:
            out[f"{key_of[name]}_rmse_gap"] = mean_va(gap, "rmse")
        if "subject_1nn" in pi.get(f"{name}: unseen subjects", {}):
            out[f"{key_of[name]}_subject_1nn"] = pi[f"{name}: unseen subjects"]["subject_1nn"]
    for table in ("table1", "table2", "table3"):
        for row, vals in tables.get(table, {}).items():
            if "status" not in vals and row.startswith(("Ours", "no critic")):
                tag = row.replace("Ours (", "caf_").replace("no critic (", "none_").replace(" (tuned))", "")
                tag = tag.replace(")", "").lower()
                out[f"{table}_{tag}_rmse"], out[f"{table}_{tag}_ccc"] = mean_va(vals, "rmse"), mean_va(vals, "ccc")
    for name, h in health.items():
        k = key_of[name]
        out[f"{k}_feature_lambda_max"] = h["lambda_max of encoder features (held out)"]
        if "active ReLU fraction" in h:
            out[f"{k}_critic_active_fraction"] = h["active ReLU fraction"]
            out[f"{k}_critic_output_std"] = h["output std (mean over dims)"]
    out = {k: float(v) for k, v in out.items() if math.isfinite(float(v))}

    def verdict(a, b, metric, lower_better):
        ka, kb = f"{a}_{metric}_unseen", f"{b}_{metric}_unseen"
        for k in (a, b):
            if t4.get(f"{row_name(k, pw)} (AlexNet (tuned))", {}).get("status") == "nc":
                return (f"{row_name(a, pw)} vs {row_name(b, pw)} on {metric.upper()}: "
                        f"{row_name(k, pw)} did not converge (nc)")
        if ka not in out or kb not in out:
            return f"{row_name(a, pw)} vs {row_name(b, pw)} on {metric.upper()}: not run at this scale"
        better = out[ka] < out[kb] if lower_better else out[ka] > out[kb]
        return (f"{row_name(a, pw)} {'beats' if better else 'does NOT beat'} {row_name(b, pw)} on mean "
                f"{metric.upper()} (unseen subjects): {out[ka]:.3f} vs {out[kb]:.3f}")

    lines = [verdict(ours, other, m, lower) for ours in ("caf_delta", "caf_pull")
             for other in ("none", "fisher", "gramnet") for m, lower in (("rmse", True), ("ccc", False))]
    if cfg.scale == "smoke":  # seconds of training: the comparisons test the code, they are not findings
        lines = ["[smoke run: a pipeline check, not a finding; read the recorded run] " + line for line in lines]
    return out, lines


# --------------------------------------------------------------------------------------- figures


def plot_trace(data: dict, preds: dict, pull_weight: float = 0.25):
    """Figure 3: per-frame valence and arousal of one held-out subject / clip, CAF vs no critic."""
    import matplotlib.pyplot as plt

    te = data["trace"][2]
    key = "subject" if n_subjects(te) > 1 else "sequence"
    first = (te.labels[key] == te.labels[key][0]).cpu()
    y = te.labels["va"].cpu()[first]
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for j, name in enumerate(("valence", "arousal")):
        axes[j].plot(y[:, j], "k", lw=1.5, label="ground truth")
        for critic, col in (("caf_delta", "tab:red"), ("none", "tab:blue")):
            if ("trace", critic) in preds:
                axes[j].plot(preds[("trace", critic)][first][:, j], color=col, lw=1,
                             label=row_name(critic, pull_weight))
        axes[j].set(ylabel=name, ylim=(-1.1, 1.1))
        axes[j].grid(alpha=0.3)
    axes[0].legend(fontsize=9, ncol=3)
    axes[1].set_xlabel("frame")
    fig.suptitle(f"held-out {key} {int(te.labels[key][0])} (never seen in training)")
    return fig


def plot_latent(cfg, data: dict, models: dict):
    """Encoder features of unseen-subject stills in 2-D (t-SNE or PCA): strong/weak and by person."""
    import matplotlib.pyplot as plt

    from fer_nb import plots

    unseen = data["stills"][2]
    sub = unseen.subset(torch.arange(min(len(unseen), 400), device=unseen.images.device))
    strong = caf_grouping.group(sub.labels["va"].cpu(), "otsu")
    fig, axes = plt.subplots(2, 2, figsize=(8, 7.5))
    pw = cfg.hp["pull_weight"]
    for col, critic in enumerate(("none", "caf_delta")):
        pts = plots.embed_2d(encoder_features(models[("stills", critic)], sub)["output"],
                             "tsne" if cfg.hp["tsne"] else "pca", seed=0)
        plots.embedding_scatter(pts, strong.long(), ["weak", "strong"], ax=axes[0, col],
                                title=f"{row_name(critic, pw)}: strong / weak")
        subj = sub.labels.get("subject", torch.zeros(len(sub), dtype=torch.long)).cpu()
        subj = torch.unique(subj, return_inverse=True)[1]
        plots.embedding_scatter(pts, subj, None, ax=axes[1, col], cmap="tab20",
                                title=f"{row_name(critic, pw)}: by person (unseen subjects)")
    fig.tight_layout()
    return fig
