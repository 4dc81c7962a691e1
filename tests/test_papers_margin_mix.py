"""Margin-Mix (fer_nb.papers.margin_mix): Algorithm 1 as one hand-computed step, the experiment
plumbing of Tables 3-5 (budgets, "All" column, RAF-DB, FER+ classes), bf16 and the gpu preset."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.nn import functional as F

from fer_nb import config, report
from fer_nb.papers import margin_mix as mm
from fer_nb.papers.margin_mix import METHODS, MarginMix, fuzzy_cmeans_labels
from fer_nb.ssl import PairedBatches, linear_rampup


class Tiny(nn.Module):
    """A linear embedding + head: small enough to recompute a step by hand."""

    def __init__(self, d_in=12, C=3, D=4):
        super().__init__()
        self.body, self.head, self.embedding_dim = nn.Linear(d_in, D), nn.Linear(D, C), D

    def forward(self, x, with_embedding=False):
        e = self.body(x.flatten(1))
        z = self.head(torch.tanh(e))
        return (z, e) if with_embedding else z


class Shift:
    """Deterministic 'augmentation' that differs per call (so the K views differ)."""

    def __init__(self):
        self.n = 0

    def __call__(self, x, generator=None):
        self.n += 1
        return x + 0.1 * self.n


def _lm_loop(e, t, c, seen):
    """Eq. 3 per row with soft targets over the classes that have a centroid; mean over rows."""
    ks = [k for k in range(c.shape[0]) if seen[k]]
    rows = []
    for i in range(len(e)):
        eh = e[i] / e[i].norm()
        D = {k: ((eh - c[k]) ** 2).sum() for k in ks}
        tk = {k: t[i, k] for k in ks}
        rows.append(sum(tk[k] * (D[k] - sum(D[j] for j in ks if j != k) / (len(ks) - 1)) for k in ks)
                    / sum(tk.values()))
    return torch.stack(rows).mean()


@pytest.mark.parametrize("T", [0.25, 0.0])
def test_margin_mix_step_by_hand(T):
    """One step of Algorithm 1 against a by-hand recomputation: centroids (Eq. 1), fuzzy labels
    over existing centroids only (Eq. 6), Eq. 7 average, Eq. 8 sharpening, MixUp (Eq. 9), Eq. 10
    with the ramp-up; loss values and every parameter gradient."""
    torch.manual_seed(3)
    C, b, K = 3, 4, 2
    model = Tiny(C=C)
    ref = copy.deepcopy(model)
    step = MarginMix(model, C, T=T, K=K, alpha=0.75, lambda_M=1.0, lambda_u=0.4, centroid_lr=0.5, rampup=0.5,
                     ema_decay=None, augment=Shift())
    c0 = F.normalize(torch.randn(C, 4), dim=1)
    c0[2] = 0.0
    step.centroids.centers.copy_(c0)
    step.centroids.seen.copy_(torch.tensor([True, True, False]))  # class 2: no centroid yet
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 1, 3, 4, generator=g), "expression": torch.tensor([0, 1, 1, 0]),
             "u_image": torch.rand(3, 1, 3, 4, generator=g)}
    progress = 0.2
    torch.manual_seed(7)
    np.random.seed(7)
    logs = step.train_step(batch, SimpleNamespace(progress=progress))

    # ---- by hand
    np.random.seed(7)
    lam = max(v := float(np.random.beta(0.75, 0.75)), 1 - v)
    torch.manual_seed(7)
    xl = batch["image"] + 0.1
    xus = [batch["u_image"] + 0.2, batch["u_image"] + 0.3]
    yl = F.one_hot(batch["expression"], C).float()
    with torch.no_grad():
        _, e = ref(torch.cat([xl, *xus]), with_embedding=True)
        eh = e / e.norm(dim=1, keepdim=True)
        c = c0.clone()
        for k in (0, 1):
            c[k] = c[k] + 0.5 * (eh[:b][batch["expression"] == k].mean(0) - c[k])
        assert torch.allclose(step.centroids.centers, c, atol=1e-6) and not bool(step.centroids.seen[2])
        d = torch.cdist(eh[b:], c[:2])
        y6 = torch.zeros(2 * 3, C)
        for i in range(6):
            for k in (0, 1):
                y6[i, k] = 1.0 / sum((d[i, k] / d[i, j]) ** 2 for j in (0, 1))
        y7 = (y6[:3] + y6[3:]) / (y6[:3] + y6[3:]).sum(1, keepdim=True)
        q = y7 if T == 0 else y7 ** (1 / T) / (y7 ** (1 / T)).sum(1, keepdim=True)
    all_x, all_y = torch.cat([xl, *xus]), torch.cat([yl, q, q])
    perm = torch.randperm(all_x.shape[0])
    mx, my = lam * all_x + (1 - lam) * all_x[perm], lam * all_y + (1 - lam) * all_y[perm]
    logits, emb = ref(mx, with_embedding=True)
    ls = -(my[:b] * torch.log_softmax(logits[:b], 1)).sum(1).mean()
    lm1, lm2 = _lm_loop(emb[:b], my[:b], c, [True, True, False]), _lm_loop(emb[b:], my[b:], c, [True, True, False])
    w = min(1.0, progress / 0.5)
    loss = ls + 1.0 * (lm1 + w * 0.4 * lm2)
    loss.backward()
    for name, val in (("loss_s", ls), ("loss_m1", lm1), ("loss_m2", lm2), ("loss", loss)):
        assert torch.allclose(logs[name], val.detach(), atol=1e-5), name
    for (n, p), r in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-5), n


def test_margin_mix_loss_eq10_absent_classes_and_soft_targets():
    """MarginMix.loss with soft targets that put mass on a class without a centroid: that mass is
    dropped and the rest renormalised; the absent class is in neither pull nor push; w(t) ramps."""
    model = Tiny(C=3)
    step = MarginMix(model, 3, lambda_M=0.7, lambda_u=0.4, rampup=0.5, ema_decay=None)
    c = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]])
    step.centroids.centers.copy_(c)
    step.centroids.seen.copy_(torch.tensor([True, True, False]))
    g = torch.Generator().manual_seed(1)
    lg, em = torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g)
    my = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    ls = -(my[:2] * torch.log_softmax(lg[:2], 1)).sum(1).mean()
    for progress, w in ((0.0, 0.0), (0.25, 0.5), (0.9, 1.0)):
        loss, logs = step.loss(lg, em, my, 2, progress)
        ref = ls + 0.7 * (_lm_loop(em[:2], my[:2], c, [1, 1, 0]) + w * 0.4 * _lm_loop(em[2:], my[2:], c, [1, 1, 0]))
        assert torch.allclose(loss, ref, atol=1e-6), progress
    assert float(logs["loss_m1"]) != pytest.approx(float(_lm_loop(em[:2], my[:2], c, [1, 1, 1])), abs=1e-3)


def test_fuzzy_labels_ignore_absent_classes_and_sum_to_one():
    d2 = torch.tensor([[1.0, 4.0, 0.25], [9.0, 1.0, 0.01]])
    y = fuzzy_cmeans_labels(d2, torch.tensor([True, True, False]))
    assert torch.allclose(y, torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0]]), atol=1e-6)


def test_all_column_keys_meet_paper_yaml():
    paper = report.load_paper("margin_mix")["tables"]
    pre = config.load_presets("margin_mix")["paper"]
    for table, key in (("table3", "budgets"), ("table4", "budgets_rafdb")):
        cols = {k for row in paper[table]["rows"].values() for k in row}
        assert {mm.column(n) for n in pre[key]} <= cols, table
    assert mm.column("all") == "acc_all"


def _write_rafdb(root, n_train=28, n_test=14):
    base = root / "rafdb"
    (base / "EmoLabel").mkdir(parents=True)
    (base / "Image" / "aligned").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            lab = 1 + (i % 7)
            img = (rng.random((100, 100, 3)) * 60 + 30 * lab).astype(np.uint8)
            Image.fromarray(img).save(base / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg")
            lines.append(f"{split}_{i:05d}.jpg {lab}")
    (base / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")


def test_rafdb_at_small_trains_table4_with_all_column(tmp_path):
    """DATASET=rafdb at `small` (no budgets_rafdb there) trains Table 4 with every method, including
    the "All" column (no unlabelled pool: MixMatch used to raise KeyError 'u_image')."""
    _write_rafdb(tmp_path)
    cfg = config.resolve("margin_mix", "small", "rafdb", str(tmp_path), "cpu", 1, str(tmp_path / "run"),
                         budgets=[14, "all"], steps=2, epochs=1, batch_size=4, recal_batches=1)
    plan = mm.table_budgets(cfg)
    assert plan == {"table4": [14, "all"]}
    data = mm.load_data(cfg)
    assert data["table4"][0].num_classes == 7
    rows, results = mm.run_fer_table(cfg, data, "table4", plan["table4"], cfg.seeds, log=lambda *a: None)
    assert set(rows) == set(mm.METHOD_ROWS.values())
    for row in rows.values():
        assert {"acc_14", "acc_all"} <= set(row)
        assert all(isinstance(row[k], float) or row[k] == "nc" for k in ("acc_14", "acc_all"))
    assert len(results) == 8
    summary, lines = mm.ordering_summary(data, results, plan, "smoke")
    assert summary["runs"] == 8.0 and 0 < summary["table4_majority_rate"] <= 100
    assert len(lines) == 2 and all(line.startswith("[smoke run") for line in lines)


def test_ferplus_analogue_keeps_contempt(tmp_path):
    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path), n_train=64, n_test=16)
    data = mm.load_data(cfg)
    assert data["table3"][0].num_classes == 8 and data["table3"][0].class_names[-1] == "contempt"
    assert data["table4"][0].num_classes == 7


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_step_under_cpu_bf16_autocast(name, monkeypatch):
    """One step of every method under CPU bf16 autocast: the forward runs in bf16, losses stay finite."""
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    from fer_nb.models.wrn import WideResNet

    torch.manual_seed(0)
    model = WideResNet(4, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    method = METHODS[name](model, 4, lr=0.01, ema_decay=0.9)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(8, 1, 16, 16, generator=g), "expression": torch.arange(8) % 4,
             "u_image": torch.rand(8, 1, 16, 16, generator=g)}
    logs = method.train_step(batch, SimpleNamespace(progress=0.5, step=0, epoch=0))
    assert torch.bfloat16 in seen
    assert logs and all(torch.isfinite(v.float()) for v in logs.values())
    seen.clear()
    method.amp = False  # a float32 baseline (benchmarks): no autocast inside the step
    method.train_step(batch, SimpleNamespace(progress=0.5, step=1, epoch=0))
    assert seen and set(seen) == {torch.float32}


def test_gpu_preset_resolves_and_one_step_runs_on_cpu(tmp_path):
    """The `gpu` scale (WRN-28-2, 32 px, batch 64) resolves; one tiny run of it goes through on the CPU."""
    full = config.resolve("margin_mix", "gpu", device="cpu", out_dir=str(tmp_path / "a"))
    assert (full.hp["depth"], full.hp["widen_factor"], full.hp["image_size"], full.hp["batch_size"]) == (28, 2, 32, 64)
    cfg = config.resolve("margin_mix", "gpu", device="cpu", out_dir=str(tmp_path / "b"), n_train=48, n_test=16,
                         batch_size=4, steps=1, epochs=1, recal_batches=1)
    data = mm.load_data(cfg)
    r = mm.run_one(cfg, data, "table3", "margin_mix", 16, 0)
    assert np.isfinite(r["acc"]) and np.isfinite(r["loss"]) and len(r["pred_hist"]) == 8


def test_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="self_label"):
        MarginMix(Tiny(), 3, self_label="fuzzy")
    with pytest.raises(ValueError, match="embedding_dim"):
        MarginMix(nn.Linear(4, 3), 3)
    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown method"):
        mm.build_method(cfg, "pimodel", Tiny(), 3)
    with pytest.raises(ValueError, match="supervised takes no overrides besides ema_decay"):
        mm.build_method(cfg, "supervised", Tiny(), 3, T=0.5)


# ------------------------------------------------------------- run_one's predictions, Tables 1-2 MixMatch settings


def _toy_benchmark(n_train=24, n_test=8, C=4, seed=0):
    """A colour 32 px stand-in for a balanced benchmark (CIFAR-like), classes cycling 0..C-1."""
    from fer_nb.data.schema import FaceArrays

    g = torch.Generator().manual_seed(seed)
    names = tuple(f"c{i}" for i in range(C))
    make = lambda n, name: FaceArrays(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                                      {"expression": torch.arange(n) % C}, name, names)
    return make(n_train, "toy-train"), make(n_test, "toy-test")


def _record_steps(monkeypatch):
    """Wrap MixMatch's and MarginMix's train_step: record the hyper-parameters each step runs with."""
    from fer_nb.ssl import MixMatch

    seen = []
    for cls in (MixMatch, MarginMix):
        orig = cls.train_step

        def step(self, batch, ctx, _orig=orig):
            seen.append((self.name, {"T": self.T, "K": self.K, "alpha": self.alpha, "lambda_u": self.lambda_u}))
            return _orig(self, batch, ctx)

        monkeypatch.setattr(cls, "train_step", step)
    return seen


def test_mixmatch_benchmark_table_is_berthelots():
    """Berthelot et al. 2019 (official runs/table{1,2,5,6}.sh): T 0.5, K 2, alpha 0.75; lambda_u per benchmark."""
    assert mm.MIXMATCH_BENCHMARK_HP == {
        "cifar10": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 75.0},
        "cifar100": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 150.0},
        "svhn": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 250.0},
        "stl10": {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 50.0},
    }
    assert set(mm.MIXMATCH_BENCHMARK_HP) == set(mm.SSL_BUDGETS)      # every Tables 1-2 benchmark has settings
    hp = mm.mixmatch_benchmark_hp("cifar10")
    hp["lambda_u"] = 0.0                                              # a copy: the table cannot be edited through it
    assert mm.MIXMATCH_BENCHMARK_HP["cifar10"]["lambda_u"] == 75.0


@pytest.mark.parametrize("dataset, lambda_u", [("cifar10", 75.0), ("cifar100", 150.0), ("svhn", 250.0),
                                               ("stl10", 50.0)])
def test_ssl_tables_run_mixmatch_with_the_benchmarks_settings(dataset, lambda_u, tmp_path, monkeypatch):
    """run_ssl_table (Tables 1-2): every MixMatch step runs with T 0.5, K 2, alpha 0.75 and the
    benchmark's lambda_u; Margin-Mix keeps the preset's T 0.25 and lambda_u 0.4."""
    seen = _record_steps(monkeypatch)
    cfg = config.resolve("margin_mix", "smoke", dataset, str(tmp_path / "data"), "cpu", 1, str(tmp_path / "run"),
                         steps=2, epochs=1, batch_size=4, recal_batches=1)
    (table,) = mm.table_budgets(cfg)
    rows = mm.run_ssl_table(cfg, {table: _toy_benchmark()}, table, [8])
    assert set(rows) == {"MixMatch", "MarginMix"} and f"{dataset}_8" in rows["MixMatch"]
    mix = [hp for name, hp in seen if name == "mixmatch"]
    marg = [hp for name, hp in seen if name == "margin_mix"]
    assert len(mix) == 2 and len(marg) == 2
    assert all(hp == {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": lambda_u} for hp in mix)
    assert all(hp == {"T": 0.25, "K": 2, "alpha": 0.75, "lambda_u": 0.4} for hp in marg)


def test_fer_tables_keep_the_presets_mixmatch_settings(tmp_path, monkeypatch):
    """Tables 3-4 (run_fer_table): MixMatch runs with the preset's T and lambda_u_mixmatch (the
    Margin-Mix paper's T = 0.25 on FER data), not with a benchmark's; an HP override reaches the step."""
    pre = config.load_presets("margin_mix")
    assert all((pre[s]["T"], pre[s]["lambda_u_mixmatch"]) == (0.25, 75.0) for s in ("smoke", "small", "gpu", "paper"))
    for over, (T, lam) in (({}, (0.25, 75.0)), ({"T": 0.3, "lambda_u_mixmatch": 33.0}, (0.3, 33.0))):
        seen = _record_steps(monkeypatch)
        cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path / f"run{len(over)}"),
                             n_train=48, n_test=16, steps=1, epochs=1, batch_size=4, recal_batches=1, **over)
        data = mm.load_data(cfg)
        mm.run_fer_table(cfg, data, "table3", [16], [0], log=lambda *a: None)
        (hp,) = [hp for name, hp in seen if name == "mixmatch"]
        assert hp == {"T": T, "K": 2, "alpha": 0.75, "lambda_u": lam}
        monkeypatch.undo()


def test_unknown_ssl_benchmark_is_an_error_before_training(tmp_path, monkeypatch):
    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path))
    monkeypatch.setattr(mm, "run_one", lambda *a, **k: pytest.fail("trained before checking the benchmark"))
    with pytest.raises(ValueError, match="MIXMATCH_BENCHMARK_HP.*run_fer_table"):
        mm.run_ssl_table(cfg, {}, "table1", [250])
    with pytest.raises(ValueError, match="cifar10, cifar100, svhn, stl10"):
        mm.mixmatch_benchmark_hp("imagenet")


def test_run_one_returns_its_test_predictions_with_or_without_checkpoint(tmp_path):
    """``predictions`` is the argmax per test image behind ``acc``/``pred_hist``; checkpoint=False
    trains the same steps (same numbers, same predictions) and writes no file."""
    from fer_nb.metrics import accuracy

    kw = dict(n_train=48, n_test=16, steps=2, epochs=2, batch_size=4, recal_batches=1)
    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path / "a"), **kw)
    data = mm.load_data(cfg)
    r = mm.run_one(cfg, data, "table3", "mixmatch", 16, 0)
    pred, yt = r["predictions"], data["table3"][1].labels["expression"]
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64 and pred.shape == (16,)
    assert np.bincount(pred, minlength=8).tolist() == r["pred_hist"]
    assert r["acc"] == 100 * accuracy(torch.from_numpy(pred), yt)
    assert list((tmp_path / "a" / "checkpoints").glob("*.pt"))
    cfg_b = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path / "b"), **kw)
    r2 = mm.run_one(cfg_b, data, "table3", "mixmatch", 16, 0, checkpoint=False)
    assert not (tmp_path / "b" / "checkpoints").exists()
    assert {k: v for k, v in r.items() if k != "predictions"} == {k: v for k, v in r2.items() if k != "predictions"}
    assert np.array_equal(r["predictions"], r2["predictions"])
