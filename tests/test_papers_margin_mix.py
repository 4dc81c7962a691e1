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


# ------------------------------------------------------------- Table 5 (run_ablation) and the figure, on constructed runs


def _fake_run_one(calls, nc=()):
    """A stand-in for run_one: records its arguments; accuracy 50 + 10 x (number of calls so far); the
    runs whose over-rides' keys are in ``nc`` collapse."""

    def run_one(cfg, data, table, method, n_labels, seed, **over):
        calls.append((cfg, data, table, method, n_labels, seed, over))
        return {"acc": 50.0 + 10 * len(calls), "nc": any(k in nc for k in over)}

    return run_one


def test_ablation_rows_reuse_table3_baseline_and_run_each_override(monkeypatch):
    """Table 5: the baseline is the first seed's Table 3 run at ``ablation_budget`` when it exists; every row of
    the preset's ``ablation`` list runs Margin-Mix on Table 3 at that budget and first seed with its overrides;
    a collapsed run is "nc"."""
    calls = []
    monkeypatch.setattr(mm, "run_one", _fake_run_one(calls, nc=("self_label",)))
    cfg = SimpleNamespace(hp={"ablation_budget": 140, "ablation": ["T0.5", "hard", "no_ema", "K1"]}, seeds=(3, 4))
    data = {"table3": "pool"}
    results = {("table3", "margin_mix", 140): [{"acc": 41.5, "nc": False}, {"acc": 1.0, "nc": False}]}
    rows = mm.run_ablation(cfg, data, results)
    assert rows == {"Baseline (T=0.25, lambda_M=1, lambda_u=0.4)": {"acc": 41.5},
                    "Sharpening T=0.5": {"acc": 60.0}, "with nearest centroid": {"acc": "nc"},
                    "without parameter EMA": {"acc": 80.0}, "N_aug=1": {"acc": 90.0}}
    assert list(rows)[1:] == ["Sharpening T=0.5", "with nearest centroid", "without parameter EMA", "N_aug=1"]
    assert [c[2:] for c in calls] == [("table3", "margin_mix", 140, 3, {"T": 0.5}),
                                      ("table3", "margin_mix", 140, 3, {"self_label": "hard"}),
                                      ("table3", "margin_mix", 140, 3, {"ema_decay": None}),
                                      ("table3", "margin_mix", 140, 3, {"K": 1})]
    assert all(c[0] is cfg and c[1] is data for c in calls)


def test_ablation_trains_its_own_baseline_when_table3_lacks_the_budget(monkeypatch):
    """No Table 3 run at ``ablation_budget``: the baseline is trained (Table 3, Margin-Mix, first seed, no
    overrides) and reported "nc" when it collapses."""
    calls = []
    fake = _fake_run_one(calls)
    monkeypatch.setattr(mm, "run_one", lambda *a, **k: {**fake(*a, **k), "nc": not k})
    cfg = SimpleNamespace(hp={"ablation_budget": 250, "ablation": ["no_mixup"]}, seeds=(7,))
    rows = mm.run_ablation(cfg, {}, {("table3", "margin_mix", 140): [{"acc": 41.5, "nc": False}]})
    assert rows == {"Baseline (T=0.25, lambda_M=1, lambda_u=0.4)": {"acc": "nc"}, "without MixUp": {"acc": 70.0}}
    assert [c[2:] for c in calls] == [("table3", "margin_mix", 250, 7, {}), ("table3", "margin_mix", 250, 7, {"alpha": 0.0})]


def test_ablation_preset_rows_are_table5s():
    """Every preset's ablation list names rows of ABLATIONS; the overrides are the paper's Table 5 variants."""
    assert mm.ABLATIONS == {
        "T0.5": ("Sharpening T=0.5", {"T": 0.5}), "T0": ("No sharpening T=0", {"T": 0.0}),
        "hard": ("with nearest centroid", {"self_label": "hard"}),
        "no_ema": ("without parameter EMA", {"ema_decay": None}),
        "no_mixup": ("without MixUp", {"alpha": 0.0}), "K1": ("N_aug=1", {"K": 1})}
    pre = config.load_presets("margin_mix")
    assert all(set(pre[s]["ablation"]) <= set(mm.ABLATIONS) for s in ("smoke", "small", "gpu", "paper"))


