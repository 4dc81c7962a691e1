"""fer_nb.papers.large_margin: the paper's balancing rule, pseudo-emotion targets, one training step
under CPU bf16 autocast, the protocol checks and the real-data protocols from DATA_ROOT alone."""
from __future__ import annotations

import pytest
import torch

from fer_nb import config
from fer_nb import pseudo_emotions as pe
from fer_nb.data.schema import AUS
from fer_nb.losses.large_margin_loss import LargeMarginLoss
from fer_nb.models.large_margin_net import LargeMarginNet
from fer_nb.papers import large_margin as lm

from papers_fixtures import make_ckplus, make_emotionet, make_ferplus


def test_balanced_weight_follows_the_papers_rule_and_its_cap():
    sup, emb = torch.tensor(0.4), torch.tensor(-1.25)
    # lambda_1 L_S = 0.8 lambda L_M  ->  lambda = 0.4 / (0.8 * 1.25) = 0.4
    assert lm.balanced_weight(sup, emb, 1.0, cap=0.5, balance=0.8).item() == pytest.approx(0.4)
    assert lm.balanced_weight(sup, emb, 2.0, cap=5.0, balance=0.8).item() == pytest.approx(0.8)
    assert lm.balanced_weight(sup, emb, 1.0, cap=0.3, balance=0.8).item() == pytest.approx(0.3)   # capped
    assert lm.balanced_weight(sup, emb, 1.0, cap=0.5, balance=0.8, decay=0.5).item() == pytest.approx(0.2)
    tiny = lm.balanced_weight(torch.tensor(0.01), torch.tensor(0.0), 1.0, cap=20.0, balance=0.8)
    assert tiny.item() == pytest.approx(0.01 / (0.8 * 1e-3))                                         # floor on |L_emb|
    s = torch.tensor(0.4, requires_grad=True)
    assert not lm.balanced_weight(s, emb, 1.0, 0.5, 0.8).requires_grad                               # detached
    with pytest.raises(ValueError, match="balance must be > 0"):
        lm.balanced_weight(sup, emb, 1.0, 0.5, 0.0)


def test_lambda4_decay_is_linear_to_its_final_fraction():
    assert [lm.lambda4_decay(p, 0.1) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.55, 0.1])
    assert lm.lambda4_decay(2.0, 0.1) == pytest.approx(0.1)          # progress is clamped
    with pytest.raises(ValueError, match="lambda4_final"):
        lm.lambda4_decay(0.5, 1.5)


def _aus(**active):
    """A (12,) AU-output vector over EmotioNet's AUs with the given values (``a6=1.0``...)."""
    v = torch.zeros(len(pe.EMOTIONET_AUS))
    for k, val in active.items():
        v[pe.EMOTIONET_AUS.index(int(k[1:]))] = val
    return v


def test_pseudo_emotion_targets_and_masked_mse_by_hand():
    out_aus = torch.stack([_aus(a6=0.9, a12=0.8),                 # happiness (6 + 12)
                           _aus(a9=0.9, a4=0.7, a5=0.7),          # disgust keeps AU9 only: 0.9 > anger 0.7
                                                                  # (dividing by the full 3 AUs would pick anger)
                           _aus(a1=0.8, a2=0.9, a5=0.6, a26=0.7),  # surprise (1+2+5+26): 0.75 > fear 0.5
                           _aus(a4=0.9, a5=0.8)])                 # anger (4 + 5): 0.85 > fear 0.28
    labels = torch.zeros(2, len(AUS))
    mask = torch.zeros(2, len(AUS), dtype=torch.bool)
    cols = lm.AU_COLS
    labels[0, cols[pe.EMOTIONET_AUS.index(6)]] = 1.0
    mask[0, cols] = True                      # row 0: all 12 AUs annotated
    mask[1, cols[0]] = True                   # row 1: only AU1 annotated (label 0)
    sup, u = lm.supervision_and_targets({"aus": out_aus}, {"aus": labels, "aus_mask": mask}, 2, "t2", cols)
    names = [pe.PSEUDO_EMOTIONS[i] for i in u]
    assert names == ["happiness", "disgust", "surprise", "anger"]
    sq_row0 = ((out_aus[0] - labels[0, cols]) ** 2).sum()
    sq_row1 = (out_aus[1, 0] - 0.0) ** 2      # AU1 output of row 1 is 0
    assert sup.item() == pytest.approx(float((sq_row0 + sq_row1) / 13))


