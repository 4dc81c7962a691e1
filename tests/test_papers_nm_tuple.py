"""fer_nb.papers.nm_tuple: Algorithm 1's mining and the adaptive reference on a hand-computed batch,
the pre-training and fine-tuning steps under CPU bf16 autocast, the sequence decisions, identity
leakage, the protocol checks and the real-data protocols (FER+ pre-training, CK+, MMI, SFEW) from
DATA_ROOT alone."""
from __future__ import annotations

import pytest
import torch

from fer_nb import config
from fer_nb.data.face_crop import central_face_box, equalize
from fer_nb.data.samplers import ANY_SUBJECT, IdentityAwareSampler
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss, online_positive_mining
from fer_nb.models.inception_fer import InceptionFER
from fer_nb.papers import nm_tuple as nm

from papers_fixtures import make_ckplus, make_ferplus, make_mmi, make_sfew

# positives of class 0 at 0, 0.4 and 4 on a line, one "negative" (class 1) at 3
X1 = torch.tensor([[0.0], [0.4], [4.0], [3.0]], dtype=torch.float64)
Y1 = torch.tensor([0, 0, 0, 1])


def test_online_positive_mining_by_hand():
    pos, neg = (Y1[None] == 0), (Y1[None] == 1)
    keep = online_positive_mining(pos, neg, X1)
    # c0 = 4.4/3; D(neg, c0) = (3 - 22/15)^2 = 2.351 < D(4, c0) = 6.418: the positive at 4 is dropped
    c0 = 4.4 / 3
    assert (4 - c0) ** 2 > (3 - c0) ** 2 > max(c0 ** 2, (0.4 - c0) ** 2)
    assert keep[0].tolist() == [True, True, False, False]


def test_fixed_loss_with_and_without_mining_by_hand():
    # class 0: kept {0, 0.4}, c = 0.2; class 1: c = 3, its negatives 0, 0.4, 4 (D = 9, 6.76, 1); T = 2, tau = 2
    with_mining = (0.0 + (0 + 0 + (3 - 1)) / 3) / 2
    c0 = 4.4 / 3
    pos0 = sum(max(0.0, (p - c0) ** 2 - 1) for p in (0.0, 0.4, 4.0)) / 3
    neg0 = max(0.0, 3 - (3 - c0) ** 2)
    without = ((pos0 + neg0) + 2 / 3) / 2
    assert NMTupleClustersLoss(reference=2.0, tau=2.0)(X1, Y1).item() == pytest.approx(with_mining)
    assert NMTupleClustersLoss(reference=2.0, tau=2.0, mining=False)(X1, Y1).item() == pytest.approx(without)


def test_adaptive_reference_by_hand():
    loss = NMTupleClustersLoss(adaptive=True, embedding_dim=1, init_reference=2.0).double()
    f, c = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    assert loss.H(f, c).item() == pytest.approx(2.0 - 1.5 ** 2)          # H = T0 - ||f - c||^2 at the start
    # Eq. 10 at init: class 0 all hinges 0; class 1 (c = 3): positive H = 2 -> 0, negatives H = -7, -4.76, 1
    # -> relu(H + 1) = 0, 0, 2, over 4 hinges
    value = loss(X1, Y1)
    assert value.item() == pytest.approx((0.0 + 2 / 4) / 2)
    value.backward()
    assert loss.H.b.grad.item() == pytest.approx(0.5 * 1 / 4)           # d/db of relu(H + 1) for the one active hinge
    with torch.no_grad():
        loss.H.b.fill_(3.0)                                            # a larger learned reference T
    assert loss(X1, Y1).item() == pytest.approx((0.0 + 3 / 4) / 2)