def _plot_inputs():
    from fer_nb.data.schema import FaceArrays

    pool = lambda n, name: FaceArrays(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), {}, name)
    data = {"table3": (pool(100, "SynthFACS-FER+"), None), "table4": (pool(60, "SynthFACS-RAF"), None)}
    plan = {"table3": [10, "all"], "table1": [250], "table4": [20]}       # table1 (no FER table): no panel
    results = {}
    for k, method in enumerate(mm.METHOD_ROWS):
        results[("table3", method, 10)] = [{"acc": 10.0 + k}, {"acc": 14.0 + k}]        # mean 12 + k, std 2
        results[("table3", method, "all")] = [{"acc": 30.0 + k}, {"acc": 30.0 + k}]     # mean 30 + k, std 0
        results[("table4", method, 20)] = [{"acc": 50.0 + k}, {"acc": 56.0 + k}, {"acc": 50.0 + k}]
    return data, results, plan


def test_plot_accuracy_vs_labels_draws_mean_and_std_per_method():
    """One panel per FER table of the plan (4.2 in wide each); per method the mean over seeds against the
    label budget ("all" = the pool size) with +- std error bars; log x axis, labels, the pool's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, results, plan = _plot_inputs()
    fig = mm.plot_accuracy_vs_labels(data, results, plan)
    try:
        axes = fig.axes
        assert len(axes) == 2 and tuple(fig.get_size_inches()) == pytest.approx((8.4, 3.2))
        for ax, table, xs in ((axes[0], "table3", [10, 100]), (axes[1], "table4", [20])):
            assert ax.get_title() == f"{table} ({data[table][0].name})"
            assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("labelled images", "test accuracy (%)",
                                                                            "log")
            assert len(ax.containers) == 4
            for k, cont in enumerate(ax.containers):
                line, _, (bars,) = cont.lines
                assert cont.get_label() == list(mm.METHOD_ROWS.values())[k]
                assert line.get_marker() == "o"
                assert list(line.get_xdata()) == xs
                means = [12.0 + k, 30.0 + k] if table == "table3" else [52.0 + k]
                stds = [2.0, 0.0] if table == "table3" else [np.std([50.0, 56.0, 50.0])]
                assert list(line.get_ydata()) == pytest.approx(means)
                ends = np.array([np.asarray(seg)[:, 1] for seg in bars.get_segments()])
                assert np.allclose(ends, [[m - s, m + s] for m, s in zip(means, stds)])
        legend = axes[0].get_legend()
        assert legend is not None and [t.get_text() for t in legend.get_texts()] == list(mm.METHOD_ROWS.values())
        assert axes[1].get_legend() is None
    finally:
        plt.close(fig)


# ------------------------------------------------------------- table cells, ordering summary, evaluation, run wiring


def test_cell_is_mean_and_sample_sd_over_converged_seeds():
    """A cell: mean and sample sd (ddof 1) of the seeds that did not collapse, sd 0 for one such seed,
    "nc" when every seed collapsed; the nc count always."""
    runs = [{"acc": 60.0, "nc": False}, {"acc": 10.0, "nc": True}, {"acc": 64.0, "nc": False}]
    assert mm._cell(runs, "acc_140") == {"acc_140": 62.0, "acc_140_std": pytest.approx(2 * 2 ** 0.5, rel=1e-12),
                                         "nc_runs_140": 1.0}
    assert mm._cell(runs[:2], "acc_140") == {"acc_140": 60.0, "acc_140_std": 0.0, "nc_runs_140": 1.0}
    assert mm._cell([{"acc": 12.5, "nc": True}] * 2, "acc_all") == {"acc_all": "nc", "nc_runs_all": 2.0}


def _ordering_inputs():
    from fer_nb.data.schema import FaceArrays

    test = FaceArrays(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), {"expression": torch.tensor([0, 0, 0, 1])}, "t")
    runs = lambda *accs: [{"acc": a, "nc": nc} for a, nc in accs]
    results = {
        ("table3", "supervised", 10): runs((60.0, False), (70.0, False)),
        ("table3", "mean_teacher", 10): runs((50.0, True), (40.0, True)),
        ("table3", "mixmatch", 10): runs((80.0, False), (20.0, True)),
        ("table3", "margin_mix", 10): runs((90.0, False), (86.0, False)),
        ("table3", "supervised", "all"): runs((70.0, False), (70.0, False)),
        ("table3", "mean_teacher", "all"): runs((72.0, False), (72.0, False)),
        ("table3", "mixmatch", "all"): runs((71.0, False), (71.0, False)),
        ("table3", "margin_mix", "all"): runs((95.0, True), (95.0, True)),
    }
    return {"table3": (None, test)}, results, {"table3": [10, "all"], "table1": [250]}


def test_ordering_summary_by_hand():
    """Converged-seed means per method, Margin-Mix minus MixMatch / supervised where both converged, nc
    counts, the majority-class rate (3 of 4 test images: 75 %) and the ordering lines; non-FER tables skipped."""
    data, results, plan = _ordering_inputs()
    summary, lines = mm.ordering_summary(data, results, plan)
    assert summary == {
        "table3_majority_rate": 75.0,
        "table3_supervised_nc_10": 0.0, "table3_supervised_acc_10": 65.0, "table3_mean_teacher_nc_10": 2.0,
        "table3_mixmatch_nc_10": 1.0, "table3_mixmatch_acc_10": 80.0, "table3_margin_mix_nc_10": 0.0,
        "table3_margin_mix_acc_10": 88.0,
        "table3_marginmix_minus_mixmatch_10": 8.0, "table3_marginmix_minus_supervised_10": 23.0,
        "table3_supervised_nc_all": 0.0, "table3_supervised_acc_all": 70.0, "table3_mean_teacher_nc_all": 0.0,
        "table3_mean_teacher_acc_all": 72.0, "table3_mixmatch_nc_all": 0.0, "table3_mixmatch_acc_all": 71.0,
        "table3_margin_mix_nc_all": 2.0,
        "runs": 16.0, "nc_runs": 5.0,
    }
    assert lines == [
        "table3 n=10: ordering (converged runs) margin_mix 88.0 > mixmatch 80.0 > supervised 65.0; "
        "majority-class rate 75.0 %, above it: ['margin_mix', 'mixmatch']",
        "table3 n=all: ordering (converged runs) mean_teacher 72.0 > mixmatch 71.0 > supervised 70.0; "
        "majority-class rate 75.0 %, above it: []",
    ]
    _, smoke = mm.ordering_summary(data, results, plan, scale="smoke")
    assert smoke == ["[smoke run: a pipeline check, not a finding; read the recorded run] " + line for line in lines]


class _ByBrightness(nn.Module):
    """Predicts class k for an image of uniform grey level 25 k (a BN layer, unused, for recalibrate_bn)."""

    def __init__(self, C):
        super().__init__()
        self.bn, self.C = nn.BatchNorm2d(1), C

    def forward(self, x):
        self.bn(x)
        level = x.mean((1, 2, 3)) * 255 / 25
        return -(level[:, None] - torch.arange(self.C)) ** 2


def _grey(levels, labels, name):
    from fer_nb.data.schema import FaceArrays

    imgs = (torch.tensor(levels, dtype=torch.uint8) * 25).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return FaceArrays(imgs, {"expression": torch.tensor(labels)}, name, tuple(f"c{i}" for i in range(4)))


def test_evaluate_scores_the_test_predictions_by_hand():
    """Predictions [0, 0, 1, 1, 2, 0] for labels [0, 0, 0, 1, 2, 2]: accuracy 4/6, mean per-class accuracy
    (2/3 + 1 + 1/2) / 3 over the 3 classes present, histogram over all 4 classes, not collapsed; all-one-class
    predictions are "nc"."""
    cfg = SimpleNamespace(hp={"batch_size": 2, "recal_batches": 1}, device=torch.device("cpu"))
    train = _grey([0, 1, 2, 3], [0, 1, 2, 3], "train")
    out = mm.evaluate(cfg, _ByBrightness(4), train, _grey([0, 0, 1, 1, 2, 0], [0, 0, 0, 1, 2, 2], "test"), 0)
    assert out["acc"] == pytest.approx(100 * 4 / 6) and out["mean_acc"] == pytest.approx(100 * (2 / 3 + 1 + 0.5) / 3)
    assert out["nc"] is False and out["pred_hist"] == [3, 2, 1, 0]
    assert out["predictions"].dtype == np.int64 and out["predictions"].tolist() == [0, 0, 1, 1, 2, 0]
    out = mm.evaluate(cfg, _ByBrightness(4), train, _grey([3, 3, 3], [3, 1, 0], "test"), 0)
    assert out["nc"] is True and out["pred_hist"] == [0, 0, 0, 3] and out["acc"] == pytest.approx(100 / 3)


def test_run_one_wiring_split_seed_run_hash_and_batches(tmp_path, monkeypatch):
    """What run_one hands the trainer: the labelled split drawn with generator seed 1000 + seed and the
    budget (the whole pool for "all"), the checkpoint named by table/method/budget/seed and the run hash of
    (table, method, n, seed, sorted overrides) (recorded runs are found by it), the network under "model",
    the preset's epochs and steps, and batches with an unlabelled part for the SSL methods only; an empty
    training history gives loss NaN."""
    from fer_nb.data.schema import FaceArrays
    from fer_nb.train import History, checkpoint_path

    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path), batch_size=4, steps=2,
                         epochs=3)
    g = torch.Generator().manual_seed(0)
    names = tuple(f"c{i}" for i in range(8))
    train = FaceArrays(torch.randint(0, 256, (24, 1, 32, 32), generator=g, dtype=torch.uint8),
                       {"expression": torch.arange(24) % 8}, "pool", names)
    data = {"table3": (train, train.subset(torch.arange(8)))}
    splits, fits = [], []
    real_split = mm.balanced_label_split

    def split(labels, n, C, gen):
        splits.append((n, C, gen.initial_seed()))
        return real_split(labels, n, C, gen)

    def fit_or_load(checkpoint, run_hash, **run):
        fits.append((checkpoint, run_hash, run))
        return History()

    monkeypatch.setattr(mm, "balanced_label_split", split)
    monkeypatch.setattr(mm, "fit_or_load", fit_or_load)
    monkeypatch.setattr(mm, "evaluate", lambda cfg, model, tr, te, seed: {"acc": 50.0 + seed})
    for method, n, seed, over, n_split, unlabelled in (("margin_mix", 16, 3, {"T": 0.5, "K": 1}, 16, True),
                                                       ("supervised", 16, 0, {}, 16, False),
                                                       ("mixmatch", "all", 1, {}, 24, False)):
        r = mm.run_one(cfg, data, "table3", method, n, seed, **over)
        assert r["acc"] == 50.0 + seed and np.isnan(r["loss"])
        assert splits[-1] == (n_split, 8, 1000 + seed)
        checkpoint, rh, run = fits[-1]
        assert rh == cfg.run_hash(table="table3", method=method, n=n, seed=seed, over=sorted(over.items()))
        assert checkpoint == checkpoint_path(cfg.out_dir, f"table3-{method}-{n}-s{seed}", rh)
        assert set(run["modules"]) == {"model"} and (run["epochs"], run["steps_per_epoch"]) == (3, 2)
        assert run["desc"] == f"table3 {method} n={n} s{seed}"      # the progress bar names the run
        batches = list(run["train_batches"](0))
        assert len(batches) == 2 and all(("u_image" in b) == unlabelled for b in batches), method
    assert len({rh for _, rh, _ in fits}) == 3


# ------------------------------------------------------------- build_method, defaults, Eq. 6 edge cases, messages


def test_build_method_passes_the_presets_hyper_parameters(tmp_path):
    """Every method gets the preset's lr, EMA decay, decoupled weight decay 0.02 x lr and augmentation
    (pad = image_size / 8, flip except on SVHN) and its own hyper-parameters; ``ema_decay`` can be overridden
    for the methods with an optional EMA (Table 5's "without parameter EMA")."""
    from fer_nb.data.augment import Augment

    hp = dict(lr=0.004, ema_decay=0.95, alpha=0.6, T=0.3, K=3, lambda_M=0.7, lambda_u=0.2, lambda_u_mixmatch=33.0,
              centroid_lr=0.25, rampup=0.3, mt_consistency=7.0)
    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path), **hp)
    built = {name: mm.build_method(cfg, name, Tiny(), 3) for name in METHODS}
    for name, m in built.items():
        assert m.optimizer.param_groups[0]["lr"] == 0.004, name
        assert (m.ema.alpha, m.ema.weight_decay) == (0.95, pytest.approx(0.02 * 0.004)), name
        assert m.augment == Augment(flip=True, pad=4), name
    assert built["supervised"].mixup_alpha == 0.6
    assert (built["mean_teacher"].consistency, built["mean_teacher"].rampup) == (7.0, 0.3)
    mix = built["mixmatch"]
    assert (mix.T, mix.K, mix.alpha, mix.lambda_u, mix.rampup) == (0.3, 3, 0.6, 33.0, 0.3)
    mar = built["margin_mix"]
    assert (mar.T, mar.K, mar.alpha, mar.lambda_M, mar.lambda_u, mar.centroids.lr, mar.rampup) == (
        0.3, 3, 0.6, 0.7, 0.2, 0.25, 0.3)
    for name in ("supervised", "mixmatch", "margin_mix"):       # Mean Teacher's teacher is the EMA
        m = mm.build_method(cfg, name, Tiny(), 3, ema_decay=None)
        assert m.ema is None and m.eval_model is m.model, name
    m = mm.build_method(cfg, "margin_mix", Tiny(), 3, T=0.5, ema_decay=None)
    assert m.T == 0.5 and m.ema is None and m.K == 3
    svhn = config.resolve("margin_mix", "smoke", "svhn", str(tmp_path), "cpu", 1, str(tmp_path / "r"))
    assert mm.build_method(svhn, "mixmatch", Tiny(), 3).augment == Augment(flip=False, pad=4)