def test_self_labels_and_cross_entropy_on_labelled_rows_only():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0], [0.0, 4.0, 1.0]])
    batch = {"expression": torch.tensor([2, 1])}
    sup, cls = lm.supervision_and_targets({"logits": logits}, batch, 2, "t1", lm.AU_COLS)
    assert cls.tolist() == [2, 1, 2, 1]       # true labels, then the argmax of the unlabelled rows
    assert sup.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:2], batch["expression"]).item())
    with pytest.raises(ValueError, match="task must be"):
        lm.supervision_and_targets({"logits": logits}, batch, 2, "t3", lm.AU_COLS)


@pytest.mark.parametrize("task,kind", [("t1", "lm"), ("t1", "island"), ("t2", "lm"), ("t2", "center")])
def test_one_training_step_under_cpu_bf16_autocast(monkeypatch, tmp_path, task, kind):
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    torch.manual_seed(0)
    t1 = task == "t1"
    cfg = config.resolve("large_margin", "smoke", device="cpu", out_dir=tmp_path / "run")
    net = LargeMarginNet(3, 0.125, num_classes=7 if t1 else 0, num_aus=0 if t1 else 12, hidden=16,
                         embedding_dim=cfg.embedding_dim, pool_size=1, dropout=0.0)
    aux = lm.make_aux(kind, 7 if t1 else len(pe.PSEUDO_EMOTIONS), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = {"image": torch.rand(4, 3, 64, 64), "u_image": torch.rand(4, 3, 64, 64),
             "expression": torch.tensor([0, 1, 2, 3]), "aus": torch.rand(4, len(AUS)),
             "aus_mask": torch.ones(4, len(AUS), dtype=torch.bool)}
    before = [p.detach().clone() for p in net.parameters()]
    w = lm.Weights.from_cfg(cfg)
    logs = lm.train_step(net, aux, opt, batch, 0.5, task=task, kind=kind, w=w, au_cols=lm.AU_COLS)
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert logs["loss"].dtype == torch.float32 and logs["emb"].dtype == torch.float32
    cap = (w.lambda2 if t1 else w.lambda4) * (1.0 if kind == "lm" else w.center_weight)
    decay = 1.0 if t1 else lm.lambda4_decay(0.5, w.lambda4_final)
    sup_w = w.lambda1 if t1 else w.lambda3
    expect = decay * min(sup_w * logs["sup"].item() / (w.balance * max(abs(logs["emb"].item()), 1e-3)), cap)
    assert logs["emb_weight"].item() == pytest.approx(expect, rel=1e-5)
    assert logs["loss"].item() == pytest.approx(sup_w * logs["sup"].item() + expect * logs["emb"].item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert bool(aux.seen.any())               # the moving centroid update ran


def _cfg(tmp_path, **kw):
    args = dict(scale="smoke", dataset="synthfacs", data_root=None, device="cpu", out_dir=tmp_path / "run")
    over = {k: kw.pop(k) for k in list(kw) if k not in args}
    args.update(kw)
    return config.resolve("large_margin", **args, **over)


def test_protocol_combinations_that_make_no_sense_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mixing SynthFACS with real faces"):
        lm.check_protocol(_cfg(tmp_path, au_dataset="emotionet"))
    with pytest.raises(ValueError, match="AU_DATASET='rafdb'"):
        lm.check_protocol(_cfg(tmp_path, au_dataset="rafdb"))
    with pytest.raises(ValueError, match="use au_pool='expression_pool'"):
        lm.check_protocol(_cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="ckplus",
                               au_pool="au_unlabelled"))
    with pytest.raises(ValueError, match="unlabelled_pool="):
        lm.check_protocol(_cfg(tmp_path, unlabelled_pool="megaface"))
    lm.check_protocol(_cfg(tmp_path))        # the default is valid


def test_ferplus_with_ckplus_facs_from_data_root_alone(tmp_path):
    make_ferplus(tmp_path)
    make_ckplus(tmp_path)
    cfg = _cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="ckplus", n_labelled=16,
               n_test=12, epochs=1, batch_size=8, unlabelled_batch_size=8)
    data = lm.load_data(cfg)
    assert len(data.expr_train) == 16 and len(data.pool) == 40 - 16 and len(data.expr_test) == 12
    assert bool((data.pool.labels["expression"] == -1).all())
    assert data.expr_train.images.shape[1:] == (3, 64, 64)
    # CK+: FACS-coded last frames, split by subject, peak AUs as occurrences, face-cropped frames
    s_tr, s_te = set(data.au_train.labels["subject"].tolist()), set(data.au_test.labels["subject"].tolist())
    assert s_tr and s_te and not s_tr & s_te
    assert data.au_threshold == lm.BINARY_AU_THRESHOLD
    assert bool(data.au_train.labels["aus_mask"].all())
    centre = data.au_train.images[:, :, 24:40, 24:40].float().mean()
    assert centre > 150                       # the bright face fills the middle after the central crop
    scores, hist = lm.run_row(cfg, data, "t2", "AlexNet + LM loss (T)", 0)
    assert set(scores) >= {"avg_small", "avg_full", "n_pred"} and len(hist.records) == 1