def _tiny_faces(n_subjects=3, n_classes=7, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat(n_subjects)
    s = torch.arange(n_subjects).repeat_interleave(n_classes)
    return torch.randint(0, 256, (len(y), 1, size, size), generator=g, dtype=torch.uint8), y, s


def test_pretrain_and_finetune_steps_under_cpu_bf16(monkeypatch):
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    torch.manual_seed(0)
    images, y, s = _tiny_faces()
    net = InceptionFER(7, width=0.125, hidden=16, embedding_dim=8, branches=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    logs = nm.pretrain_step(net, opt, images[:8], y[:8], pad=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(logs["loss"]) and logs["loss"].dtype == torch.float32
    loss_fn = NMTupleClustersLoss(adaptive=True, embedding_dim=net.embedding_dim, init_reference=2.0)
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    tuples = IdentityAwareSampler(y, s, 2, generator=torch.Generator().manual_seed(0)).build(torch.tensor([0, 8])).indices
    assert tuples.shape == (2, 1 + 2 + 6)
    b0 = loss_fn.H.b.detach().clone()
    w0 = net.fc5.weight.detach().clone()
    with torch.no_grad():      # the softmax term by hand: the same augmentation draw, the queries' rows only
        x = nm.prepare_input(images[tuples.reshape(-1)], True, 2, torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)["logits"]
        ce = torch.nn.functional.cross_entropy(logits[::tuples.shape[1]].float(), y[tuples[:, 0]])
    logs = nm.finetune_step(net, loss_fn, opt, images, y, tuples, alpha=0.5, pad=2,
                            generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in logs.values())
    assert logs["softmax"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert logs["loss"].item() == pytest.approx(logs["softmax"].item() + 0.5 * logs["metric"].item(), rel=1e-5)
    assert not torch.equal(net.fc5.weight, w0)                          # the ML branch learned
    if logs["metric"].item() > 0:
        assert not torch.equal(loss_fn.H.b.detach(), b0)                # and the adaptive reference with it


def test_sequence_decisions_by_hand():
    logits = torch.log(torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.45, 0.55],    # sequence 7
                                     [0.7, 0.3], [0.8, 0.2], [0.2, 0.8]]))    # sequence 9
    out = {"logits": logits, "sequence": torch.tensor([7, 7, 7, 9, 9, 9]), "expression": torch.tensor([1, 1, 1, 0, 0, 0])}
    pred, target = nm.sequence_decision(out, "max")       # CK+: the most confident frame decides
    assert pred.tolist() == [1, 1] and target.tolist() == [1, 0]
    pred, _ = nm.sequence_decision(out, "mean")           # MMI: the average score (0.383, 0.617) / (0.567, 0.433)
    assert pred.tolist() == [1, 0]
    with pytest.raises(ValueError, match="rule must be"):
        nm.sequence_decision(out, "vote")


def test_identity_leakage_by_hand():
    emb = torch.tensor([[0.0], [0.05], [1.0], [5.0], [5.2]])
    subject = torch.tensor([1, 2, 1, 2, 3])
    expression = torch.tensor([0, 0, 1, 0, 1])
    # nearest neighbour showing ANOTHER expression: 0 -> 2 (same subject), 1 -> 2, 2 -> 1, 3 -> 4, 4 -> 3 (others);
    # counting same-expression neighbours too would give 0 -> 1 (another subject), i.e. 0 %
    leak, chance = nm.identity_leakage(emb, subject, expression)
    assert leak == pytest.approx(100 / 5)
    assert chance == pytest.approx(100 * (1 / 2 + 0 + 1 / 3 + 0 + 0) / 5)


def test_equalize_and_face_box():
    x = torch.tensor([[[[10, 10], [20, 30]]]], dtype=torch.uint8)
    assert equalize(x).flatten().tolist() == [0, 0, 128, 255]          # cdf (2, 3, 4) -> (0, 1/2, 1) * 255
    flat = torch.full((1, 1, 2, 2), 7, dtype=torch.uint8)
    assert torch.equal(equalize(flat), flat)                            # one grey level: unchanged
    assert central_face_box(640, 490, 0.6) == pytest.approx((173.0, 98.0, 294.0, 294.0))
    with pytest.raises(ValueError, match="fraction in"):
        central_face_box(640, 490, 1.5)


def _cfg(tmp_path, **kw):
    args = dict(scale="smoke", dataset="synthfacs", data_root=None, device="cpu", out_dir=tmp_path / "run")
    over = {k: kw.pop(k) for k in list(kw) if k not in args}
    args.update(kw)
    return config.resolve("nm_tuple", **args, **over)


def test_protocol_checks(tmp_path):
    with pytest.raises(ValueError, match="PRETRAIN_DATASET='rafdb'"):
        nm.check_protocol(_cfg(tmp_path, pretrain_dataset="rafdb"))
    with pytest.raises(ValueError, match="needs the data on disk"):
        nm.check_protocol(_cfg(tmp_path, pretrain_dataset="ferplus"))
    with pytest.raises(ValueError, match="is not used by notebook"):
        _cfg(tmp_path, dataset="fer2013", data_root=str(tmp_path))      # a pre-training set, not a protocol
    nm.check_protocol(_cfg(tmp_path))


def test_ferplus_pretraining_then_ckplus_folds_from_data_root_alone(tmp_path):
    make_ferplus(tmp_path)
    make_ckplus(tmp_path)
    cfg = _cfg(tmp_path, dataset="ckplus", data_root=str(tmp_path), pretrain_dataset="ferplus", ck_folds=3,
               pool_n=24, tuples_per_batch=4)
    proto = nm.load_protocols(cfg)
    ck = proto["ckplus"]["data"]
    assert ck.class_names == nm.CK_NAMES and len(ck) == 6 * 7 * 3 and ck.images.shape[1:] == (1, 48, 48)
    assert proto["ckplus"]["identities"] and ck.info["face_crop"] == cfg.face_crop
    pool = nm.pretrain_pool(cfg, 0)
    assert len(pool) == 24 and pool.num_classes == 8                    # FER+ has contempt
    runs = nm.run_experiments(cfg, proto)
    assert len(runs) == 4 and {r["protocol"] for r in runs} == {"ckplus"}
    tr, va, te = nm.fold_rows(ck.labels["subject"], 3, runs[0]["fold"])
    subj = ck.labels["subject"]
    assert not set(subj[tr].tolist()) & set(subj[te].tolist()) and not set(subj[va].tolist()) & set(subj[te].tolist())
    tables = nm.accuracy_tables(nm.runs_frame(runs))
    assert set(tables) == {"table3"} and "ckplus" in tables["table3"]["2B(N+M)Softmax"]


def test_mmi_face_crop_and_sfew_without_identities(tmp_path):
    make_mmi(tmp_path)
    cfg = _cfg(tmp_path, dataset="mmi", data_root=str(tmp_path))
    mmi = nm.load_protocols(cfg)["mmi"]["data"]
    assert mmi.class_names == nm.MMI_NAMES and len(mmi) == 4 * 6 * 3
    make_sfew(tmp_path)
    cfg = _cfg(tmp_path, dataset="sfew", data_root=str(tmp_path), tuples_per_batch=4)
    proto = nm.load_protocols(cfg)
    tr = proto["sfew"]["train"]
    assert proto["sfew"]["identities"] is False
    assert len(torch.unique(tr.labels["subject"])) == len(tr)           # each image its own subject
    sam = IdentityAwareSampler(tr.labels["expression"], tr.labels["subject"], 2, generator=torch.Generator().manual_seed(0))
    assert bool((sam.build(torch.arange(len(tr))).neg_source == ANY_SUBJECT).all())   # no identity-aware negatives
    runs = nm.run_experiments(cfg, proto)
    assert len(runs) == 4 and all("leak_emb" not in r for r in runs)
    assert nm.leakage_table(nm.runs_frame(runs)) == {v: {} for v in nm.VARIANTS}


def test_gpu_preset_resolves_and_one_step_of_it_runs_on_cpu(tmp_path):
    cfg = config.resolve("nm_tuple", "gpu", device="cpu", out_dir=tmp_path / "run")
    assert (cfg.width, cfg.hidden, cfg.embedding_dim, cfg.n_positives, cfg.tuples_per_batch) == (1.0, 512, 128, 6, 12)
    nm.check_protocol(cfg)
    torch.manual_seed(0)
    images, y, s = _tiny_faces(n_subjects=2)
    net = nm.new_model(cfg, 7, 2)
    loss_fn = nm.metric_loss(cfg, "nm", net.embedding_dim)
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=cfg.lr)
    tuples = IdentityAwareSampler(y, s, cfg.n_positives, generator=torch.Generator().manual_seed(0)).build(torch.tensor([0])).indices
    logs = nm.finetune_step(net, loss_fn, opt, images, y, tuples, cfg.alpha, cfg.crop_pad)
    assert all(torch.isfinite(v) for v in logs.values())


