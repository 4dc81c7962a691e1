"""The metric-learning course chapter's checks and tables, kept out of the chapter so it shows
the mathematics, not the plumbing.

* :func:`course_losses` builds the chapter's small float64 losses on one seeded batch;
  :func:`loop_reference_table` compares each vectorised loss with its loop reference (beside
  the loss, in its own module) and :func:`pml_cross_check_table` with pytorch-metric-learning's
  implementation configured to the same mathematics (value and gradient).
* :func:`train_toy_loss` / :func:`toy_measures` train and measure the 2-D toy runs of the
  chapter's first sections; :func:`mined_triplet_table` counts what each miner keeps.
* :func:`reality_check_splits` loads the train / validation / test splits of the reality-check
  protocol (:mod:`fer_nb.reality_check`), :func:`protocol_table` summarises its test runs over
  seeds, and :func:`recorded_comparison` sets a recorded run beside the current one.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fer_nb import miners, reality_check, report, retrieval, toy2d, train
from fer_nb.losses.circle import CircleLoss, circle_loop
from fer_nb.losses.lifted_structure import LiftedStructureLoss, lifted_structure_loop
from fer_nb.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loop
from fer_nb.losses.normface import NormFaceLoss, normface_loop
from fer_nb.losses.npair import NPairLoss, first_pairs, npair_loop
from fer_nb.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loop
from fer_nb.losses.proxy_nca import ProxyNCALoss, proxy_nca_loop
from fer_nb.losses.sphereface import SphereFaceLoss, sphereface_loop
from fer_nb.losses.supcon import SupConLoss, supcon_loop
from fer_nb.papers.nm_tuple import spearman
from fer_nb.seed import seed_everything

__all__ = ["METRIC_COLS", "course_batch", "course_losses", "fmt", "frame_to_dict", "loop_reference_table",
           "mined_triplet_table", "pml_cross_check_table", "protocol_table", "rank_correlation",
           "reality_check_splits", "recorded_comparison", "toy_measures", "train_toy_loss", "value_and_grad"]

#: the test metrics of the reality-check table, in percent
METRIC_COLS = ("map@r", "r_precision", "recall@1", "recall@4", "ncm_acc")


def value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``fn(x)`` as a float and its gradient with respect to ``x`` (``x`` itself is untouched)."""
    x = x.clone().requires_grad_(True)
    v = fn(x)
    (grad,) = torch.autograd.grad(v, x)
    return float(v.detach()), grad