def test_emotionet_protocol_and_its_unlabelled_pool(tmp_path):
    make_ferplus(tmp_path)
    make_emotionet(tmp_path)
    cfg = _cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="emotionet", n_labelled=16,
               au_pool="au_unlabelled")
    data = lm.load_data(cfg)
    assert (len(data.au_train), len(data.au_test), len(data.au_pool)) == (24, 12, 24)
    assert not bool(data.au_pool.labels["aus_mask"].any()) and data.au_pool.name == "emotionet-unlabelled"


def test_ckplus_48_variant_has_no_facs_for_table2(tmp_path):
    from papers_fixtures import _img
    import numpy as np

    rng = np.random.default_rng(0)
    for cls, name in (("anger", "S010_004_00000017.png"), ("happy", "S011_006_00000013.png")):
        _img(tmp_path / "ckplus" / "CK+48" / cls / name, (48, 48), rng)
    make_ferplus(tmp_path)
    cfg = _cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="ckplus", n_labelled=16)
    with pytest.raises(ValueError, match="FACS"):
        lm.load_data(cfg)


def test_gpu_preset_resolves_and_one_step_of_it_runs_on_cpu(tmp_path):
    cfg = config.resolve("large_margin", "gpu", device="cpu", out_dir=tmp_path / "run")
    assert (cfg.image_size, cfg.width, cfg.hidden, cfg.embedding_dim, cfg.batch_size) == (227, 1.0, 4096, 4096, 128)
    lm.check_protocol(cfg)
    torch.manual_seed(0)
    net = LargeMarginNet(3, cfg.width, num_classes=7, num_aus=0, hidden=cfg.hidden, embedding_dim=cfg.embedding_dim,
                         pool_size=cfg.pool_size, dropout=cfg.dropout)
    aux = LargeMarginLoss(7, cfg.embedding_dim, alpha=cfg.alpha)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batch = {"image": torch.rand(2, 3, 227, 227), "u_image": torch.rand(2, 3, 227, 227), "expression": torch.tensor([0, 4])}
    logs = lm.train_step(net, aux, opt, batch, 0.0, task="t1", kind="lm", w=lm.Weights.from_cfg(cfg), au_cols=lm.AU_COLS)
    assert all(torch.isfinite(v).all() for v in logs.values())


# ----------------------------------------------------------------------------- protocol data, metrics, loop
import re                                              # noqa: E402
from types import SimpleNamespace                      # noqa: E402

from fer_nb import train                               # noqa: E402
from fer_nb.data import registry, synthfacs            # noqa: E402
from fer_nb.losses.large_margin_loss import normalise  # noqa: E402
from fer_nb.data.schema import FaceArrays              # noqa: E402


def _same(a: FaceArrays, b: FaceArrays) -> bool:
    return (torch.equal(a.images, b.images) and a.labels.keys() == b.labels.keys()
            and all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels))