def test_margin_mix_defaults_are_the_papers():
    """Defaults (the paper, Sections 4-5): T 0.25, N_aug 2, MixUp alpha 0.75, lambda_M 1, lambda_u 0.4,
    centroid learning rate 0.5, soft (Eq. 6) self-labels, no unlabelled prediction term."""
    m = MarginMix(Tiny(), 3)
    assert (m.T, m.K, m.alpha, m.lambda_M, m.lambda_u, m.centroids.lr, m.self_label, m.pred_u_weight) == (
        0.25, 2, 0.75, 1.0, 0.4, 0.5, "soft", 0.0)
    assert m.num_classes == 3 and m.centroids.centers.shape == (3, 4) and m.centroids.seen.tolist() == [False] * 3


def test_fuzzy_labels_for_near_points_and_a_point_on_a_centroid():
    """Eq. 6 with distances below 1 (d2 0.01 and 0.04: memberships 0.8 / 0.2) and a point exactly on a
    centroid (membership 1 there, no NaN)."""
    y = fuzzy_cmeans_labels(torch.tensor([[0.01, 0.04], [0.0, 0.5]]))
    assert torch.allclose(y, torch.tensor([[0.8, 0.2], [1.0, 0.0]]), atol=1e-6)
    assert torch.isfinite(y).all()