# ----------------------------------------------------------------------------- protocol data, by hand
import hashlib  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

from fer_nb import train  # noqa: E402
from fer_nb.data import splits  # noqa: E402
from fer_nb.data.samplers import tuple_groups  # noqa: E402
from fer_nb.data.schema import EXPRESSIONS, FaceArrays  # noqa: E402
from fer_nb.losses.n_plus_one_tuple import NPlusOneTupleLoss  # noqa: E402

V1, V2, V3, V4 = nm.VARIANTS   # 1B(N+1), 2B(N+1), 1B(N+M), 2B(N+M)


def test_prior_puts_weight_only_on_the_protocols_classes():
    assert nm.prior(nm.CK_NAMES, True) == [1.0 if n != "neutral" else 0.0 for n in EXPRESSIONS]
    assert len(EXPRESSIONS) == 8 and EXPRESSIONS[7] == "contempt"
    mmi = nm.prior(nm.MMI_NAMES, False)                 # canonical 7 (no contempt), neutral off
    assert mmi == [0.0 if n == "neutral" else 1.0 for n in EXPRESSIONS[:7]] and sum(mmi) == 6


def _clips(curves):
    frames = len(curves[0])
    n = len(curves) * frames
    return FaceArrays(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), {}, "clips", EXPRESSIONS[:7],
                      {"frames": frames, "curve": torch.tensor(curves, dtype=torch.float32).reshape(-1)})


def test_clip_frames_by_hand():
    seq = _clips([[0.0, 0.2, 0.5, 0.7, 1.0, 0.3],      # apex at frame 4 -> frames 2, 3, 4
                  [1.0, 0.8, 0.5, 0.2, 0.1, 0.0]])     # apex at frame 0 -> clamped to 0, 1, 2 (+6)
    assert nm.clip_frames(seq, "apex").tolist() == [2, 3, 4, 6, 7, 8]
    assert nm.clip_frames(seq, "middle").tolist() == [1, 2, 3, 7, 8, 9]   # (6 - 3) // 2 = 1


def _label_hash(ds):
    m = hashlib.sha256()
    for k in ("expression", "subject", "sequence", "frame"):
        m.update(k.encode())
        m.update(ds.labels[k].numpy().tobytes())
    return m.hexdigest()[:16]