def test_synthfacs_protocol_seeds_subject_ranges_and_shared_pool(tmp_path):
    cfg = _cfg(tmp_path, n_labelled=5, n_au_labelled=6, n_unlabelled=7, n_test=8, n_subjects=3)
    data = lm.load_data(cfg)
    common = dict(domain="lab", image_size=64, class_priors="rafdb", device="cpu")
    # every split is its own seeded draw with its own subjects; the pool has 4x the subjects, labels hidden
    expect = {"expr_train": (5, 11, 3, 0), "expr_test": (8, 14, 3, 50_000), "au_train": (6, 12, 3, 0),
              "au_test": (8, 15, 3, 60_000)}
    for key, (n, seed, n_sub, off) in expect.items():
        ds = getattr(data, key)
        ref = synthfacs.generate(n, seed=seed, n_subjects=n_sub, subject_offset=off, **common)
        assert _same(ds, ref), key
        assert (ds.info["seed"], ds.info["n_subjects"], ds.info["subject_offset"], ds.info["class_priors"]) == \
            (seed, n_sub, off, "rafdb")
    ref = synthfacs.generate(7, seed=13, n_subjects=12, subject_offset=10_000, **common)
    for pool in (data.pool, data.au_pool):                 # Table 2 reuses Table 1's pool
        assert pool.name == "synthfacs-unlabelled" and torch.equal(pool.images, ref.images)
        assert pool.info["n_subjects"] == 12 and pool.info["class_priors"] == "rafdb"
        assert bool((pool.labels["expression"] == -1).all()) and not bool(pool.labels["aus_mask"].any())
        assert torch.equal(pool.labels["subject"], ref.labels["subject"])
    assert data.au_threshold == 0.3 and isinstance(data.au_threshold, float)
    assert data.num_classes == 7


def test_real_protocol_emotionet_pool_seeded_caps_and_ckplus_subject_split(tmp_path):
    make_ferplus(tmp_path)
    make_ckplus(tmp_path)
    make_emotionet(tmp_path)
    cfg = _cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="ckplus", unlabelled_pool="emotionet",
               n_labelled=16, n_unlabelled=10, n_test=12, n_au_labelled=100)
    data = lm.load_data(cfg)
    train_all = registry.load("ferplus", str(tmp_path), split="train", image_size=64, channels=3)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:16].sort().values
    assert _same(data.expr_train, train_all.subset(idx))   # a seeded random subset of the train split (seed 1)
    unl = registry.load("emotionet", str(tmp_path), split="unlabelled", image_size=64, channels=3)
    idx = torch.randperm(24, generator=torch.Generator().manual_seed(2))[:10].sort().values
    assert data.pool.name == "emotionet-unlabelled" and torch.equal(data.pool.images, unl.subset(idx).images)
    assert torch.equal(data.au_pool.images, data.pool.images)            # au_pool='expression_pool'
    # CK+: 6 subjects, a quarter of them (round(1.5) = 2) held out
    s_tr, s_te = set(data.au_train.labels["subject"].tolist()), set(data.au_test.labels["subject"].tolist())
    assert (len(s_tr), len(s_te)) == (4, 2) and not s_tr & s_te


def test_ckplus_without_facs_names_the_fix_in_full(tmp_path):
    from papers_fixtures import _img
    import numpy as np

    _img(tmp_path / "ckplus" / "CK+48" / "anger" / "S010_004_00000017.png", (48, 48), np.random.default_rng(0))
    make_ferplus(tmp_path)
    cfg = _cfg(tmp_path, dataset="ferplus", data_root=str(tmp_path), au_dataset="ckplus", n_labelled=16)
    msg = ("AU_DATASET='ckplus' needs the original release with FACS/ files (the CK+48 variant has no AU coding): "
           "add FACS_labels.zip or use AU_DATASET='emotionet'")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        lm.load_data(cfg)


def test_check_protocol_messages_and_each_size_floor(tmp_path):
    with pytest.raises(ValueError, match=re.escape("au_pool='megaface'; use one of ('expression_pool', "
                                                   "'au_unlabelled')")):
        lm.check_protocol(_cfg(tmp_path, au_pool="megaface"))
    for kw in ({"n_labelled": 0}, {"n_au_labelled": 0}):
        with pytest.raises(ValueError, match="n_labelled and n_au_labelled must be >= 1"):
            lm.check_protocol(_cfg(tmp_path, **kw))