def test_marginmix_unlabelled_prediction_term():
    """``pred_u_weight > 0`` adds ``pred_u_weight * w(t) * mean ||softmax(z_u) - y_u||^2`` (logged as loss_u);
    at 0 (the paper's Eq. 10) the term and its log are absent."""
    step = MarginMix(Tiny(C=3), 3, lambda_M=1.0, lambda_u=0.4, rampup=0.5, ema_decay=None)
    step.centroids.centers.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    step.centroids.seen.fill_(True)
    g = torch.Generator().manual_seed(2)
    lg, em = torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g)
    my = torch.softmax(torch.randn(4, 3, generator=g), 1)
    base, logs = step.loss(lg, em, my, 2, 0.25)
    assert "loss_u" not in logs
    step.pred_u_weight = 3.0
    loss, logs = step.loss(lg, em, my, 2, 0.25)
    lu = ((torch.softmax(lg[2:], 1) - my[2:]) ** 2).mean()
    assert torch.allclose(logs["loss_u"], lu, atol=1e-7)
    assert torch.allclose(loss, base + 3.0 * 0.5 * lu, atol=1e-6)


def test_validation_messages_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"^centroid learning rate must be in \(0, 1\], got 0$"):
        mm.Centroids(3, 4, lr=0)
    with pytest.raises(ValueError, match=r"^K \(N_aug\) must be >= 1, got 0$"):
        MarginMix(Tiny(), 3, K=0)
    cfg = SimpleNamespace(dataset="imagenet", hp={})
    with pytest.raises(ValueError, match=r"^Margin-Mix has no table for DATASET='imagenet'; use one of "
                                         r"synthfacs, ferplus, rafdb, cifar10, cifar100, svhn, stl10$"):
        mm.table_budgets(cfg)


