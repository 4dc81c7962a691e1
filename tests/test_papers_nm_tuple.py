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