def course_batch(classes: int = 4, dim: int = 5, n: int = 24, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """A float64 batch ``(x, y)`` with every class present twice in its first ``2 * classes`` rows,
    and the generator that drew it (the chapter draws its next tensors from it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    y[: 2 * classes] = torch.arange(classes).repeat(2)
    return x, y, g


def course_losses(classes: int, dim: int, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The chapter's losses with parameters, in float64, drawn after ``torch.manual_seed(seed)``:
    ProxyNCA (s=3), Proxy-Anchor, NormFace (s=16), SphereFace (m=4)."""
    torch.manual_seed(seed)
    return {"proxy_nca": ProxyNCALoss(dim, classes, scale=3.0).double(),
            "proxy_anchor": ProxyAnchorLoss(dim, classes).double(),
            "normface": NormFaceLoss(dim, classes, scale=16.0).double(),
            "sphereface": SphereFaceLoss(dim, classes, margin=4).double()}


def _row(name: str, ours: Callable, theirs: Callable, x: torch.Tensor, y: torch.Tensor,
         names: tuple[str, str]) -> dict[str, Any]:
    v1, g1 = value_and_grad(lambda e: ours(e, y), x)
    v2, g2 = value_and_grad(lambda e: theirs(e, y), x)
    return {"loss": name, names[0]: v1, names[1]: v2, "|value diff|": abs(v1 - v2),
            "max |grad diff|": float((g1 - g2).abs().max())}


def loop_reference_table(losses: Mapping[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Value and gradient of each vectorised loss against its loop reference on ``(x, y)``."""
    pn, pa, nf, sf = (losses[k] for k in ("proxy_nca", "proxy_anchor", "normface", "sphereface"))
    pairs = {
        "ProxyNCA (s=3)": (pn, lambda e, t: proxy_nca_loop(e, t, pn.proxies, 3.0)),
        "Proxy-Anchor (alpha=32, delta=0.1)": (pa, lambda e, t: proxy_anchor_loop(e, t, pa.proxies)),
        "multi-similarity (mined)": (MultiSimilarityLoss(mining=True),
                                     lambda e, t: multi_similarity_loop(e, t, mining=True)),
        "lifted structure (alpha=1)": (LiftedStructureLoss(1.0), lambda e, t: lifted_structure_loop(e, t, 1.0)),
        "N-pair": (NPairLoss(), lambda e, t: npair_loop(e, first_pairs(t))),
        "SupCon L_out (tau=0.1)": (SupConLoss(0.1), lambda e, t: supcon_loop(e, t, 0.1)),
        "SupCon L_in (tau=0.1)": (SupConLoss(0.1, "in"), lambda e, t: supcon_loop(e, t, 0.1, "in")),
        "NormFace (s=16)": (nf, lambda e, t: normface_loop(e, t, nf.weight, nf.log_scale.exp())),
        "SphereFace (m=4)": (sf, lambda e, t: sphereface_loop(e, t, sf.weight, 4)),
        "Circle (m=0.4, gamma=80)": (CircleLoss(), lambda e, t: circle_loop(e, t)),
    }
    return pd.DataFrame([_row(name, ours, loop, x, y, ("vectorised", "loop reference"))
                         for name, (ours, loop) in pairs.items()])


def pml_cross_check_table(losses: Mapping[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                          classes: int, dim: int) -> tuple[pd.DataFrame, ProxyNCALoss]:
    """Each loss against pytorch-metric-learning's, configured to the same mathematics (the ``loss``
    column names the configuration). Proxies and weights are copied into PML's modules. Returns
    the table and the ProxyNCA with the positive proxy in its denominator (PML's form)."""
    from pytorch_metric_learning import distances as pml_d
    from pytorch_metric_learning import losses as pml_l
    from pytorch_metric_learning import miners as pml_m
    from pytorch_metric_learning import reducers as pml_r

    pa, nf, sf = losses["proxy_anchor"], losses["normface"], losses["sphereface"]
    pml_pn = pml_l.ProxyNCALoss(classes, dim, softmax_scale=3.0, reducer=pml_r.MeanReducer(),
                                distance=pml_d.LpDistance(p=2, power=2, normalize_embeddings=True)).double()
    ours_pn = ProxyNCALoss(dim, classes, scale=3.0, include_positive=True).double()
    pml_pn.proxies.data.copy_(ours_pn.proxies.data)
    pml_pa = pml_l.ProxyAnchorLoss(classes, dim, margin=0.1, alpha=32, distance=pml_d.CosineSimilarity(),
                                   reducer=pml_r.DivisorReducer()).double()
    pml_pa.proxies.data.copy_(pa.proxies.data)
    pml_nf = pml_l.NormalizedSoftmaxLoss(classes, dim, temperature=1 / float(nf.log_scale.exp()),
                                         reducer=pml_r.MeanReducer(),
                                         distance=pml_d.DotProductSimilarity(normalize_embeddings=True)).double()
    pml_nf.W.data.copy_(nf.weight.data.T)
    pml_sf = pml_l.SphereFaceLoss(classes, dim, margin=4, scale=1, distance=pml_d.CosineSimilarity(),
                                  reducer=pml_r.MeanReducer()).double()
    pml_sf.W.data.copy_(sf.weight.data.T)
    ms_kw = dict(alpha=2, beta=50, base=0.5, distance=pml_d.CosineSimilarity(), reducer=pml_r.MeanReducer())
    ms_miner = pml_m.MultiSimilarityMiner(epsilon=0.1, distance=pml_d.CosineSimilarity())
    pml_ms_mined = pml_l.MultiSimilarityLoss(**ms_kw)
    l1 = pml_d.LpDistance(p=2, power=1, normalize_embeddings=False)
    checks = [
        ("ProxyNCA, softmax over all proxies, s=3 | ProxyNCALoss(softmax_scale=3, LpDistance(power=2, "
         "normalize), MeanReducer)", ours_pn, pml_pn),
        ("Proxy-Anchor | ProxyAnchorLoss(margin=0.1, alpha=32, CosineSimilarity, DivisorReducer)", pa, pml_pa),
        ("multi-similarity | MultiSimilarityLoss(2, 50, 0.5, CosineSimilarity, MeanReducer)",
         MultiSimilarityLoss(), pml_l.MultiSimilarityLoss(**ms_kw)),
        ("multi-similarity + mining | + MultiSimilarityMiner(epsilon=0.1)", MultiSimilarityLoss(mining=True),
         lambda e, t: pml_ms_mined(e, t, ms_miner(e, t))),
        ("lifted structure | LiftedStructureLoss(neg_margin=1, pos_margin=0, LpDistance(power=1), MeanReducer)",
         LiftedStructureLoss(1.0),
         pml_l.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, reducer=pml_r.MeanReducer(), distance=l1)),
        ("N-pair | NPairsLoss(DotProductSimilarity, MeanReducer)", NPairLoss(),
         pml_l.NPairsLoss(distance=pml_d.DotProductSimilarity(normalize_embeddings=False),
                          reducer=pml_r.MeanReducer())),
        ("SupCon | SupConLoss(temperature=0.1, CosineSimilarity, AvgNonZeroReducer)", SupConLoss(0.1),
         pml_l.SupConLoss(temperature=0.1, distance=pml_d.CosineSimilarity(), reducer=pml_r.AvgNonZeroReducer())),
        ("NormFace | NormalizedSoftmaxLoss(temperature=1/16, DotProduct(normalize), MeanReducer)", nf, pml_nf),
        ("SphereFace | SphereFaceLoss(margin=4, scale=1, CosineSimilarity, MeanReducer)", sf, pml_sf),
        ("Circle | CircleLoss(m=0.4, gamma=80, CosineSimilarity, AvgNonZeroReducer)", CircleLoss(),
         pml_l.CircleLoss(m=0.4, gamma=80, distance=pml_d.CosineSimilarity(), reducer=pml_r.AvgNonZeroReducer())),
    ]
    table = pd.DataFrame([_row(name, ours, theirs, x, y, ("fer_nb", "pytorch-metric-learning"))
                          for name, ours, theirs in checks])
    return table, ours_pn


def reality_check_splits(cfg: Any) -> tuple[dict, str]:
    """The protocol's ``train`` / ``val`` / ``test`` :class:`~fer_nb.data.schema.FaceArrays` (grey)
    and a sentence saying what they are. SynthFACS: subject-independent splits drawn at
    ``cfg.rc_image_size``; a real dataset: its own three splits at 48 px from ``cfg.data_root``
    (a missing dataset raises the loader's error, which names where to get it)."""
    if cfg.dataset == "synthfacs":
        from fer_nb.data import synthfacs

        common = dict(image_size=cfg.rc_image_size, channels=1)
        raw = {"train": synthfacs.generate(cfg.rc_n_train, seed=11, n_subjects=40, subject_offset=0, **common),
               "val": synthfacs.generate(cfg.rc_n_val, seed=12, n_subjects=15, subject_offset=1000, **common),
               "test": synthfacs.generate(cfg.rc_n_test, seed=13, n_subjects=15, subject_offset=2000, **common)}
        return raw, "SynthFACS, subject-independent train / validation / test subjects"
    from fer_nb.data import registry

    raw = {s: registry.load(cfg.dataset, cfg.data_root, split=s, image_size=48, channels=1)
           for s in ("train", "val", "test")}
    return raw, (f"{cfg.dataset}: its own train / validation / test splits "
                 "(FER2013 Training / PublicTest / PrivateTest)")


def fmt(stats: Mapping[str, Any], col: str, n_seeds: int) -> str:
    """``"mean ± std"`` of ``col`` by :func:`fer_nb.report.fmt_mean_std` (the mean alone for one
    seed, ``"nc"`` when not converged)."""
    if stats.get(col) == "nc":
        return "nc"
    return str(report.fmt_mean_std(stats[col], stats[col + "_std"] if n_seeds > 1 else None))


def protocol_table(rc: Mapping[str, Any], losses: Sequence[str]) -> dict[str, dict]:
    """Per loss label: mean and std over seeds of :data:`METRIC_COLS` on the test split, the chosen
    value, the number of seeds and seconds; a loss whose every candidate diverged is ``"nc"``."""
    table: dict[str, dict] = {}
    for key in losses:
        label = reality_check.LOSSES[key].label
        runs = rc["test"][key]
        if not runs:  # every candidate diverged: not converged, as the papers write it
            table[label] = {c: "nc" for c in METRIC_COLS} | {"chosen": "nc", "seeds": 0}
            continue
        stats = report.summarise_seeds(runs)
        table[label] = {c: stats[c] for c in METRIC_COLS} | {f"{c}_std": stats[f"{c}_std"] for c in METRIC_COLS}
        table[label] |= {"chosen": rc["chosen"][key], "seeds": len(runs), "seconds": rc["seconds"][key]}
    return table


def recorded_comparison(recorded: Mapping[str, Any], current: Mapping[str, dict], current_name: str
                        ) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """A recorded course run (loaded ``metrics.json``) beside the current protocol table.

    Returns a one-line header (dataset, scale, seeds, commit, protocol time), the table (recorded
    MAP@R, Recall@1, NCM accuracy and tuned value per loss, and this run's MAP@R), and the facts a
    reader should check: the best loss, the pooled seed std, the losses within two stds of the
    best, the spread of the means, and the losses whose chosen value lies at the edge of its grid.
    """
    prov = recorded["provenance"]
    rec = recorded["tables"]["reality_check"]
    n_rec = len(prov["seeds"])
    rows = []
    for lab, st in sorted(rec.items(), key=lambda kv: -kv[1]["map@r"] if kv[1]["chosen"] != "nc" else 0):
        done = st["chosen"] != "nc"
        cur = current.get(lab)
        rows.append({"loss": lab, "MAP@R recorded": fmt(st, "map@r", n_rec) if done else "nc",
                     "Recall@1 recorded": fmt(st, "recall@1", n_rec) if done else "nc",
                     "NCM acc recorded": fmt(st, "ncm_acc", n_rec) if done else "nc",
                     "tuned value": st["chosen"],
                     f"MAP@R {current_name}": fmt(cur, "map@r", cur.get("seeds", 1)) if cur else "—"})
    header = (f"recorded: `{prov['dataset']}`, scale `{prov['scale']}`, seeds {prov['seeds']}, commit "
              f"`{prov['commit'][:12]}`, {recorded['extra'].get('rc_seconds', float('nan')):.0f} s of protocol "
              f"on {prov['device']}")
    ok = {lab: st for lab, st in rec.items() if st["chosen"] != "nc"}
    best = max(ok, key=lambda lab: ok[lab]["map@r"])
    sd = math.sqrt(np.mean([st["map@r_std"] ** 2 for st in ok.values()]))
    by_label = {spec.label: spec for spec in reality_check.LOSSES.values()}
    facts = {"best": best, "best_map@r": ok[best]["map@r"], "pooled_std": sd,
             "within_two_std": [lab for lab, st in ok.items() if ok[best]["map@r"] - st["map@r"] <= 2 * sd],
             "min_map@r": min(st["map@r"] for st in ok.values()), "max_map@r": max(st["map@r"] for st in ok.values()),
             "at_grid_edge": [f"{lab} ({st['chosen']:g})" for lab, st in ok.items()
                              if len(by_label[lab].grid) > 1
                              and st["chosen"] in (min(by_label[lab].grid), max(by_label[lab].grid))],
             "map@r": {lab: st["map@r"] for lab, st in ok.items()}}
    return header, pd.DataFrame(rows).set_index("loss"), facts


def rank_correlation(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, int]:
    """Spearman correlation of two score maps over their common keys (ties take average ranks, as
    in :func:`fer_nb.papers.nm_tuple.spearman`), and how many keys they share."""
    common = sorted(set(a) & set(b))
    return spearman([a[k] for k in common], [b[k] for k in common]), len(common)


def train_toy_loss(cfg: Any, name: str, make: Callable[[], torch.nn.Module], problem: Any, seed: int = 0,
                   epochs: int | None = None) -> Any:
    """Train the chapter's 2-D embedding MLP with the loss ``make()`` on a :mod:`fer_nb.toy2d`
    problem (``cfg.toy_*`` settings), checkpointed under ``cfg.out_dir`` by run hash; the trained
    loss is moved back to the CPU for plotting."""
    seed_everything(seed)
    net, loss = toy2d.EmbeddingMLP(problem.in_dim, cfg.toy_hidden), make()
    run_hash = cfg.run_hash(loss=name, problem=problem.name, seed=seed, classes=problem.num_classes)
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}-{problem.name}{problem.num_classes}-seed{seed}"
    run = toy2d.train_toy(net, loss, problem, epochs=epochs or cfg.toy_epochs, batch_size=cfg.toy_batch,
                          lr=cfg.toy_lr, snapshot_steps=[0], seed=seed, device=cfg.device,
                          checkpoint=train.checkpoint_path(cfg.out_dir, stem, run_hash), run_hash=run_hash,
                          desc=name, progress=False)
    run.loss.cpu()
    return run


def toy_measures(run: Any, problem: Any) -> dict[str, Any]:
    """Geometry and retrieval of a toy run's test embedding, each in the loss's own metric:
    intra-class spread, margin, nearest-class-mean accuracy (own metric and Euclidean),
    Recall@1 and MAP@R."""
    metric = retrieval.metric_for(run.loss)
    m = toy2d.embedding_measures(run.train_embedding, problem.y_train, run.test_embedding, problem.y_test,
                                 problem.num_classes, metric=metric)
    r = retrieval.retrieval_metrics(run.test_embedding, problem.y_test, metric=metric)
    return {"metric": metric, "intra": m["intra"], "margin": m["margin"], "ncm_acc": m["ncm_acc"],
            "ncm_euclid": m["ncm_acc_euclid"], "recall@1": r["recall@1"], "map@r": r["map@r"]}


def mined_triplet_table(distances: torch.Tensor, labels: torch.Tensor, mined: Mapping[str, str],
                        margin: float, embed_dim: int) -> dict[str, dict[str, float]]:
    """Per miner (label -> :data:`fer_nb.miners.MINERS` key): how many triplets get weight, how many
    of those violate the margin, and the share of the weight on violating triplets (%)."""
    hinge = torch.relu(distances[:, :, None] - distances[:, None, :] + margin)
    rows = {}
    for label, key in mined.items():
        w = miners.triplet_weights(distances, labels, key, margin, embed_dim=embed_dim)
        rows[label] = {"triplets with weight > 0": int((w > 0).sum()),
                       "of which violate the margin": int(((w > 0) & (hinge > 0)).sum()),
                       "weight on violating triplets (%)": 100 * float((w * (hinge > 0)).sum() / w.sum().clamp_min(1e-12))}
    return rows


def frame_to_dict(frame: pd.DataFrame, drop: Sequence[str] = ("metric",)) -> dict[str, dict[str, float]]:
    """A table of numbers (rows = runs) as ``{row: {column: float}}`` for ``metrics.json``."""
    return {k: {c: float(v) for c, v in row.items() if c not in drop} for k, row in frame.iterrows()}