def test_synthfacs_protocols_seeds_offsets_frames_and_keys(tmp_path):
    cfg = _cfg(tmp_path)
    assert (cfg.ck_sequences, cfg.mmi_sequences, cfg.frames, cfg.n_subjects, cfg.sfew_train, cfg.sfew_val,
            cfg.sfew_subjects, cfg.image_size, cfg.ck_folds, cfg.mmi_folds) == (40, 36, 12, 16, 96, 48, 12, 48, 8, 10)
    proto = nm.load_protocols(cfg)
    assert list(proto) == ["ckplus", "mmi", "sfew"]
    assert proto["ckplus"].keys() == {"data", "k", "identities"} and proto["sfew"].keys() == {"train", "val", "identities"}
    assert proto["ckplus"]["k"] == 8 and proto["mmi"]["k"] == 10
    assert all(p["identities"] is True for p in proto.values())
    ck, mmi = proto["ckplus"]["data"], proto["mmi"]["data"]
    tr, va = proto["sfew"]["train"], proto["sfew"]["val"]
    # the generators' seeds, domains, sizes and identity ranges the recorded runs were made with
    assert (ck.info["seed"], mmi.info["seed"], tr.info["seed"], va.info["seed"]) == (100, 200, 300, 400)
    assert (ck.info["domain"], mmi.info["domain"], tr.info["domain"], va.info["domain"]) == ("lab", "lab", "wild", "wild")
    assert (tr.info["n_subjects"], tr.info["subject_offset"], va.info["n_subjects"], va.info["subject_offset"]) == (12, 3000, 6, 4000)
    for ds, lo, hi in ((ck, 1000, 1015), (mmi, 2000, 2014), (tr, 3000, 3011), (va, 4000, 4005)):
        assert (ds.labels["subject"].min().item(), ds.labels["subject"].max().item()) == (lo, hi)
        assert ds.images.shape[1:] == (1, 48, 48)
    assert (len(ck), len(mmi), len(tr), len(va)) == (3 * 40, 3 * 36, 96, 48)
    assert ck.class_names == nm.CK_NAMES and mmi.class_names == nm.MMI_NAMES
    assert tr.class_names == va.class_names == nm.SFEW_NAMES
    assert torch.bincount(ck.labels["expression"]).tolist() == [27, 9, 21, 21, 15, 12, 15]     # contempt drawn
    assert torch.bincount(mmi.labels["expression"]).tolist() == [12, 21, 12, 12, 27, 24]
    # three frames per clip: the apex and the two before it (CK+), the three middle ones (MMI)
    assert ck.labels["frame"][:12].tolist() == [3, 4, 5, 3, 4, 5, 2, 3, 4, 2, 3, 4]
    assert mmi.labels["frame"].tolist() == [4, 5, 6] * 36
    assert ck.labels["sequence"][:6].tolist() == [0, 0, 0, 1, 1, 1]
    assert [_label_hash(d) for d in (ck, mmi, tr, va)] == [
        "a48ac52855413c23", "1d084de441cedb86", "d9c927481ae8ae59", "64a7a438e06b07ef"]


# ----------------------------------------------------------------------------- evaluation and tables, by hand
def test_spearman_matches_scipy_with_ties_and_is_zero_for_a_constant_list():
    a, b = [96.5, 94.0, 94.0, 91.2, 88.0], [80.0, 82.5, 79.0, 79.0, 60.0]
    assert nm.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert nm.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))   # 0.8, no ties
    assert nm.spearman([5, 5, 5], [1, 2, 3]) == 0.0          # constant first list: no ordering to compare
    assert nm.spearman([1, 2, 3], [7, 7, 7]) == 0.0


def test_evaluate_run_by_hand():
    p = torch.tensor([[0.1, 0.2, 0.7], [0.05, 0.9, 0.05], [0.2, 0.2, 0.6],    # sequence 5 (anger... class 2)
                      [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.4, 0.3]])     # sequence 8 (class 0)
    emb = torch.tensor([[0.0], [0.1], [5.0], [0.2], [5.1], [9.0]])
    feats = torch.tensor([[0.0], [10.0], [0.2], [10.1], [0.1], [10.2]])    # one cluster per person
    out = {"logits": p.log(), "expression": torch.tensor([2, 2, 2, 0, 0, 0]), "sequence": torch.tensor([5, 5, 5, 8, 8, 8]),
           "subject": torch.tensor([1, 2, 1, 2, 1, 2]), "embedding": emb, "features": feats}
    r = {"test": out, "K": 3}
    rec = nm.evaluate_run("ckplus", r, True)
    # frames right: 0, 2 (seq 5), 3, 4 (seq 8) -> 4 / 6; CK+ max rule: seq 5 -> frame 1 (0.9, class 1), seq 8 -> class 0
    assert rec["img_acc"] == pytest.approx(100 * 4 / 6) and rec["nc"] is False
    assert rec["seq_acc"] == pytest.approx(50.0)
    assert rec["cm"].tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert (rec["leak_emb"], rec["leak_chance"]) == nm.identity_leakage(emb, out["subject"], out["expression"])
    assert rec["leak_fc2"] == nm.identity_leakage(feats, out["subject"], out["expression"])[0]
    assert rec["leak_fc2"] == 100.0 and rec["leak_emb"] == pytest.approx(100 * 4 / 6)
    assert set(rec) == {"img_acc", "nc", "seq_acc", "cm", "leak_emb", "leak_chance", "leak_fc2"}
    # MMI mean rule: seq 5 averages (0.117, 0.433, 0.45) -> class 2 (right)
    rec = nm.evaluate_run("mmi", r, False)
    assert rec["seq_acc"] == pytest.approx(100.0) and rec["cm"].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert set(rec) == {"img_acc", "nc", "seq_acc", "cm"}
    # SFEW: image level, the confusion matrix of the frames
    rec = nm.evaluate_run("sfew", r, False)
    assert rec["seq_acc"] == rec["img_acc"] == pytest.approx(100 * 4 / 6)
    assert rec["cm"].tolist() == [[2, 1, 0], [0, 0, 0], [0, 1, 2]]
    # one predicted class everywhere: "nc"; two classes are not
    one = dict(out, logits=torch.tensor([[2.0, 0.0, 0.0]]).repeat(6, 1))
    assert nm.evaluate_run("sfew", {"test": one, "K": 3}, False)["nc"] is True
    two = dict(out, logits=torch.tensor([[2.0, 0.0, 0.0]] * 3 + [[0.0, 2.0, 0.0]] * 3))
    assert nm.evaluate_run("sfew", {"test": two, "K": 3}, False)["nc"] is False


