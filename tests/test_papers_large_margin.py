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