def test_au_f1_by_hand_with_the_annotation_mask():
    cols = {u: i for i, u in enumerate(pe.EMOTIONET_AUS)}
    pred, target = torch.zeros(2, 12), torch.zeros(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    pred[:, cols[1]] = torch.tensor([0.9, 0.6])
    target[:, cols[1]] = torch.tensor([1.0, 0.0])          # AU1: tp 1, fp 1 -> F1 2/3
    pred[0, cols[2]], target[0, cols[2]] = 0.7, 1.0        # AU2: tp 1 -> 1
    pred[:, cols[4]] = 0.8
    target[0, cols[4]] = 1.0
    mask[1, cols[4]] = False                   # AU4: row 1's fp is not annotated -> F1 1 (2/3 unmasked)
    row = lm.au_f1(pred, target, mask, 0.5)
    assert set(row) == {f"AU{u}" for u in pe.EMOTIONET_AUS} | {"avg_small", "avg_full"}
    assert row["AU1"] == pytest.approx(200 / 3) and row["AU2"] == 100.0 and row["AU4"] == 100.0
    assert all(row[f"AU{u}"] == 0.0 for u in pe.EMOTIONET_AUS if u not in (1, 2, 4))
    assert row["avg_small"] == pytest.approx((200 / 3 + 100) / 7)     # AUs 1, 4, 5, 6, 12, 25, 26
    assert row["avg_full"] == pytest.approx((200 / 3 + 200) / 12)


class _TableModel(torch.nn.Module):
    """Returns a fixed output row per image; image ``i`` holds the pixel value ``i`` (uint8)."""

    def __init__(self, key, table):
        super().__init__()
        self.key, self.table = key, table

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 255).round().long()
        return {self.key: self.table[idx]}


def _indexed_images(n):
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()


def test_evaluate_scores_table1_by_hand():
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 1.0, 0], [0, 4.0, 0], [5.0, 0, 0]])   # argmax 0 1 1 1 0
    test = FaceArrays(_indexed_images(5), {"expression": torch.tensor([0, 0, 1, 1, 2])}, "t",
                      ("anger", "happiness", "sadness"))
    s = lm.evaluate_scores(_TableModel("logits", logits), test, "t1", 0.5, batch_size=2)
    # 3/5 right; recall per class 1/2, 2/2, 0/1; two classes predicted
    assert s == {"acc": pytest.approx(60.0), "mean_acc": pytest.approx(50.0), "n_pred": 2.0}
    assert lm.CONVERGED["t1"](s) and not lm.CONVERGED["t1"]({"n_pred": 1.0})


def test_evaluate_scores_table2_by_hand_on_the_12_emotionet_columns():
    aus = torch.zeros(3, len(AUS))
    mask = torch.ones(3, len(AUS), dtype=torch.bool)
    out = torch.zeros(3, 12)
    c = {u: i for i, u in enumerate(pe.EMOTIONET_AUS)}
    out[0, c[1]], out[1, c[2]], out[2, c[6]] = 0.9, 0.8, 0.7            # three AUs predicted present
    aus[0, lm.AU_COLS[c[1]]] = 1.0                                       # AU1 right
    aus[1, lm.AU_COLS[c[12]]] = 1.0                                      # AU12 missed, AU2 a false positive
    mask[2, lm.AU_COLS[c[6]]] = False                                    # AU6's prediction is not annotated
    test = FaceArrays(_indexed_images(3), {"aus": aus, "aus_mask": mask}, "t")
    s = lm.evaluate_scores(_TableModel("aus", out), test, "t2", 0.5, batch_size=2)
    assert s["AU1"] == 100.0 and s["AU2"] == 0.0 and s["AU6"] == 0.0 and s["AU12"] == 0.0
    assert s["avg_full"] == pytest.approx(100 / 12) and s["avg_small"] == pytest.approx(100 / 7)
    assert s["n_pred"] == 3.0                                            # AUs ever predicted present
    assert lm.CONVERGED["t2"](s) and not lm.CONVERGED["t2"]({"n_pred": 0.0})


class _Recorder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


class _ConstLoss(torch.nn.Module):
    """An embedding loss of fixed magnitude 1e-2 (still a function of the embedding)."""

    def forward(self, emb, cls):
        return emb.sum() * 0.0 + 1e-2