def _run(protocol, variant, seed, seq, img=None, nc=False, **extra):
    return {"protocol": protocol, "variant": variant, "seed": seed, "fold": 0, "K": 7, "names": (), "history": None,
            "out": None, "cm": None, "img_acc": seq if img is None else img, "seq_acc": seq, "nc": nc, **extra}


def test_accuracy_tables_by_hand():
    runs = []
    for i, v in enumerate(nm.VARIANTS):
        runs += [_run("ckplus", v, 0, 60 + i, 50 + i, nc=(i == 1)), _run("ckplus", v, 1, 70 + i, 52 + i),
                 _run("mmi", v, 0, 40 + i, 30 + i), _run("sfew", v, 0, 20 + i, nc=(i == 0))]
    frame = nm.runs_frame(runs)
    assert "out" not in frame and "cm" not in frame and "history" not in frame and "names" not in frame
    tables = nm.accuracy_tables(frame)
    assert set(tables) == {"table3", "table5"} and list(tables["table3"]) == list(nm.VARIANTS)
    sd = math.sqrt(2 * 5 ** 2)                       # two runs 10 apart: sample std = 7.07
    assert tables["table3"][V2] == pytest.approx({
        "ckplus": 66.0, "ckplus_std": sd, "ckplus_nc_runs": 1.0, "ckplus_image_level": 52.0,
        "mmi": 41.0, "mmi_std": 0.0, "mmi_nc_runs": 0.0, "mmi_image_level": 31.0})
    assert tables["table5"][V4] == {"val": 23.0, "val_std": 0.0, "val_nc_runs": 0.0}
    assert tables["table5"][V1] == {"val": "nc", "val_std": 0.0, "val_nc_runs": 1.0}   # its every run is one class
    assert set(nm.accuracy_tables(frame[frame.protocol == "sfew"])) == {"table5"}


def test_leakage_table_by_hand():
    runs = []
    for i, v in enumerate(nm.VARIANTS):
        runs += [_run("ckplus", v, 0, 50, leak_emb=10.0 + i, leak_fc2=30.0, leak_chance=5.0),
                 _run("ckplus", v, 1, 50, leak_emb=20.0 + i, leak_fc2=40.0, leak_chance=7.0),
                 _run("sfew", v, 0, 50)]                       # no identities: no leakage columns
    table = nm.leakage_table(nm.runs_frame(runs))
    assert list(table) == list(nm.VARIANTS)
    sd = math.sqrt(2 * 5 ** 2)
    assert table[V3] == pytest.approx({"ckplus_embedding": 17.0, "ckplus_embedding_std": sd, "ckplus_fc2": 35.0,
                                       "ckplus_fc2_std": sd, "ckplus_chance": 6.0})


def test_mean_confusion_by_hand():
    runs = [dict(_run("ckplus", V4, 0, 0), cm=torch.tensor([[2, 0], [1, 1]]), names=("a", "b")),
            dict(_run("ckplus", V3, 0, 0), cm=torch.tensor([[0, 9], [9, 0]]), names=("x", "y")),
            dict(_run("mmi", V4, 0, 0), cm=torch.tensor([[0, 9], [9, 0]]), names=("x", "y")),
            dict(_run("ckplus", V4, 1, 0), cm=torch.tensor([[0, 0], [3, 1]]), names=("a", "b"))]   # an empty row: 0 %
    cm, names = nm.mean_confusion(runs, "ckplus")                 # default: 2B(N+M)Softmax
    assert names == ("a", "b") and cm.dtype == torch.float64
    assert torch.allclose(cm, torch.tensor([[50.0, 0.0], [62.5, 37.5]], dtype=torch.float64))
    cm, names = nm.mean_confusion(runs, "ckplus", V3)
    assert names == ("x", "y") and torch.allclose(cm, torch.tensor([[0.0, 100.0], [100.0, 0.0]], dtype=torch.float64))