def test_synthfacs_analogues_are_the_documented_generations(tmp_path):
    """Table 3's SynthFACS analogue: training pool = subjects 0-39 (seed 11), test = subjects 40-59 (seed 12),
    at the preset's image size, FER+ priors with contempt, grey (recorded runs depend on these draws)."""
    from fer_nb.data import synthfacs

    cfg = config.resolve("margin_mix", "smoke", device="cpu", out_dir=str(tmp_path), n_train=24, n_test=8)
    train, test = mm.load_data(cfg)["table3"]
    kw = dict(domain="wild", image_size=32, class_priors="ferplus", channels=1, with_contempt=True)
    ref_train = synthfacs.generate(24, seed=11, n_subjects=40, subject_offset=0, **kw)
    ref_test = synthfacs.generate(8, seed=12, n_subjects=20, subject_offset=40, **kw)
    assert train.images.shape == (24, 1, 32, 32) and test.images.shape == (8, 1, 32, 32)
    assert torch.equal(train.images, ref_train.images) and torch.equal(test.images, ref_test.images)
    assert torch.equal(test.labels["subject"], ref_test.labels["subject"])
    assert test.labels["subject"].min() >= 40 and train.labels["subject"].max() < 40


def test_small_runs_the_fer_calibrated_synthfacs_setting(tmp_path):
    """`small` draws Table 3's analogue from the FER+-calibrated setting (wild, wild_severity 0.1), the
    preset's wild_severity reaches synthfacs.generate, and a severity with the lab domain is an error."""
    from fer_nb.data import synthfacs

    cfg = config.resolve("margin_mix", "small", device="cpu", out_dir=str(tmp_path), n_train=16, n_test=8)
    assert (cfg.hp["domain"], cfg.hp["wild_severity"]) == ("wild", 0.1)
    train, test = mm.load_data(cfg)["table3"]
    kw = dict(domain="wild", image_size=32, class_priors="ferplus", channels=1, with_contempt=True)
    calibrated = synthfacs.generate(16, seed=11, n_subjects=40, subject_offset=0, wild_severity=0.1, **kw)
    full = synthfacs.generate(16, seed=11, n_subjects=40, subject_offset=0, **kw)
    assert torch.equal(train.images, calibrated.images) and not torch.equal(train.images, full.images)
    assert train.info["wild_severity"] == 0.1 and test.info["wild_severity"] == 0.1
    lab = config.resolve("margin_mix", "small", device="cpu", out_dir=str(tmp_path), domain="lab", n_train=16, n_test=8)
    with pytest.raises(ValueError, match=r"^wild_severity=0\.1 scales SynthFACS's wild domain only, but domain='lab'; "
                                         r"set domain='wild'"):
        mm.load_data(lab)
    assert mm.load_data(config.resolve("margin_mix", "small", device="cpu", out_dir=str(tmp_path), domain="lab",
                                       wild_severity=1.0, n_train=16, n_test=8))["table3"][0].name == "synthfacs-lab"


def test_real_rafdb_pools_are_the_official_splits(tmp_path):
    """DATASET=rafdb: the training pool is the official train split (28 images), the test set the test split (14)."""
    _write_rafdb(tmp_path)
    cfg = config.resolve("margin_mix", "smoke", "rafdb", str(tmp_path), "cpu", 1, str(tmp_path / "run"))
    train, test = mm.load_data(cfg)["table4"]
    assert (len(train), len(test)) == (28, 14)
    assert train.images.shape[-1] == cfg.hp["image_size"]