@pytest.mark.parametrize("task", ["t1", "t2"])
def test_train_step_forwards_the_unlabelled_rows_and_caps_by_loss_kind(task):
    torch.manual_seed(0)
    t1 = task == "t1"
    w = lm.Weights()
    batch = {"image": torch.rand(2, 3, 64, 64), "u_image": torch.rand(3, 3, 64, 64),
             "expression": torch.tensor([0, 1]), "aus": torch.rand(2, len(AUS)),
             "aus_mask": torch.ones(2, len(AUS), dtype=torch.bool)}
    got = {}
    for kind in ("lm", "center"):
        net = _Recorder(LargeMarginNet(3, 0.125, num_classes=7 if t1 else 0, num_aus=0 if t1 else 12, hidden=8,
                                       embedding_dim=8, pool_size=1, dropout=0.0))
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        logs = lm.train_step(net, _ConstLoss(), opt, batch, 0.5, task=task, kind=kind, w=w, au_cols=lm.AU_COLS)
        assert len(net.seen) == 1 and torch.equal(net.seen[0], torch.cat([batch["image"], batch["u_image"]]))
        got[kind] = logs["emb_weight"].item()
    # |L_emb| = 1e-2 makes the balancing ratio exceed the cap: the weight is the cap itself
    decay = 1.0 if t1 else 0.55
    assert got["lm"] == pytest.approx(decay * 0.5)                       # lambda2 / lambda4
    assert got["center"] == pytest.approx(decay * 0.5 * 0.05)            # times center_weight


def _run(acc, mean_acc, n_pred):
    return {"acc": acc, "mean_acc": mean_acc, "n_pred": n_pred}


def test_summarise_means_over_converged_seeds_and_nc_rows():
    per_seed = {"A": [_run(80.0, 60.0, 3.0), _run(10.0, 10.0, 1.0), _run(70.0, 50.0, 2.0)],
                "B": [_run(14.0, 14.0, 1.0), _run(15.0, 14.0, 1.0)]}
    table = lm.summarise(per_seed, "t1")
    assert table["A"] == pytest.approx({"acc": 75.0, "acc_std": 50 ** 0.5, "mean_acc": 55.0,
                                        "mean_acc_std": 50 ** 0.5, "converged_seeds": 2.0})
    assert table["B"] == {"acc": "nc", "mean_acc": "nc", "converged_seeds": 0.0}
    t2 = lm.summarise({"C": [{"avg_small": 5.0, "avg_full": 4.0, "n_pred": 0.0}]}, "t2")
    assert t2 == {"C": {"avg_small": "nc", "avg_full": "nc", "converged_seeds": 0.0}}


def test_ordering_seed_by_seed_by_hand():
    per_seed = {"LM": [_run(80.0, 0, 3), _run(60.0, 0, 1), _run(90.0, 0, 4)],
                "base": [_run(70.0, 0, 3), _run(65.0, 0, 3), _run(90.0, 0, 3)]}
    o = lm.ordering(per_seed, "LM", "base", "acc", "t1")
    # differences 10, -5, 0: mean 5/3, sample std sqrt(175/3); seed 1's LM run predicts one class only
    assert o == {"claim": "LM > base (acc)", "better mean": pytest.approx(230 / 3), "worse mean": pytest.approx(75.0),
                 "mean diff": pytest.approx(5 / 3), "diff std": pytest.approx((175 / 3) ** 0.5),
                 "seeds where it holds": "1/3", "seeds with an nc run": 1, "holds (mean)": True}
    tie = lm.ordering({"a": [_run(50.0, 0, 2)], "b": [_run(50.0, 0, 1)]}, "a", "b", "acc", "t1")
    assert tie["holds (mean)"] is False and tie["diff std"] == 0.0 and tie["seeds with an nc run"] == 1
    assert tie["seeds where it holds"] == "0/1"


def test_paper_claims_list_every_ordering_of_both_tables():
    t1 = {row: [_run(50.0 + i, 40.0 + i, 3.0)] for i, row in enumerate(lm.T1_ROWS)}
    t2 = {row: [{"avg_small": 10.0 * i, "avg_full": 5.0 * i, "n_pred": float(i)}] for i, row in enumerate(lm.T2_ROWS)}
    claims = lm.paper_claims(t1, t2)
    assert [c["claim"] for c in claims] == [
        f"AlexNet + LM loss (SSL) > {w} ({m})" for m in ("acc", "mean_acc")
        for w in ("AlexNet + Center loss (SSL)", "AlexNet + Island loss (SSL)", "AlexNet softmax (Superv)")] + [
        f"AlexNet + LM loss (T) > {w} ({m})" for m in ("avg_small", "avg_full")
        for w in ("AlexNet (Sv)", "AlexNet + island loss (T)")]
    assert [c["mean diff"] for c in claims] == [2.0, 1.0, 4.0, 2.0, 1.0, 4.0, 30.0, 10.0, 15.0, 5.0]
    assert [c["seeds with an nc run"] for c in claims] == [0] * 6 + [1, 0, 1, 0]    # AlexNet (Sv) predicts no AU
    assert all(c["holds (mean)"] for c in claims)