def test_ordering_rows_by_hand():
    runs = []
    for v, a, b in ((V1, 65, 75), (V2, 70, 90), (V3, 74, 76), (V4, 85, 95)):      # means 70, 80, 75, 90
        runs += [_run("ckplus", v, 0, a), _run("ckplus", v, 1, b)]
    for v, a in ((V1, 30), (V2, 30), (V3, 25), (V4, 20)):
        runs.append(_run("sfew", v, 0, a))
    paper = {"table3": {"rows": {v: {"ckplus": 90.0 + i, "mmi": 0.0} for i, v in enumerate(nm.VARIANTS)}},
             "table5": {"rows": {v: {"val": 40.0 + i} for i, v in enumerate(nm.VARIANTS)}}}
    ck, sf = nm.ordering_rows(nm.runs_frame(runs), paper)
    assert ck == {"protocol": "ckplus", "ours (best first)": f"{V4} > {V2} > {V3} > {V1}",
                  "spearman vs paper": 0.8, "2B(N+M) best": True, "acc": {V1: 70.0, V2: 80.0, V3: 75.0, V4: 90.0}}
    # ranks (3.5, 3.5, 2, 1) vs (1, 2, 3, 4); the tie at 30 ranks by name, the first of the tie is "best"
    assert sf["protocol"] == "sfew" and sf["ours (best first)"] == f"{V2} > {V1} > {V3} > {V4}"
    assert sf["spearman vs paper"] == round(scipy.stats.spearmanr([30, 30, 25, 20], [40, 41, 42, 43]).statistic, 2)
    assert sf["spearman vs paper"] == -0.95 and sf["2B(N+M) best"] is False


# ----------------------------------------------------------------------------- folds, inputs, wiring
def test_folds_for_and_fold_rows():
    proto = {"ckplus": {"k": 8}, "sfew": {}}
    assert nm.folds_for(SimpleNamespace(folds_per_seed="one"), proto, "ckplus", 10) == [2]      # seed 10 -> fold 10 % 8
    assert nm.folds_for(SimpleNamespace(folds_per_seed="all"), proto, "ckplus", 10) == list(range(8))
    assert nm.folds_for(SimpleNamespace(folds_per_seed="all"), proto, "sfew", 3) == [0]         # one split
    subjects = torch.arange(6).repeat_interleave(2)
    folds = [test for _, test in splits.subject_kfold(subjects, 3, seed=0)]
    for fold, (t, v) in ((1, (1, 2)), (2, (2, 0)), (4, (1, 2))):         # val = the next fold; fold wraps mod k
        tr, va, te = nm.fold_rows(subjects, 3, fold)
        assert te.tolist() == folds[t].tolist() and va.tolist() == folds[v].tolist()
        assert tr.tolist() == folds[3 - t - v].tolist()


def test_prepare_input_standardises_each_image():
    x = torch.stack([torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4) * 10,
                     torch.full((1, 4, 4), 200, dtype=torch.uint8)])
    x[1, 0, 0, 0] = 210
    out = nm.prepare_input(x, False)
    a = x[0].float() / 255
    assert torch.allclose(out[0], (a - a.mean()) / a.std(), atol=1e-6)
    assert torch.allclose(out.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std((1, 2, 3)), torch.ones(2), atol=1e-5)
    flat = nm.prepare_input(torch.full((1, 1, 4, 4), 9, dtype=torch.uint8), False)
    assert torch.equal(flat, torch.zeros(1, 1, 4, 4))                     # std clamped: no division by 0


def test_metric_loss_kinds(tmp_path):
    cfg = _cfg(tmp_path)
    lf = nm.metric_loss(cfg, "nplus1", 16)
    assert isinstance(lf, NPlusOneTupleLoss) and lf.margin == cfg.nplus1_margin
    lf = nm.metric_loss(cfg, "nm", 16)
    assert isinstance(lf, NMTupleClustersLoss) and lf.adaptive is True
    assert lf.H.b.item() == cfg.init_reference and lf.H.c.shape[-1] == 16
    with pytest.raises(ValueError, match=r"metric must be 'nplus1' or 'nm', got 'n1'"):
        nm.metric_loss(cfg, "n1", 16)


def test_synthfacs_pretraining_pool(tmp_path):
    cfg = _cfg(tmp_path, pool_n=16)
    pool = nm.pretrain_pool(cfg, 2)
    assert len(pool) == 16 and pool.class_names == EXPRESSIONS                # 8 classes: contempt too
    assert pool.images.shape[1:] == (1, 48, 48)
    assert (pool.info["seed"], pool.info["domain"], pool.info["n_subjects"], pool.info["subject_offset"]) == (502, "lab", 60, 5000)
    assert pool.info["with_contempt"] is True


class _FakeFit:
    """Stands in for train.fit_or_load: records what the paper code hands to the training loop."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(train, "fit_or_load", self)

    def __call__(self, checkpoint, run_hash, **kw):
        self.calls.append(dict(kw, checkpoint=checkpoint, run_hash=run_hash))
        return train.History()


def test_pretrain_wiring(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, pool_n=20, pretrain_batch=8)
    fit = _FakeFit(monkeypatch)
    state = nm.pretrain(cfg, 3)
    (call,) = fit.calls
    h = cfg.run_hash(stage="pretrain", seed=3)
    assert call["run_hash"] == h and call["checkpoint"] == train.checkpoint_path(cfg.out_dir, "pretrain-seed3", h)
    assert call["epochs"] == cfg.pretrain_epochs and call["steps_per_epoch"] == 3 and call["desc"] == "pretrain seed 3"
    model = call["modules"]["model"]
    assert set(call["modules"]) == {"model"} and model.classifier.out_features == 8 and model.branches == 1
    assert set(call["optimizers"]) == {"opt"} and isinstance(call["optimizers"]["opt"], torch.optim.Adam)
    batches = call["train_batches"](2)                     # the order of epoch 2 of seed 3: randperm seeded 30002
    want = torch.randperm(20, generator=torch.Generator().manual_seed(30_002)).split(8)
    assert [b.tolist() for b in batches] == [b.tolist() for b in want]
    seen = {}
    monkeypatch.setattr(nm, "pretrain_step", lambda *a: seen.update(args=a) or {})
    call["train_step"](batches[0], None)
    _, _, images, labels, pad, gen = seen["args"]
    pool = nm.pretrain_pool(cfg, 3)
    assert torch.equal(images, pool.images[batches[0]]) and torch.equal(labels, pool.labels["expression"][batches[0]])
    assert pad == cfg.crop_pad and isinstance(gen, torch.Generator) and gen.initial_seed() == 3
    assert state and not any(k.startswith("classifier") for k in state)
    assert set(state) == {k for k in model.state_dict() if not k.startswith("classifier")}


def test_finetune_wiring_on_a_fold_and_on_sfew(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, ck_sequences=24, ck_folds=3, sfew_train=24, sfew_val=10)
    proto = {"ckplus": nm._synth_protocol(cfg, "ckplus"), "sfew": nm._synth_protocol(cfg, "sfew")}
    fit = _FakeFit(monkeypatch)
    ck = proto["ckplus"]["data"]
    r = nm.finetune(cfg, proto, "ckplus", V4, 3, 1, {})
    (call,) = fit.calls
    h = cfg.run_hash(stage="finetune", protocol="ckplus", variant=V4, seed=3, fold=1)
    assert h != cfg.run_hash(stage="finetune", protocol="ckplus", variant=V4, seed=None, fold=1)
    assert h != cfg.run_hash(stage="finetune", variant=V4, seed=3, fold=1)
    assert call["run_hash"] == h
    assert call["checkpoint"] == train.checkpoint_path(cfg.out_dir, f"ckplus-{V4}-seed3-fold1", h)
    assert set(call["modules"]) == {"model", "loss"} and call["epochs"] == cfg.epochs
    model, loss_fn = call["modules"]["model"], call["modules"]["loss"]
    assert isinstance(loss_fn, NMTupleClustersLoss) and loss_fn.adaptive and model.branches == 2
    assert model.classifier.out_features == 7 and loss_fn.H.c.shape[-1] == model.embedding_dim == cfg.embedding_dim
    opt_params = {id(p) for g in call["optimizers"]["opt"].param_groups for p in g["params"]}
    assert id(loss_fn.H.b) in opt_params and id(model.fc5.weight) in opt_params
    tr, va, te = nm.fold_rows(ck.labels["subject"], 3, 1)
    batches = call["train_batches"](0)
    sam = IdentityAwareSampler(ck.labels["expression"][tr], ck.labels["subject"][tr], cfg.n_positives)
    assert batches[0].shape[1] == 1 + cfg.n_positives + sam.n_negatives and len(batches[0]) == cfg.tuples_per_batch
    used = torch.cat([b.reshape(-1) for b in batches])
    assert set(used.tolist()) <= set(tr.tolist())                            # no val / test image is trained on
    assert set(torch.cat([b[:, 0] for b in batches]).tolist()) == set(tr.tolist())   # every train image a query once
    assert call["steps_per_epoch"] == -(-len(tr) // cfg.tuples_per_batch) == 3            # a count of batches
    assert isinstance(call["steps_per_epoch"], int)
    logs = call["train_step"](batches[0], None)
    assert set(logs) == {"loss", "softmax", "metric"} and all(torch.isfinite(v) for v in logs.values())
    acc = call["evaluate"](0)["val/acc"]
    assert 0.0 <= acc <= 100.0
    out = nm.infer(model, ck, va)
    assert acc == pytest.approx(100 * float((out["logits"].argmax(1) == ck.labels["expression"][va]).double().mean()))
    assert r["K"] == 7 and r["names"] == nm.CK_NAMES and isinstance(r["history"], train.History)
    assert torch.equal(r["test"]["expression"], ck.labels["expression"][te])
    assert torch.equal(r["test"]["subject"], ck.labels["subject"][te]) and r["test"]["embedding"].shape == (len(te), 16)
    # SFEW: train on all of train, test on all of val; the (N+1) loss for (N+1) variants
    r = nm.finetune(cfg, proto, "sfew", V1, 0, 0, {})
    call = fit.calls[-1]
    assert call["checkpoint"].name == f"sfew-1B_N_1_Softmax-seed0-fold0-{call['run_hash']}.pt"
    assert isinstance(call["modules"]["loss"], NPlusOneTupleLoss) and call["modules"]["model"].branches == 1
    sf = proto["sfew"]
    assert set(torch.cat([b[:, 0] for b in call["train_batches"](0)]).tolist()) == set(range(len(sf["train"])))
    assert torch.equal(r["test"]["expression"], sf["val"].labels["expression"]) and r["names"] == nm.SFEW_NAMES


def test_run_experiments_records(monkeypatch):
    calls = []
    monkeypatch.setattr(nm, "pretrain", lambda cfg, seed: {"w": seed})
    monkeypatch.setattr(nm, "finetune", lambda cfg, proto, kind, variant, seed, fold, state: calls.append(
        (kind, variant, seed, fold, state["w"])) or {"test": f"out-{kind}", "history": "h", "K": 3, "names": ("a",)})
    monkeypatch.setattr(nm, "evaluate_run", lambda kind, r, identities: {"seq_acc": 1.0, "ids": identities})
    cfg = SimpleNamespace(seeds=(0, 4), folds_per_seed="one")
    proto = {"ckplus": {"k": 3, "identities": True}, "sfew": {"identities": False}}
    runs = nm.run_experiments(cfg, proto)
    assert len(runs) == 2 * 2 * 4
    assert [c[:4] for c in calls[:5]] == [("ckplus", v, 0, 0) for v in nm.VARIANTS] + [("sfew", V1, 0, 0)]
    assert all(c[2] == c[4] for c in calls)                               # each seed fine-tunes its own pre-training
    assert runs[8] == {"protocol": "ckplus", "variant": V1, "seed": 4, "fold": 1, "K": 3, "names": ("a",),
                       "history": "h", "out": "out-ckplus", "seq_acc": 1.0, "ids": True}
    assert runs[-1]["protocol"] == "sfew" and runs[-1]["ids"] is False and runs[-1]["variant"] == V4


def test_pretrain_step_trains_on_augmented_images(monkeypatch):
    monkeypatch.delenv("FER_NB_CPU_BF16", raising=False)           # fp32: compared with an fp32 hand computation
    torch.manual_seed(0)
    images, y, _ = _tiny_faces(n_subjects=1)
    net = InceptionFER(7, width=0.125, hidden=16, embedding_dim=8, branches=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        net.train()
        ce = lambda x: torch.nn.functional.cross_entropy(net(x)["logits"], y).item()   # noqa: E731
        aug = ce(nm.prepare_input(images, True, 3, torch.Generator().manual_seed(5)))
        plain = ce(nm.prepare_input(images, False))
    assert aug != pytest.approx(plain, rel=1e-4)
    w0 = net.classifier.weight.detach().clone()
    logs = nm.pretrain_step(net, opt, images, y, 3, torch.Generator().manual_seed(5))
    assert logs["loss"].item() == pytest.approx(aug, rel=1e-5)
    assert not torch.equal(net.classifier.weight, w0)


def test_finetune_step_metric_term_is_per_tuple(monkeypatch):
    monkeypatch.delenv("FER_NB_CPU_BF16", raising=False)
    torch.manual_seed(0)
    images, y, s = _tiny_faces()
    net = InceptionFER(7, width=0.125, hidden=16, embedding_dim=8, branches=2)
    loss_fn = NMTupleClustersLoss(adaptive=True, embedding_dim=8, init_reference=2.0)
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=1e-3)
    tuples = IdentityAwareSampler(y, s, 2, generator=torch.Generator().manual_seed(0)).build(torch.tensor([0, 8, 16])).indices
    with torch.no_grad():
        net.train()
        x = nm.prepare_input(images[tuples.reshape(-1)], True, 2, torch.Generator().manual_seed(1))
        emb, yy = net(x)["embedding"], y[tuples.reshape(-1)]
        per_tuple = loss_fn(emb, yy, groups=tuple_groups(3, tuples.shape[1])).item()
        pooled = loss_fn(emb, yy).item()
    assert per_tuple != pytest.approx(pooled, rel=1e-3)
    logs = nm.finetune_step(net, loss_fn, opt, images, y, tuples, 0.5, 2, torch.Generator().manual_seed(1))
    assert logs["metric"].item() == pytest.approx(per_tuple, rel=1e-5)


def test_real_sfew_with_released_identities_keeps_them(tmp_path, monkeypatch):
    from fer_nb.data import registry

    def fake_load(name, root, split=None, **kw):
        assert (name, Path(root), kw.get("channels"), kw.get("image_size")) == ("sfew", tmp_path, 1, 48)
        n, base = {"train": (7, 10), "val": (3, 50)}[split]
        return FaceArrays(torch.full((n, 1, 48, 48), base, dtype=torch.uint8),
                          {"expression": torch.arange(n) % 7, "subject": torch.arange(n) + base}, "sfew", EXPRESSIONS[:7])

    monkeypatch.setattr(registry, "load", fake_load)
    p = nm._real_protocol(_cfg(tmp_path, dataset="sfew", data_root=str(tmp_path)), "sfew")
    assert p["identities"] is True
    assert p["train"].labels["subject"].tolist() == list(range(10, 17)) and p["val"].labels["subject"].tolist() == [50, 51, 52]
    assert p["train"].class_names == nm.SFEW_NAMES
    assert p["val"].labels["expression"].tolist() == [nm.SFEW_NAMES.index(EXPRESSIONS[i]) for i in range(3)]