def test_run_table_runs_every_row_and_seed_and_keeps_each_history(monkeypatch):
    calls = []

    def fake_row(cfg, data, task, row, seed):
        calls.append((task, row, seed))
        return {"acc": float(len(calls))}, f"hist {row} {seed}"

    monkeypatch.setattr(lm, "run_row", fake_row)
    per_seed, hists = lm.run_table(SimpleNamespace(seeds=(3, 5)), None, "t2")
    assert calls == [("t2", r, s) for r in lm.T2_ROWS for s in (3, 5)]
    assert list(per_seed) == list(lm.T2_ROWS)
    assert per_seed["AlexNet (Sv)"] == [{"acc": 1.0}, {"acc": 2.0}]
    assert hists == {(r, s): f"hist {r} {s}" for r in lm.T2_ROWS for s in (3, 5)}


def test_run_row_wires_data_model_checkpoint_batches_and_evaluation(monkeypatch, tmp_path):
    cfg = _cfg(tmp_path, n_labelled=8, n_au_labelled=4, n_unlabelled=8, n_test=4, n_subjects=3, batch_size=4,
               unlabelled_batch_size=4, epochs=1)
    data = lm.load_data(cfg)
    got = {}

    def fake_fit(path, h, **kw):
        got.update(path=path, h=h, **kw)
        return train.History()

    monkeypatch.setattr(lm.train, "fit_or_load", fake_fit)
    for task, row, seed in (("t1", "AlexNet + LM loss (SSL)", 1), ("t2", "AlexNet + island loss (T)", 0)):
        t1 = task == "t1"
        got.clear()
        scores, hist = lm.run_row(cfg, data, task, row, seed)
        h = cfg.run_hash(task=task, row=row, seed=seed)
        assert got["h"] == h and got["path"] == train.checkpoint_path(cfg.out_dir, f"{task}-{row}-s{seed}", h)
        assert h != cfg.run_hash(task=task, row=row, seed=seed + 1) != cfg.run_hash(task=task, row="x", seed=seed)
        assert got["epochs"] == 1 and set(got["modules"]) == {"model", "aux"}
        model, aux = got["modules"]["model"], got["modules"]["aux"]
        assert (model.expression_head is not None) == t1 and (model.au_head is not None) == (not t1)
        assert model.embedding_dim == cfg.embedding_dim and model.embed[1].out_features == cfg.hidden
        track = got["extra_state"]["track"]                              # checkpointed for Figure 4
        assert torch.equal(track.prev, normalise(aux.centers.detach()))
        # the batches of an epoch depend on (seed, epoch) alone: a resumed run sees the same ones
        labelled, unl = (data.expr_train, data.pool) if t1 else (data.au_train, data.au_pool)
        b0, again = got["train_batches"](0), got["train_batches"](0)
        assert len(b0) == len(labelled) // 4 and all(torch.equal(x["image"], y["image"]) for x, y in zip(b0, again))
        order = torch.randperm(len(labelled), generator=torch.Generator().manual_seed(10_000 * seed))
        assert torch.equal(torch.cat([b["image"] for b in b0]), labelled.images[order].float() / 255)
        assert all(b["u_image"].shape[0] == 4 for b in b0)
        pool_rows = unl.images.flatten(1).float() / 255
        assert all(any(torch.equal(u, q) for q in pool_rows) for u in b0[0]["u_image"].flatten(1))
        with torch.no_grad():
            aux.centers.add_(1.0)
        rec = got["evaluate"](0)
        keys = {"val/acc", "val/mean_acc"} if t1 else {"val/f1_full", "val/f1_small"}
        assert set(rec) == keys | {"centroid_move"} and rec["centroid_move"] > 0
        assert torch.equal(track.prev, normalise(aux.centers.detach()))
        assert got["evaluate"](0)["centroid_move"] == 0.0
        expect = lm.evaluate_scores(model, data.expr_test if t1 else data.au_test, task, data.au_threshold)
        assert scores == expect and rec["val/acc" if t1 else "val/f1_full"] == expect["acc" if t1 else "avg_full"]
        if t1:
            assert rec["val/mean_acc"] == expect["mean_acc"]
        else:
            assert rec["val/f1_small"] == expect["avg_small"]
