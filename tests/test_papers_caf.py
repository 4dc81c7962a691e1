"""CAF (fer_nb.papers.caf): which parameters each step of Algorithm 1 updates, the frozen critic,
the sign of L_adv, the step order, the schedule in iterations, bf16 and the gpu preset."""
import copy
from types import SimpleNamespace

import pytest
import torch

from fer_nb import config
from fer_nb.losses.caf_critic import CAFCriticLoss
from fer_nb.losses.va_regression import VARegressionLoss
from fer_nb.papers import caf


def _setup(critic="caf_delta", seed=0, size=64, n=16, **kw):
    torch.manual_seed(seed)
    hp = {"width": 0.25, "pool_size": 2}
    model = caf.make_model("alexnet", 3, hp, critic != "none", torch.device("cpu"))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # deterministic forward, so a by-hand recomputation is exact
    steps = caf.CAFSteps(model, caf.make_critic_loss(critic), lr=1e-3, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 3, size, size, generator=g)
    va = torch.rand(n, 2, generator=g) * 2 - 1
    return model, steps, x, va


def _snap(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(module, before):
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_av_step_updates_encoder_and_regressor_only_with_l_av_by_hand():
    model, steps, x, va = _setup()
    ref = copy.deepcopy(model)
    before = {k: _snap(getattr(model, k)) for k in ("encoder", "regressor", "critic")}
    loss = steps.av_step(x, va)
    want = VARegressionLoss(0.5)(ref(x), va)
    want.backward()
    assert torch.allclose(loss, want.detach(), atol=1e-5)
    assert _changed(model.encoder, before["encoder"]) and _changed(model.regressor, before["regressor"])
    assert not _changed(model.critic, before["critic"])
    for p, r in zip(model.regressor.parameters(), ref.regressor.parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-5)


def test_critic_step_updates_critic_only_with_l_c_by_hand():
    model, steps, x, va = _setup()
    strong, _ = caf.grouping_masks(va, "otsu")
    assert strong.any() and (~strong).any()
    ref = copy.deepcopy(model)
    before = {k: _snap(getattr(model, k)) for k in ("encoder", "regressor", "critic")}
    loss = steps.critic_step(x, strong)
    want = CAFCriticLoss("delta")(ref.critic(ref.encoder(x).detach()), strong)
    want.backward()
    assert torch.allclose(loss, want.detach(), atol=1e-5)
    assert _changed(model.critic, before["critic"])
    assert not _changed(model.encoder, before["encoder"]) and not _changed(model.regressor, before["regressor"])
    assert all(p.grad is None for p in model.encoder.parameters())
    for p, r in zip(model.critic.parameters(), ref.critic.parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-5)


@pytest.mark.parametrize("adv_weight", [1.0, 0.1])
def test_adversarial_step_moves_encoder_only_critic_frozen_sign_of_l_adv(adv_weight):
    """L_adv = -w * mean over weak samples of the critic output: the encoder descends it (pushes
    the weak samples' critic score UP), the critic gets no gradient, the regressor does not move."""
    model, steps, x, va = _setup(adv_weight=adv_weight)
    _, weak = caf.grouping_masks(va, "otsu")
    ref = copy.deepcopy(model)
    before = {k: _snap(getattr(model, k)) for k in ("encoder", "regressor", "critic")}
    frozen_seen = []
    model.critic.register_forward_hook(lambda m, i, o: frozen_seen.append(
        not any(p.requires_grad for p in m.parameters())))
    loss = steps.adversarial_step(x[weak])
    want = -adv_weight * ref.critic(ref.encoder(x[weak])).mean()
    want.backward()
    assert frozen_seen == [True], "the critic must be frozen during the adversarial forward/backward"
    assert all(p.requires_grad for p in model.critic.parameters()), "critic unfrozen afterwards"
    assert torch.allclose(loss, want.detach(), atol=1e-5)
    assert _changed(model.encoder, before["encoder"])
    assert not _changed(model.critic, before["critic"]) and not _changed(model.regressor, before["regressor"])
    assert all(p.grad is None for p in model.critic.parameters())
    assert all(p.grad is None for p in model.regressor.parameters())
    for p, r in zip(model.encoder.parameters(), ref.encoder.parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-5)


def test_adversarial_step_raises_the_weak_critic_score_with_sgd():
    """With plain SGD on the encoder, one adversarial step increases mean critic(encoder(x_weak))."""
    model, steps, x, va = _setup()
    _, weak = caf.grouping_masks(va, "otsu")
    steps.opts["enc"] = torch.optim.SGD(model.encoder.parameters(), lr=1e-2)
    with torch.no_grad():
        s0 = model.critic(model.encoder(x[weak])).mean()
    steps.adversarial_step(x[weak])
    with torch.no_grad():
        s1 = model.critic(model.encoder(x[weak])).mean()
    assert float(s1) > float(s0)


@pytest.mark.parametrize("order,expected", [("paper", ["critic", "adv", "av"]), ("code", ["av", "critic", "adv"])])
def test_train_step_order_and_skip_without_both_groups(order, expected, monkeypatch):
    model, steps, x, va = _setup(step_order=order)
    calls = []
    for name, meth in (("av", "av_step"), ("critic", "critic_step"), ("adv", "adversarial_step")):
        real = getattr(steps, meth)
        monkeypatch.setattr(steps, meth, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    logs = steps.train_step({"image": x, "va": va}, SimpleNamespace(epoch=0))
    assert calls == expected and all(torch.isfinite(v) for v in logs.values())
    calls.clear()
    same = torch.full_like(va, 0.5)  # one radius: every sample in one group, no pairs
    steps.train_step({"image": x, "va": same}, SimpleNamespace(epoch=0))
    assert calls == ["av"]


def test_no_critic_baseline_is_av_only():
    model, steps, x, va = _setup(critic="none")
    logs = steps.train_step({"image": x, "va": va}, SimpleNamespace(epoch=0))
    assert float(logs["critic"]) == 0.0 and float(logs["adv"]) == 0.0 and float(logs["av"]) > 0
    with pytest.raises(ValueError, match="with_critic"):
        caf.CAFSteps(model, caf.make_critic_loss("caf_delta"), lr=1e-3)
    with pytest.raises(ValueError, match="unknown critic"):
        caf.make_critic_loss("wgan")


def test_schedule_in_iterations_for_real_data(tmp_path):
    real = config.resolve("caf", "paper", "affectnet", str(tmp_path), "cpu", 1, str(tmp_path / "a"))
    plan = caf.schedule(real, 280_000, 256)
    assert plan["steps"] * plan["epochs"] == 50_000 and plan["steps"] * plan["decay_every"] == 10_000
    assert plan["cycle"]
    synth = config.resolve("caf", "small", device="cpu", out_dir=str(tmp_path / "b"))
    assert caf.schedule(synth, 1280, 64) == {"steps": 20, "epochs": 30, "decay_every": 10, "cycle": False}
    assert real.hp["resnet_batch_size"] == 128 and real.hp["batch_size"] == 256


def test_cycled_batches_visit_every_image_once_per_pass():
    from fer_nb.data.schema import FaceArrays

    n = 10
    ds = FaceArrays(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                    {"va": torch.zeros(n, 2)})
    seen = torch.cat([(b["image"][:, 0, 0, 0] * 255).round().long()
                      for b in caf.cycled_batches(ds, 4, 5, torch.Generator().manual_seed(0))])
    assert len(seen) == 20 and sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_caf_step_under_cpu_bf16_autocast(monkeypatch):
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    model, steps, x, va = _setup(critic="fisher")
    dtypes = []
    model.encoder.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    logs = steps.train_step({"image": x, "va": va}, SimpleNamespace(epoch=0))
    assert torch.bfloat16 in dtypes
    assert all(torch.isfinite(v.float()) for v in logs.values())
    model, steps, x, va = _setup(critic="caf_delta")
    logs = steps.train_step({"image": x, "va": va}, SimpleNamespace(epoch=0))
    assert all(torch.isfinite(v.float()) for v in logs.values())


def test_gpu_preset_resolves_and_one_step_runs_on_cpu(tmp_path):
    """`gpu`: AlexNet at 224 px with 256x6x6 = 9216-d features, ResNet18 at batch 128; one step each on the CPU."""
    cfg = config.resolve("caf", "gpu", device="cpu", out_dir=str(tmp_path))
    hp = cfg.hp
    assert (hp["image_size"], hp["batch_size"], hp["resnet_batch_size"], hp["resnet18"]) == (224, 256, 128, True)
    for encoder in ("alexnet", "resnet18"):
        torch.manual_seed(0)
        model = caf.make_model(encoder, 3, hp, True, cfg.device)
        if encoder == "alexnet":
            assert model.encoder.feature_dim == 9216
        steps = caf.CAFSteps(model, caf.make_critic_loss("caf_delta"), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]))
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.rand(6, 3, 224, 224, generator=g), "va": torch.rand(6, 2, generator=g) * 2 - 1}
        logs = steps.train_step(batch, SimpleNamespace(epoch=0))
        assert all(torch.isfinite(v.float()) for v in logs.values()), encoder


def _write_affectnet(root, n_train=40, n_val=12):
    import csv

    import numpy as np
    from PIL import Image

    base = root / "affectnet"
    lists = base / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(0)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    for fname, n in (("training.csv", n_train), ("validation.csv", n_val)):
        with open(lists / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in range(n):
                path = f"{fname[:3]}/{i}.jpg"
                v, a = rng.uniform(-1, 1, 2)
                w.writerow([path, 0, 0, 30, 30, "1.0;2.0", i % 8, round(v, 3), round(a, 3)])
                img = base / "Manually_Annotated_Images" / path
                img.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(img)


def test_real_dataset_runs_tables_1_and_4_on_an_iteration_schedule(tmp_path):
    """DATASET=affectnet (a fixture in the real format): stills only, trained for `iterations`
    drawn cyclically (more steps than one pass over the data), Tables 1 and 4 filled."""
    _write_affectnet(tmp_path)
    cfg = config.resolve("caf", "smoke", "affectnet", str(tmp_path), "cpu", 1, str(tmp_path / "run"),
                         ablation=["none", "caf_delta"], batch_size=8, iterations=12, iters_per_epoch=6,
                         lr_decay_iters=6, n_seen_test=4)
    data = caf.build_data(cfg)
    assert list(data) == ["stills"] and len(data["stills"][0]) == 36 and len(data["stills"][2]) == 12
    runs = caf.run_experiments(cfg, data)
    hist = runs.hist[("CAF w/ Delta (AlexNet (tuned))", 0)]
    assert len(hist["train/av"]) == 2  # 2 "epochs" of 6 iterations = 12 iterations (> 36 / 8 per pass)
    tables = caf.summarise(runs.runs, runs.nc)
    assert set(tables) == {"table1", "table4"}
    assert set(tables["table4"]) == {"no critic (AlexNet (tuned))", "CAF w/ Delta (AlexNet (tuned))"}


# ------------------------------------------------------------ evaluation, tables, verdicts, figures

import math  # noqa: E402
import statistics  # noqa: E402

from fer_nb import report  # noqa: E402
from fer_nb.data.schema import FaceArrays  # noqa: E402
from fer_nb.losses.caf_critic import collapse_eigenvalue  # noqa: E402


class _Scale(torch.nn.Module):
    def __init__(self, k=1.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x.flatten(1) * self.k


class _FlatNet(torch.nn.Module):
    """A stand-in CAFNet whose encoder features are the pixels (times ``k``): hand-computable."""

    def __init__(self, k=1.0):
        super().__init__()
        self.encoder = _Scale(k)


def _pixels(rows, **labels):
    """FaceArrays of 1x1xW uint8 images whose pixels are ``rows`` (features = rows / 255)."""
    img = torch.tensor(rows, dtype=torch.uint8).view(len(rows), 1, 1, -1)
    return FaceArrays(img, {k: torch.as_tensor(v) for k, v in labels.items()})


def test_code_metrics_per_batch_rmse_and_ddof_mixed_pcc_by_hand():
    pred = torch.tensor([[0.1, 0.0], [0.5, -0.2], [-0.3, 0.4], [0.2, 0.9], [0.0, -0.5]])
    y = torch.tensor([[0.0, 0.1], [0.4, -0.4], [-0.1, 0.2], [0.6, 0.5], [0.3, -0.1]])
    out = caf.code_metrics(pred, y, batch=2)
    assert set(out) == {"rmse_v", "rmse_a", "pcc_v", "pcc_a", "ccc_v", "ccc_a"}
    for j, d in enumerate("va"):
        p = [float(v) for v in pred[:, j].double()]
        t = [float(v) for v in y[:, j].double()]
        chunks = [(0, 2), (2, 4), (4, 5)]   # batch 2: the last batch has one sample
        rmse = sum(math.sqrt(sum((p[i] - t[i]) ** 2 for i in range(a, b)) / (b - a)) for a, b in chunks) / 3
        mp, mt = sum(p) / 5, sum(t) / 5
        cov1 = sum((a - mp) * (b - mt) for a, b in zip(p, t)) / 4
        sp, st = statistics.pstdev(p), statistics.pstdev(t)
        pcc = cov1 / (sp * st)
        ccc = 2 * sp * st * pcc / (sp ** 2 + st ** 2 + (mp - mt) ** 2)
        assert out[f"rmse_{d}"] == pytest.approx(rmse, abs=1e-12)
        assert out[f"pcc_{d}"] == pytest.approx(pcc, abs=1e-12)
        assert out[f"ccc_{d}"] == pytest.approx(ccc, abs=1e-12)
    # per-batch mean RMSE differs from the global one (that is the quirk the chapter shows)
    glob = math.sqrt(float(((pred[:, 0] - y[:, 0]).double() ** 2).mean()))
    assert abs(out["rmse_v"] - glob) > 1e-3


def test_wide_cells_mean_pm_std_status_and_dash():
    tables = {"table4": {"A": {"rmse_v": 0.12345, "rmse_v_std": 0.01, "ccc_v": 0.5, "ccc_v_std": 0.0},
                         "B": {"status": "nc", "nc_seeds": 3},
                         "C": {"rmse_v": 0.2, "rmse_v_std": 0.0125}}}
    w = caf.wide(tables, "table4", ["rmse_v", "ccc_v"])
    assert list(w.index) == ["A", "B", "C"] and list(w.columns) == ["rmse_v", "ccc_v"]
    assert w.loc["A"].tolist() == ["0.123 ± 0.010", "0.500 ± 0.000"]
    assert w.loc["B"].tolist() == ["nc", "nc"]
    assert w.loc["C"].tolist() == ["0.200 ± 0.013", "—"]
    assert caf.wide(tables, "table2", ["rmse_v"]).empty


_COLS = ["row", "metric", "paper", "recorded", "this run", "delta"]
_PAPER_CAF_ROWS = ["CAF w/ Delta (ResNet18)", "CAF w/ Delta (AlexNet (tuned))", "CAF w/ constant kappa (ResNet18)",
                   "CAF w/ constant kappa (AlexNet (tuned))", "CAF w/ linear kappa' (ResNet18)",
                   "CAF w/ linear kappa' (AlexNet (tuned))"]


_SMALL_SYNTH = SimpleNamespace(dataset="synthfacs", scale="small")


def test_compare_keeps_our_rows_and_the_papers_caf_rows_and_marks_nc(monkeypatch):
    asked = []

    def fake_recorded_for(paper, scale, dataset):
        asked.append((paper, scale, dataset))
        return {"provenance": {"dataset": "synthfacs", "scale": "small", "seeds": [0, 1, 2]},
                "tables": {"table4": {"GramNet (AlexNet (tuned))": {"status": "nc", "nc_seeds": 3}}}}

    monkeypatch.setattr(report, "recorded_for", fake_recorded_for)
    tables = {"table4": {"CAF w/ Delta (AlexNet (tuned))": {"rmse_v": 0.3, "rmse_v_std": 0.01, "ccc_v": 0.5},
                         "no critic (AlexNet (tuned))": {"status": "nc", "nc_seeds": 2},
                         "my extra row": {"rmse_v": 0.5, "ccc_v": 0.25}}}
    f = caf.compare(tables, "table4", ["rmse_v", "ccc_v"], _SMALL_SYNTH)
    assert asked == [("caf", "small", "synthfacs")]
    assert list(f.columns) == _COLS and list(f.index) == list(range(len(f)))
    rows = list(dict.fromkeys(f["row"]))
    assert rows == ["no critic (AlexNet (tuned))", "GramNet (AlexNet (tuned))", "CAF w/ Delta (ResNet18)",
                    "CAF w/ Delta (AlexNet (tuned))", "CAF w/ constant kappa (ResNet18)",
                    "CAF w/ constant kappa (AlexNet (tuned))", "CAF w/ linear kappa' (ResNet18)",
                    "CAF w/ linear kappa' (AlexNet (tuned))", "my extra row"]
    assert (f["metric"].tolist()[:2]) == ["rmse_v", "ccc_v"]
    cell = lambda row, col: f.loc[f["row"] == row, col].tolist()  # noqa: E731
    assert cell("no critic (AlexNet (tuned))", "this run") == ["nc", "nc"]
    assert cell("GramNet (AlexNet (tuned))", "recorded") == ["nc", "nc"]
    assert cell("GramNet (AlexNet (tuned))", "this run") == ["—", "—"]
    assert cell("CAF w/ Delta (AlexNet (tuned))", "this run") == ["0.300 ± 0.010", "0.500"]
    assert cell("CAF w/ Delta (AlexNet (tuned))", "paper") == [0.2216, 0.80]
    assert cell("my extra row", "this run") == ["0.500", "0.250"]
    assert "nc" not in f["recorded"].tolist()[: 2] and "nc" not in cell("my extra row", "this run")
    assert set(f["delta"]) == {"—"}      # a SynthFACS run is never compared with AffectNet numbers
    assert f.attrs["this_run"] == "small · synthfacs"


def test_compare_without_this_run_or_recorded_rows_shows_the_papers_caf_rows(monkeypatch):
    monkeypatch.setattr(report, "recorded_for", lambda paper, scale, dataset: None)
    f = caf.compare({}, "table4", ["rmse_v"], _SMALL_SYNTH)
    assert list(f.columns) == _COLS and f["row"].tolist() == _PAPER_CAF_ROWS
    assert set(f["this run"]) == {"—"} and set(f["recorded"]) == {"—"}
    monkeypatch.setattr(report, "recorded_for", lambda paper, scale, dataset: {"tables": {}})
    f = caf.compare({"table1": {}}, "table4", ["rmse_v"], _SMALL_SYNTH)
    assert f["row"].tolist() == _PAPER_CAF_ROWS
    f = caf.compare({"table4": {}}, "table1", ["rmse_v"], _SMALL_SYNTH)
    assert f["row"].tolist() == ["Ours (ResNet18)", "Ours (AlexNet (tuned))"]


def test_compare_recorded_column_shows_the_recorded_run_of_the_same_dataset():
    """The committed recorded run (small, SynthFACS) is shown beside a small or smoke SynthFACS run,
    never beside a run on another dataset, and not when the run is not named (no cfg)."""
    rec = report.recorded_for("caf", "small", "synthfacs")
    assert rec is not None
    row = rec["tables"]["table4"]["CAF w/ Delta (AlexNet (tuned))"]
    want = [report.fmt_mean_std(row["rmse_v"], row.get("rmse_v_std"))]
    for scale in ("small", "smoke"):
        f = caf.compare({}, "table4", ["rmse_v"], SimpleNamespace(dataset="synthfacs", scale=scale))
        assert f.loc[f["row"] == "CAF w/ Delta (AlexNet (tuned))", "recorded"].tolist() == want, scale
        assert f.attrs["recorded"].startswith("small · synthfacs"), f.attrs["recorded"]
    for cfg in (None, SimpleNamespace(dataset="affectnet", scale="small")):
        f = caf.compare({}, "table4", ["rmse_v"], cfg)
        assert set(f["recorded"]) == {"—"} and f.attrs["recorded"] == "—"


def test_compare_delta_only_on_the_papers_dataset():
    ours = {"table1": {"Ours (ResNet18)": {"rmse_v": 0.40, "rmse_v_std": 0.02}}}
    pub = report.load_paper("caf")["tables"]["table1"]["rows"]["Ours (ResNet18)"]["rmse_v"]
    f = caf.compare(ours, "table1", ["rmse_v"], SimpleNamespace(dataset="affectnet", scale="small"))
    assert f.loc[f["row"] == "Ours (ResNet18)", "delta"].tolist() == [report.fmt_number(0.40 - pub)]
    f = caf.compare(ours, "table1", ["rmse_v"], SimpleNamespace(dataset="synthfacs", scale="small"))
    assert f.loc[f["row"] == "Ours (ResNet18)", "delta"].tolist() == ["—"]


def _pi_row(rv, ra, cv, ca, sagr=0.9):
    return {"rmse_v": rv, "rmse_a": ra, "ccc_v": cv, "ccc_a": ca, "sagr_v": sagr}


def test_person_independence_unseen_seen_gap_and_subject_1nn_by_hand():
    person = {("CAF w/ Delta", "unseen subjects"): [_pi_row(0.30, 0.20, 0.50, 0.40), _pi_row(0.40, 0.30, 0.30, 0.20)],
              ("CAF w/ Delta", "seen subjects"): [_pi_row(0.10, 0.15, 0.70, 0.60), _pi_row(0.20, 0.10, 0.80, 0.50)],
              ("no critic", "unseen subjects"): [_pi_row(0.50, 0.40, 0.10, 0.00)],
              ("no critic", "seen subjects"): [_pi_row(0.25, 0.20, 0.30, 0.10)]}
    ident = {"CAF w/ Delta": [0.5, 0.7]}
    out = caf.person_independence(person, ident)
    assert list(out) == ["CAF w/ Delta: unseen subjects", "CAF w/ Delta: seen subjects", "no critic: unseen subjects",
                         "no critic: seen subjects", "CAF w/ Delta: gap (unseen - seen)",
                         "no critic: gap (unseen - seen)"]
    keys = ["rmse_v", "rmse_a", "ccc_v", "ccc_a"]

    def ms(vals):
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    for (row, where), runs in person.items():
        want = {}
        for k in keys:
            want[k], want[k + "_std"] = ms([r[k] for r in runs])
        if row in ident and where == "unseen subjects":
            want["subject_1nn"], want["subject_1nn_std"] = ms(ident[row])
        got = out[f"{row}: {where}"]
        assert set(got) == set(want), (row, where)     # sagr is not carried over
        assert got == pytest.approx(want, abs=1e-12)
    gap = out["CAF w/ Delta: gap (unseen - seen)"]
    for k in keys:
        diffs = [a[k] - b[k] for a, b in zip(person[("CAF w/ Delta", "unseen subjects")],
                                              person[("CAF w/ Delta", "seen subjects")])]
        assert gap[k] == pytest.approx(statistics.mean(diffs), abs=1e-12)
        assert gap[k + "_std"] == pytest.approx(statistics.stdev(diffs), abs=1e-12)
    assert out["no critic: gap (unseen - seen)"] == pytest.approx(
        {"rmse_v": 0.25, "rmse_a": 0.20, "ccc_v": -0.20, "ccc_a": -0.10,
         "rmse_v_std": 0.0, "rmse_a_std": 0.0, "ccc_v_std": 0.0, "ccc_a_std": 0.0}, abs=1e-12)


def _va_row(rv, ra, cv, ca):
    return {"rmse_v": rv, "rmse_a": ra, "ccc_v": cv, "ccc_a": ca, "rmse_v_std": 0.01, "sagr_v": 0.7}


def _summary_inputs():
    a = " (AlexNet (tuned))"
    t4 = {"no critic" + a: _va_row(0.40, 0.30, 0.50, 0.30),                 # rmse .35, ccc .40
          "FisherGAN" + a: {"status": "nc", "nc_seeds": 3},
          "CAF w/ Delta" + a: _va_row(0.30, 0.20, 0.50, 0.30),              # rmse .25, ccc .40 (a tie)
          "CAF w/ constant kappa" + a: _va_row(0.20, 0.20, 0.10, 0.10),
          "CAF w/ linear kappa'" + a: _va_row(0.10, 0.30, 0.20, 0.40),
          "CAF w/ Delta, pull 0.25 (ours)" + a: _va_row(0.50, 0.30, 0.60, 0.40),   # rmse .40, ccc .50
          "CAF w/ Delta (ResNet18)": _va_row(0.9, 0.9, 0.9, 0.9)}
    tables = {"table4": t4,
              "table1": {"Ours (AlexNet (tuned))": _va_row(0.30, 0.20, 0.50, 0.30),
                         "Ours (ResNet18)": _va_row(0.20, 0.10, 0.60, 0.80)},
              "table2": {"no critic (AlexNet (tuned))": _va_row(0.6, 0.2, 0.1, 0.3),
                         "Ours (AlexNet (tuned))": {"status": "nc", "nc_seeds": 1},
                         "Static: (Kossaifi et al. 2017)": _va_row(0.1, 0.1, 0.1, 0.1)},
              "table3": {"Ours (AlexNet (tuned))": _va_row(0.25, 0.35, 0.45, 0.55)},
              "person_independence": {
                  "CAF w/ Delta: gap (unseen - seen)": _va_row(0.10, 0.05, -0.2, -0.1),
                  "CAF w/ Delta: unseen subjects": {"subject_1nn": 0.5, "subject_1nn_std": 0.1},
                  "CAF w/ Delta, pull 0.25 (ours): gap (unseen - seen)": _va_row(0.02, 0.04, 0.0, 0.0),
                  "CAF w/ Delta, pull 0.25 (ours): unseen subjects": {"rmse_v": 0.1},
                  "no critic: unseen subjects": {"subject_1nn": 0.25}}}
    health = {"CAF w/ Delta": {"lambda_max of encoder features (held out)": 3.0, "collapse threshold 2w": 2.0,
                               "active ReLU fraction": 0.5, "output std (mean over dims)": 0.2,
                               "cross / within-strong distance": 1.5},
              "no critic": {"lambda_max of encoder features (held out)": 1.25, "collapse threshold 2w": 2.0},
              "FisherGAN": {"lambda_max of encoder features (held out)": float("nan"),
                            "collapse threshold 2w": 2.0, "active ReLU fraction": float("inf"),
                            "output std (mean over dims)": 0.125}}
    return tables, health


def test_summary_numbers_from_hand_built_tables():
    tables, health = _summary_inputs()
    cfg = SimpleNamespace(hp={"pull_weight": 0.25}, scale="small")
    out, _ = caf.summary_and_verdicts(cfg, tables, health)
    want = {"none_rmse_unseen": 0.35, "none_ccc_unseen": 0.40,
            "caf_delta_rmse_unseen": 0.25, "caf_delta_ccc_unseen": 0.40,
            "caf_kappa_rmse_unseen": 0.20, "caf_kappa_ccc_unseen": 0.10,
            "caf_linear_rmse_unseen": 0.20, "caf_linear_ccc_unseen": 0.30,
            "caf_pull_rmse_unseen": 0.40, "caf_pull_ccc_unseen": 0.50,
            "caf_delta_rmse_gap": 0.075, "caf_delta_subject_1nn": 0.5,
            "caf_pull_rmse_gap": 0.03, "none_subject_1nn": 0.25,
            "table1_caf_alexnet_rmse": 0.25, "table1_caf_alexnet_ccc": 0.40,
            "table1_caf_resnet18_rmse": 0.15, "table1_caf_resnet18_ccc": 0.70,
            "table2_none_alexnet_rmse": 0.40, "table2_none_alexnet_ccc": 0.20,
            "table3_caf_alexnet_rmse": 0.30, "table3_caf_alexnet_ccc": 0.50,
            "caf_delta_feature_lambda_max": 3.0, "caf_delta_critic_active_fraction": 0.5,
            "caf_delta_critic_output_std": 0.2, "none_feature_lambda_max": 1.25,
            "fisher_critic_output_std": 0.125}          # FisherGAN's nan / inf dropped, its finite std kept
    assert out == pytest.approx(want, abs=1e-12)
    assert set(out) == set(want) and all(type(v) is float for v in out.values())


_A = "(unseen subjects)"
_WANT_LINES = [
    f"CAF w/ Delta beats no critic on mean RMSE {_A}: 0.250 vs 0.350",
    f"CAF w/ Delta does NOT beat no critic on mean CCC {_A}: 0.400 vs 0.400",
    "CAF w/ Delta vs FisherGAN on RMSE: FisherGAN did not converge (nc)",
    "CAF w/ Delta vs FisherGAN on CCC: FisherGAN did not converge (nc)",
    "CAF w/ Delta vs GramNet on RMSE: not run at this scale",
    "CAF w/ Delta vs GramNet on CCC: not run at this scale",
    f"CAF w/ Delta, pull 0.25 (ours) does NOT beat no critic on mean RMSE {_A}: 0.400 vs 0.350",
    f"CAF w/ Delta, pull 0.25 (ours) beats no critic on mean CCC {_A}: 0.500 vs 0.400",
    "CAF w/ Delta, pull 0.25 (ours) vs FisherGAN on RMSE: FisherGAN did not converge (nc)",
    "CAF w/ Delta, pull 0.25 (ours) vs FisherGAN on CCC: FisherGAN did not converge (nc)",
    "CAF w/ Delta, pull 0.25 (ours) vs GramNet on RMSE: not run at this scale",
    "CAF w/ Delta, pull 0.25 (ours) vs GramNet on CCC: not run at this scale",
]


def test_verdict_lines_beats_tie_nc_and_not_run():
    tables, health = _summary_inputs()
    _, lines = caf.summary_and_verdicts(SimpleNamespace(hp={"pull_weight": 0.25}, scale="small"), tables, health)
    assert lines == _WANT_LINES
    _, smoke = caf.summary_and_verdicts(SimpleNamespace(hp={"pull_weight": 0.25}, scale="smoke"), tables, health)
    assert smoke == ["[smoke run: a pipeline check, not a finding; read the recorded run] " + x for x in _WANT_LINES]


def test_verdicts_when_our_own_row_did_not_converge_and_a_beaten_ccc():
    t4 = {"no critic (AlexNet (tuned))": _va_row(0.2, 0.2, 0.2, 0.2),
          "CAF w/ Delta (AlexNet (tuned))": {"status": "nc", "nc_seeds": 2},
          "CAF w/ Delta, pull 0.5 (ours) (AlexNet (tuned))": _va_row(0.1, 0.1, 0.1, 0.1)}
    out, lines = caf.summary_and_verdicts(SimpleNamespace(hp={"pull_weight": 0.5}, scale="small"), {"table4": t4}, {})
    assert out == pytest.approx({"none_rmse_unseen": 0.2, "none_ccc_unseen": 0.2,
                                 "caf_pull_rmse_unseen": 0.1, "caf_pull_ccc_unseen": 0.1}, abs=1e-12)
    assert lines[0] == "CAF w/ Delta vs no critic on RMSE: CAF w/ Delta did not converge (nc)"
    assert lines[6] == f"CAF w/ Delta, pull 0.5 (ours) beats no critic on mean RMSE {_A}: 0.100 vs 0.200"
    assert lines[7] == f"CAF w/ Delta, pull 0.5 (ours) does NOT beat no critic on mean CCC {_A}: 0.100 vs 0.200"


def test_encoder_features_are_the_encoder_outputs_with_label_keys():
    ds = _pixels([[10, 20], [30, 40], [50, 60]], va=torch.zeros(3, 2), subject=[7, 8, 9])
    out = caf.encoder_features(_FlatNet(2.0), ds, keys=("subject",))
    assert set(out) == {"output", "subject"}
    assert torch.allclose(out["output"], torch.tensor([[10., 20.], [30., 40.], [50., 60.]]) * 2 / 255)
    assert out["subject"].tolist() == [7, 8, 9]
    assert set(caf.encoder_features(_FlatNet(), ds)) == {"output", "va"}   # default keys: va


def test_subject_1nn_is_leave_one_out_cosine_nearest_neighbour():
    # cosine 1-NN: A->B (ok), B->A (ok), C->B (wrong), D->C (ok) = 3/4; Euclidean 1-NN would give 1/4,
    # counting each sample as its own neighbour 1
    ds = _pixels([[10, 0], [200, 10], [12, 6], [0, 100]], subject=[0, 0, 1, 1])
    assert caf.subject_1nn(_FlatNet(), ds) == 0.75
    ds = _pixels([[10, 0], [0, 10], [11, 1], [1, 12]], subject=[3, 4, 3, 4])
    assert caf.subject_1nn(_FlatNet(), ds) == 1.0
    ds = _pixels([[10, 0], [0, 10], [11, 1], [1, 12]], subject=[3, 3, 4, 4])
    assert caf.subject_1nn(_FlatNet(), ds) == 0.0


def _trace_set(subjects, seq=None):
    n = len(subjects)
    va = torch.linspace(-0.9, 0.9, 2 * n).view(n, 2)
    labels = {"va": va, "subject": torch.tensor(subjects)}
    if seq is not None:
        labels["sequence"] = torch.tensor(seq)
    return FaceArrays(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), labels)


def test_plot_trace_one_held_out_subject_truth_and_both_models():
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    te = _trace_set([7, 7, 9, 7, 9])
    first = [0, 1, 3]
    preds = {("trace", "caf_delta"): torch.arange(10.).view(5, 2) / 10,
             ("trace", "none"): -torch.arange(10.).view(5, 2) / 20,
             ("stills", "none"): torch.ones(5, 2)}
    fig = caf.plot_trace({"trace": (None, None, te)}, preds, pull_weight=0.25)
    try:
        assert tuple(fig.get_size_inches()) == (8.0, 4.5)
        axes = fig.axes
        assert len(axes) == 2 and fig._suptitle.get_text() == "held-out subject 7 (never seen in training)"
        assert [a.get_ylabel() for a in axes] == ["valence", "arousal"] and axes[1].get_xlabel() == "frame"
        assert all(a.get_ylim() == (-1.1, 1.1) for a in axes)
        for j, ax in enumerate(axes):
            lines = ax.get_lines()
            assert [ln.get_label() for ln in lines] == ["ground truth", "CAF w/ Delta", "no critic"]
            assert [ln.get_linewidth() for ln in lines] == [1.5, 1, 1]
            assert all(same_color(ln.get_color(), c) for ln, c in zip(lines, ("k", "tab:red", "tab:blue")))
            assert torch.allclose(torch.as_tensor(lines[0].get_ydata()), te.labels["va"][first, j])
            assert torch.allclose(torch.as_tensor(lines[1].get_ydata()), preds[("trace", "caf_delta")][first, j])
            assert torch.allclose(torch.as_tensor(lines[2].get_ydata()), preds[("trace", "none")][first, j])
        assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["ground truth", "CAF w/ Delta",
                                                                             "no critic"]
    finally:
        plt.close(fig)


def test_plot_trace_by_sequence_without_subject_ids_and_a_missing_model():
    import matplotlib.pyplot as plt

    te = _trace_set([-1, -1, -1, -1], seq=[4, 5, 4, 5])
    fig = caf.plot_trace({"trace": (None, None, te)}, {("trace", "none"): torch.zeros(4, 2)})
    try:
        assert fig._suptitle.get_text() == "held-out sequence 4 (never seen in training)"
        for ax in fig.axes:
            assert [ln.get_label() for ln in ax.get_lines()] == ["ground truth", "no critic"]
            assert len(ax.get_lines()[0].get_ydata()) == 2
    finally:
        plt.close(fig)


def test_plot_latent_four_panels_strong_weak_and_by_person():
    import matplotlib.pyplot as plt

    from fer_nb import caf_grouping

    n = 403                                   # capped at the first 400 unseen stills
    g = torch.Generator().manual_seed(0)
    px = torch.randint(0, 256, (n, 2), generator=g)
    va = torch.rand(n, 2, generator=g) * 2 - 1
    unseen = _pixels(px.tolist(), va=va, subject=torch.arange(n) % 3 + 1000)
    models = {("stills", "none"): _FlatNet(1.0), ("stills", "caf_delta"): _FlatNet(-2.0)}
    cfg = SimpleNamespace(hp={"pull_weight": 0.25, "tsne": False})
    fig = caf.plot_latent(cfg, {"stills": (None, None, unseen)}, models)
    try:
        axes = fig.axes
        assert len(axes) == 4
        assert [a.get_title() for a in axes] == ["no critic: strong / weak", "CAF w/ Delta: strong / weak",
                                                 "no critic: by person (unseen subjects)",
                                                 "CAF w/ Delta: by person (unseen subjects)"]
        strong = caf_grouping.group(va[:400], "otsu")
        for col, k in enumerate((1.0, -2.0)):
            pts = px[:400].float() / 255 * k
            top, bottom = axes[col], axes[2 + col]
            assert [t.get_text() for t in top.get_legend().get_texts()] == ["weak", "strong"]
            assert [t.get_text() for t in bottom.get_legend().get_texts()] == ["0", "1", "2"]
            weak_pts, strong_pts = (torch.as_tensor(c.get_offsets().data).float() for c in top.collections)
            assert torch.allclose(weak_pts, pts[~strong], atol=1e-5)
            assert torch.allclose(strong_pts, pts[strong], atol=1e-5)
            for i, c in enumerate(bottom.collections):
                assert torch.allclose(torch.as_tensor(c.get_offsets().data).float(), pts[i::3], atol=1e-5)
    finally:
        plt.close(fig)
    no_subject = _pixels(px[:6].tolist(), va=va[:6])
    fig = caf.plot_latent(cfg, {"stills": (None, None, no_subject)}, models)
    try:
        assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["0"]
    finally:
        plt.close(fig)


def _stills(n, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    va = torch.rand(n, 2, generator=g) * 0.2 - 0.1                    # weak: near the centre
    va[::2] += torch.tensor([0.7, -0.6])                                # every other sample strong
    return FaceArrays(img, {"va": va, "subject": torch.arange(n) % 3})


def test_critic_health_lambda_max_threshold_and_critic_statistics_by_hand():
    # 13 images: halves of 6 (>= 2 per group), the last image unused
    tr, seen, unseen = _stills(13, 1), _stills(8, 2), _stills(6, 3)
    hp = {"width": 0.25, "pool_size": 2, "grouping": "otsu", "pull_weight": 0.25}
    torch.manual_seed(0)
    models = {("stills", "none"): caf.make_model("alexnet", 3, hp, False, torch.device("cpu")),
              ("stills", "caf_pull"): caf.make_model("alexnet", 3, hp, True, torch.device("cpu")),
              ("trace", "caf_delta"): caf.make_model("alexnet", 3, hp, True, torch.device("cpu"))}
    cfg = SimpleNamespace(hp=hp, device=torch.device("cpu"))
    health = caf.critic_health(cfg, {"stills": (tr, seen, unseen)}, models)
    assert list(health) == ["no critic", "CAF w/ Delta, pull 0.25 (ours)"]
    assert set(health["no critic"]) == {"lambda_max of encoder features (held out)", "collapse threshold 2w"}
    assert health["no critic"]["collapse threshold 2w"] == 2.0
    h = health["CAF w/ Delta, pull 0.25 (ours)"]
    assert set(h) == {"lambda_max of encoder features (held out)", "collapse threshold 2w", "active ReLU fraction",
                      "output std (mean over dims)", "cross / within-strong distance"}
    assert h["collapse threshold 2w"] == 0.5
    x = tr.images.float() / 255
    strong = caf.grouping_masks(tr.labels["va"], "otsu")[0]
    for critic, name in (("none", "no critic"), ("caf_pull", "CAF w/ Delta, pull 0.25 (ours)")):
        m = models[("stills", critic)]
        with torch.no_grad():
            f = m.encoder(x).double()
        fit = (f[:6], caf.grouping_masks(tr.labels["va"][:6], "otsu")[0])
        val = (f[6:12], caf.grouping_masks(tr.labels["va"][6:12], "otsu")[0])
        want = float(collapse_eigenvalue(*fit, ridge=0.1, validate=val))
        assert health[name]["lambda_max of encoder features (held out)"] == pytest.approx(want, rel=1e-6)
    m = models[("stills", "caf_pull")]
    with torch.no_grad():
        f = m.encoder(x)
        pre = m.critic.net[1](m.critic.net[0](f))
        z = m.critic(f).double()
    assert h["active ReLU fraction"] == pytest.approx(float((pre > 0).float().mean()), rel=1e-6)
    assert 0 < h["active ReLU fraction"] < 1
    assert h["output std (mean over dims)"] == pytest.approx(float(z.std(0).mean()), rel=1e-6)
    s, w = strong.nonzero().flatten().tolist(), (~strong).nonzero().flatten().tolist()
    assert s and w
    d2 = lambda i, j: float(((z[i] - z[j]) ** 2).sum())  # noqa: E731
    cross = statistics.mean(d2(i, j) for i in s for j in w)
    within = statistics.mean(d2(i, j) for i in s for j in s)
    assert h["cross / within-strong distance"] == pytest.approx(cross / within, rel=1e-5)


# ------------------------------------------------------------------- pieces, data, orchestration


def test_make_critic_loss_each_row_and_the_pull_weight_default():
    from fer_nb.losses.fisher_ipm import FisherIPMLoss
    from fer_nb.losses.mmd_critic import MMDCriticLoss

    assert caf.make_critic_loss("none") is None
    fisher = caf.make_critic_loss("fisher", rho=0.5)
    assert isinstance(fisher, FisherIPMLoss) and fisher.rho == 0.5
    assert [caf.make_critic_loss(k).kind for k in ("gramnet", "mmd")] == ["gramnet", "mmd"]
    assert all(isinstance(caf.make_critic_loss(k), MMDCriticLoss) for k in ("gramnet", "mmd"))
    for kind, margin in (("caf_delta", "delta"), ("caf_kappa", "constant"), ("caf_linear", "linear"),
                         ("caf_pull", "delta")):
        loss = caf.make_critic_loss(kind, pull_weight=0.75)
        assert isinstance(loss, CAFCriticLoss) and loss.margin == margin and loss.kappa == 0.2
        assert loss.positive_weight == (0.75 if kind == "caf_pull" else 1.0)
    assert caf.make_critic_loss("caf_pull").positive_weight == 0.25      # the preset's pull weight


def test_grouping_masks_dispatch_otsu_kmeans_and_code():
    from fer_nb import caf_grouping

    g = torch.Generator().manual_seed(3)
    va = torch.rand(32, 2, generator=g) * 2 - 1
    s, w = caf.grouping_masks(va)
    assert torch.equal(s, caf_grouping.group(va, "otsu")) and torch.equal(w, ~s)
    s, w = caf.grouping_masks(va, "kmeans3")
    assert torch.equal(s, caf_grouping.group(va, "kmeans", k=3)) and torch.equal(w, ~s)
    s, w = caf.grouping_masks(va, "code")
    want_s, want_w = caf_grouping.group_code(va)
    assert torch.equal(s, want_s) and torch.equal(w, want_w)
    assert int(s.sum()) == int(w.sum()) and not bool((s & w).any())


def test_n_subjects_counts_known_ids_only():
    assert caf.n_subjects(_pixels([[1], [2], [3], [4]], subject=[5, 5, 9, -1])) == 2
    assert caf.n_subjects(_pixels([[1], [2]], subject=[-1, -1])) == 0
    assert caf.n_subjects(_pixels([[1], [2]], va=torch.zeros(2, 2))) == 0


def test_split_seen_names_sizes_and_disjoint_seeded_split():
    ds = FaceArrays(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), {"subject": torch.arange(10)}, name="pool")
    tr, seen = caf.split_seen(ds, 3)
    assert (tr.name, seen.name) == ("pool/train", "pool/seen-test") and (len(tr), len(seen)) == (7, 3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert seen.labels["subject"].tolist() == perm[:3].tolist() and tr.labels["subject"].tolist() == perm[3:].tolist()


def test_prep_eval_resizes_only_when_the_side_differs():
    x = torch.rand(2, 4, 8, 8)
    m = _FlatNet()
    assert caf._prep_eval(m, x) is x                       # no resize attribute: as given
    m.resize = 8
    assert caf._prep_eval(m, x) is x
    m.resize = 4                                          # == the channel count: still resized to 4 x 4
    out = caf._prep_eval(m, x)
    assert out.shape == (2, 4, 4, 4)
    assert torch.allclose(out, torch.nn.functional.interpolate(x, size=4, mode="bilinear", antialias=True,
                                                               align_corners=False))


def test_prep_resizes_for_the_encoder_only_when_asked():
    model, steps, x, va = _setup(size=64, n=2)
    assert steps.prep(x) is x
    steps.resize = 32
    out = steps.prep(x)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, torch.nn.functional.interpolate(x, size=32, mode="bilinear", antialias=True,
                                                               align_corners=False))


def test_cycled_batches_draws_only_the_permutations_it_needs():
    n, bs, steps = 10, 4, 6                         # 24 indices: ceil(24 / 10) = 3 permutations
    ds = FaceArrays(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), {"va": torch.arange(2. * n).view(n, 2)})
    g = torch.Generator().manual_seed(5)
    batches = list(caf.cycled_batches(ds, bs, steps, g))
    ref = torch.Generator().manual_seed(5)
    perms = torch.cat([torch.randperm(n, generator=ref) for _ in range(3)])[:24].view(6, 4)
    assert torch.equal(g.get_state(), ref.get_state())
    assert len(batches) == 6 and set(batches[0]) == {"image", "va"}
    for b, idx in zip(batches, perms):
        assert torch.equal(b["image"].flatten(), idx.float() / 255)
        assert torch.equal(b["va"], ds.labels["va"][idx])


class _PredNet(torch.nn.Module):
    """Predicts ``(pixel 0, const)``: its arousal output is constant."""

    def __init__(self):
        super().__init__()
        self.encoder = _Scale()

    def forward(self, x):
        f = x.flatten(1)
        return torch.stack([f[:, 0], torch.full_like(f[:, 0], 0.25)], 1)


def test_evaluate_global_metrics_and_nc_when_one_dimension_is_constant():
    from fer_nb import metrics

    va = torch.tensor([[0.1, 0.2], [0.5, -0.3], [0.9, 0.4], [0.2, 0.0]])
    ds = _pixels([[0], [128], [255], [64]], va=va)
    row, nc, pred = caf.evaluate(_PredNet(), ds)
    want_pred = torch.stack([torch.tensor([0., 128., 255., 64.]) / 255, torch.full((4,), 0.25)], 1)
    assert torch.allclose(pred, want_pred) and nc is True
    mm = metrics.va_metrics(want_pred, va)
    assert list(row) == ["rmse_v", "rmse_a", "sagr_v", "sagr_a", "pcc_v", "pcc_a", "ccc_v", "ccc_a"]
    for k, v in row.items():
        full = {"v": "valence", "a": "arousal"}[k[-1]]
        assert v == pytest.approx(mm[f"{k[:-2]}_{full}"], nan_ok=True)
    assert row["rmse_v"] == pytest.approx(math.sqrt(float(((want_pred[:, 0] - va[:, 0]) ** 2).mean())))
    net = _FlatNet()
    net.forward = lambda x: x.flatten(1)[:, :2]
    _, nc, _ = caf.evaluate(net, _pixels([[0, 255], [128, 0], [255, 64], [64, 32]], va=va))
    assert nc is False


def test_summarise_mean_std_over_seeds_and_nc_rows():
    runs = {("table4", "A"): [{"rmse_v": 0.2}, {"rmse_v": 0.4}],
            ("table4", "B"): [{"rmse_v": 0.1}, {"rmse_v": 0.3}],
            ("table1", "C"): [{"rmse_v": 0.5}]}
    nc = {("table4", "A"): 1, ("table4", "B"): 2}
    out = caf.summarise(runs, nc)
    assert list(out) == ["table4", "table1"] and list(out["table4"]) == ["A", "B"]
    assert out["table4"]["A"] == pytest.approx({"rmse_v": 0.3, "rmse_v_std": math.sqrt(0.02), "nc_seeds": 1,
                                                "n_seeds": 2})
    assert out["table4"]["B"] == {"status": "nc", "nc_seeds": 2}
    assert out["table1"]["C"] == {"rmse_v": 0.5, "rmse_v_std": 0.0, "nc_seeds": 0, "n_seeds": 1}


def test_build_data_synthfacs_analogues_seeds_sizes_and_subjects(synth_cfg):
    from fer_nb.data import synthfacs
    from fer_nb.data.schema import concat

    cfg = synth_cfg
    data = caf.build_data(cfg)
    assert list(data) == ["stills", "sequences", "trace"]
    wild = dict(domain="wild", image_size=32, wild_severity=0.25, device=torch.device("cpu"))
    pool = synthfacs.generate(8, seed=11, n_subjects=2, subject_offset=0, **wild)
    want = {"stills": (*caf.split_seen(pool, 2),
                       synthfacs.generate(3, seed=12, n_subjects=2, subject_offset=1000, **wild)),
            "sequences": (synthfacs.generate_sequences(2, frames=2, seed=13, n_subjects=2, subject_offset=0, **wild),
                          None,
                          synthfacs.generate_sequences(1, frames=2, seed=14, n_subjects=2, subject_offset=1000,
                                                       **wild)),
            "trace": (concat([synthfacs.generate_trace(3, seed=20, subject=0, **wild)]),
                      None,
                      concat([synthfacs.generate_trace(2, seed=40 + s, subject=2000 + s, **wild) for s in range(2)]))}
    for kind, parts in want.items():
        for got, ref in zip(data[kind], parts):
            assert (got is None) == (ref is None), kind
            if ref is None:
                continue
            assert torch.equal(got.images, ref.images), kind
            assert set(got.labels) == set(ref.labels) and all(torch.equal(got.labels[k], ref.labels[k])
                                                              for k in ref.labels), kind
    tr, seen, unseen = data["stills"]
    assert (len(tr), len(seen), len(unseen)) == (6, 2, 3) and tr.images.shape[1:] == (3, 32, 32)
    assert set(unseen.labels["subject"].tolist()) <= {1000, 1001} and set(tr.labels["subject"].tolist()) <= {0, 1}
    assert (data["trace"][0].name, data["trace"][2].name) == ("traces/train", "traces/test")
    assert data["trace"][0].labels["subject"].tolist() == [0, 0, 0]
    assert data["trace"][2].labels["subject"].tolist() == [2000, 2000, 2001, 2001]
    assert (data["trace"][2].labels["domain"] == 1).all() and (tr.labels["domain"] == 1).all()   # "wild"
    assert len(data["sequences"][0]) == 4 and len(data["sequences"][2]) == 2


_TRAIN_HP = dict(batch_size=4, epochs=3, lr_decay_every=2, lr_decay=0.5, pull_weight=0.5, adv_weight=0.1,
                 av_weight=0.3, step_order="code", lr=0.002, beta1=0.4, beta2=0.8, rho=0.01, resnet_batch_size=6,
                 resnet_image_size=32, n_train=6, n_seen_test=2, n_test=3, n_subjects=2, n_test_subjects=2,
                 n_sequences=2, n_test_sequences=1, frames=2, trace_subjects=1, trace_frames=3, test_trace_frames=2,
                 wild_severity=0.25, image_size=32)


@pytest.fixture(scope="module")
def synth_cfg(tmp_path_factory):
    """One small SynthFACS config (resolving one computes the code fingerprint: ~1 s)."""
    return config.resolve("caf", "smoke", device="cpu", out_dir=str(tmp_path_factory.mktemp("caf") / "run"),
                          **_TRAIN_HP)


def _capture_fit(monkeypatch):
    from fer_nb import train

    got = {}

    def fake(path, rh, **kw):
        got.update(path=path, rh=rh, **kw)
        return {"train/av": [0.5]}

    monkeypatch.setattr(train, "fit_or_load", fake)
    return got


def test_train_caf_hands_fit_or_load_the_run_it_describes(synth_cfg, monkeypatch):
    from fer_nb import train
    from fer_nb.seed import seed_everything

    got = _capture_fit(monkeypatch)
    cfg = synth_cfg
    data = _stills(10, 4)
    model, hist = caf.train_caf(cfg, "stills", data, "alexnet", "caf_pull", 2)
    assert hist == {"train/av": [0.5]} and model.resize is None
    rh = cfg.run_hash(tag="stills", encoder="alexnet", critic="caf_pull", seed=2, grouping="otsu", n=10)
    assert got["rh"] == rh and got["path"] == train.checkpoint_path(cfg.out_dir, "stills-alexnet-caf_pull-otsu-s2", rh)
    assert got["modules"] == {"model": model}
    assert (got["steps_per_epoch"], got["epochs"]) == (2, 3)              # 10 // 4 steps, `epochs` passes
    assert got["desc"] == "stills AlexNet (tuned) CAF w/ Delta, pull 0.5 (ours) s2"
    steps = got["train_step"].__self__
    assert isinstance(steps, caf.CAFSteps) and steps.model is model
    assert (steps.adv_weight, steps.step_order, steps.grouping, steps.resize) == (0.1, "code", "otsu", None)
    assert isinstance(steps.closs, CAFCriticLoss) and steps.closs.positive_weight == 0.5
    assert steps.av_loss.weight == 0.3
    assert got["optimizers"] is steps.opts and set(steps.opts) == {"enc", "reg", "critic"}
    for opt in steps.opts.values():
        assert opt.param_groups[0]["betas"] == (0.4, 0.8)
    assert set(got["schedulers"]) == {"enc", "reg", "critic"}
    for k, sch in got["schedulers"].items():
        assert sch.optimizer is steps.opts[k] and (sch.step_size, sch.gamma) == (2, 0.5)
        assert sch.get_last_lr() == [0.002]
    seed_everything(2)
    ref = caf.make_model("alexnet", 3, cfg.hp, True, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    batches = list(got["train_batches"](1))                               # shuffled with seed 1000 * seed + epoch
    want = list(data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(2001), drop_last=True))
    assert len(batches) == 2 and all(torch.equal(a["image"], b["image"]) and torch.equal(a["va"], b["va"])
                                     for a, b in zip(batches, want))


def test_train_caf_fisher_checkpoints_its_multiplier_and_grouping_override(synth_cfg, monkeypatch):
    from fer_nb.losses.fisher_ipm import FisherIPMLoss

    got = _capture_fit(monkeypatch)
    cfg = synth_cfg
    model, _ = caf.train_caf(cfg, "stills", _stills(10, 4), "alexnet", "fisher", 0, grouping="kmeans3")
    steps = got["train_step"].__self__
    assert isinstance(steps.closs, FisherIPMLoss) and steps.closs.rho == 0.01
    assert got["modules"] == {"model": model, "fisher": steps.closs}
    assert steps.grouping == "kmeans3" and got["path"].name.startswith("stills-alexnet-fisher-kmeans3-s0-")
    assert got["rh"] == cfg.run_hash(tag="stills", encoder="alexnet", critic="fisher", seed=0, grouping="kmeans3", n=10)
    caf.train_caf(cfg, "stills", _stills(10, 4), "alexnet", "none", 0)
    assert got["modules"] == {"model": got["train_step"].__self__.model}
    assert set(got["optimizers"]) == {"enc", "reg"} and got["train_step"].__self__.closs is None


def test_train_caf_resnet18_resizes_and_takes_its_own_batch_size(synth_cfg, monkeypatch):
    got = _capture_fit(monkeypatch)
    cfg = synth_cfg
    model, _ = caf.train_caf(cfg, "trace", _stills(13, 4), "resnet18", "none", 1)
    assert model.resize == 32 and got["train_step"].__self__.resize == 32
    assert got["steps_per_epoch"] == 2 and got["desc"] == "trace ResNet18 no critic s1"
    assert [len(b["va"]) for b in got["train_batches"](0)] == [6, 6]


def test_train_caf_real_data_cycles_batches_on_the_iteration_schedule(synth_cfg, monkeypatch):
    got = _capture_fit(monkeypatch)
    cfg = SimpleNamespace(dataset="affectnet", hp={**synth_cfg.hp, "iterations": 12, "iters_per_epoch": 3,
                                                   "lr_decay_iters": 6},
                          device=synth_cfg.device, out_dir=synth_cfg.out_dir, run_hash=synth_cfg.run_hash)
    data = _stills(5, 4)
    caf.train_caf(cfg, "stills", data, "alexnet", "caf_delta", 1)
    assert (got["steps_per_epoch"], got["epochs"]) == (3, 4)
    assert all(s.step_size == 2 for s in got["schedulers"].values())
    batches = list(got["train_batches"](2))
    want = list(caf.cycled_batches(data, 4, 3, torch.Generator().manual_seed(1002)))
    assert len(batches) == 3 and all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, want))


class _RunNet(torch.nn.Module):
    """A 'trained' model of the fake train_caf: prediction ``k * (pixel 0, pixel 1) + b`` (``k = 0``: constant)."""

    def __init__(self, k, b):
        super().__init__()
        self.k, self.b = k, b
        self.encoder = _Scale(1.0 + k)

    def forward(self, x):
        return x.flatten(1)[:, :2] * self.k + self.b


def _fake_training(monkeypatch):
    calls, made = [], {}

    def fake_train_caf(cfg, tag, data, encoder, critic, seed, grouping=None):
        key = (tag, encoder, critic, seed, grouping, len(data))
        calls.append(key)
        k = 0.0 if (critic, seed, encoder) == ("none", 1, "alexnet") else 0.1 * (len(calls) % 7 + 1)
        made[key] = model = _RunNet(k, 0.01 * len(calls))
        return model, {"run": key}

    monkeypatch.setattr(caf, "train_caf", fake_train_caf)
    return calls, made


def _run_data(subjects=True):
    g = torch.Generator().manual_seed(9)

    def ds(n):
        labels = {"va": torch.rand(n, 2, generator=g) * 2 - 1}
        if subjects:
            labels["subject"] = torch.arange(n) % 2 + 1000
        return FaceArrays(torch.randint(0, 256, (n, 1, 1, 2), generator=g, dtype=torch.uint8), labels)

    return {"stills": (ds(6), ds(4), ds(5)), "sequences": (ds(4), None, ds(3)), "trace": (ds(3), None, ds(4))}


def test_run_experiments_which_runs_and_where_each_result_goes(monkeypatch):
    calls, made = _fake_training(monkeypatch)
    data = _run_data()
    hp = {"ablation": ["none", "caf_delta", "caf_pull"], "pull_weight": 0.25, "grouping_runs": ["code"],
          "resnet18": True, "resnet_seeds": 1, "resnet_tables": ["table1", "table2"]}
    r = caf.run_experiments(SimpleNamespace(hp=hp, seeds=[0, 1]), data)
    a, n = "alexnet", None
    s0 = [("stills", a, "none", 0, n, 6), ("stills", a, "caf_delta", 0, n, 6), ("stills", a, "caf_pull", 0, n, 6),
          ("stills", a, "caf_delta", 0, "code", 6), ("stills", "resnet18", "caf_delta", 0, n, 6),
          ("sequences", a, "none", 0, n, 4), ("sequences", a, "caf_delta", 0, n, 4),
          ("sequences", "resnet18", "none", 0, n, 4), ("sequences", "resnet18", "caf_delta", 0, n, 4),
          ("trace", a, "none", 0, n, 3), ("trace", a, "caf_delta", 0, n, 3)]
    s1 = [("stills", a, "none", 1, n, 6), ("stills", a, "caf_delta", 1, n, 6), ("stills", a, "caf_pull", 1, n, 6),
          ("stills", a, "caf_delta", 1, "code", 6),
          ("sequences", a, "none", 1, n, 4), ("sequences", a, "caf_delta", 1, n, 4),
          ("trace", a, "none", 1, n, 3), ("trace", a, "caf_delta", 1, n, 3)]
    assert calls == s0 + s1
    tr, seen, unseen = data["stills"]
    ev = lambda key, ds: caf.evaluate(made[key], ds)  # noqa: E731
    alex, res = " (AlexNet (tuned))", " (ResNet18)"
    where = {("table4", "no critic" + alex): ("stills", a, "none", None, unseen),
             ("table4", "CAF w/ Delta" + alex): ("stills", a, "caf_delta", None, unseen),
             ("table1", "Ours" + alex): ("stills", a, "caf_delta", None, unseen),
             ("table4", "CAF w/ Delta, pull 0.25 (ours)" + alex): ("stills", a, "caf_pull", None, unseen),
             ("grouping", "CAF w/ Delta, code grouping"): ("stills", a, "caf_delta", "code", unseen),
             ("table4", "CAF w/ Delta" + res): ("stills", "resnet18", "caf_delta", None, unseen),
             ("table1", "Ours" + res): ("stills", "resnet18", "caf_delta", None, unseen),
             ("table2", "no critic" + alex): ("sequences", a, "none", None, data["sequences"][2]),
             ("table2", "Ours" + alex): ("sequences", a, "caf_delta", None, data["sequences"][2]),
             ("table2", "no critic" + res): ("sequences", "resnet18", "none", None, data["sequences"][2]),
             ("table2", "Ours" + res): ("sequences", "resnet18", "caf_delta", None, data["sequences"][2]),
             ("table3", "no critic" + alex): ("trace", a, "none", None, data["trace"][2]),
             ("table3", "Ours" + alex): ("trace", a, "caf_delta", None, data["trace"][2])}
    assert list(r.runs) == list(where)
    for key, (tag, enc, critic, grouping, ds) in where.items():
        seeds = [0] if enc == "resnet18" else [0, 1]
        want = [ev((tag, enc, critic, s, grouping, len(data[tag][0])), ds)[0] for s in seeds]
        assert r.runs[key] == want, key
    assert r.nc == {k: int(k[0] in ("table4", "table2", "table3") and k[1] == "no critic" + alex) for k in where}
    names = {"none": "no critic", "caf_delta": "CAF w/ Delta", "caf_pull": "CAF w/ Delta, pull 0.25 (ours)"}
    assert list(r.person) == [(nm, w) for nm in names.values() for w in ("unseen subjects", "seen subjects")]
    for critic, nm in names.items():
        keys = [("stills", a, critic, s, None, 6) for s in (0, 1)]
        assert r.person[(nm, "unseen subjects")] == [ev(k, unseen)[0] for k in keys]
        assert r.person[(nm, "seen subjects")] == [ev(k, seen)[0] for k in keys]
        assert r.ident[nm] == [caf.subject_1nn(made[k], unseen) for k in keys]
        for s in (0, 1):
            assert r.hist[(nm + alex, s)] == {"run": ("stills", a, critic, s, None, 6)}
    assert list(r.hist) == [(nm + alex, s) for s in (0, 1) for nm in names.values()]
    first = {("stills", c): ("stills", a, c, 0, None, 6) for c in names} | \
        {(kind, c): (kind, a, c, 0, None, len(data[kind][0]))
         for kind in ("sequences", "trace") for c in ("none", "caf_delta")}
    assert list(r.models) == list(first) and list(r.preds) == list(first)
    for key, call in first.items():
        assert r.models[key] is made[call]
        assert torch.equal(r.preds[key], ev(call, data[key[0]][2])[2])


def test_run_experiments_resnet_ablation_rows_and_no_identity_probe_without_subjects(monkeypatch):
    calls, made = _fake_training(monkeypatch)
    data = _run_data(subjects=False)
    del data["sequences"]
    hp = {"ablation": ["none", "fisher"], "pull_weight": 0.25, "grouping_runs": [], "resnet18": True,
          "resnet_seeds": 2, "resnet_tables": ["table4", "table1", "table3"]}
    r = caf.run_experiments(SimpleNamespace(hp=hp, seeds=[3]), data)
    a = "alexnet"
    assert calls == [("stills", a, "none", 3, None, 6), ("stills", a, "fisher", 3, None, 6),
                     ("stills", "resnet18", "none", 3, None, 6), ("stills", "resnet18", "fisher", 3, None, 6),
                     ("trace", a, "none", 3, None, 3), ("trace", a, "caf_delta", 3, None, 3),
                     ("trace", "resnet18", "none", 3, None, 3), ("trace", "resnet18", "caf_delta", 3, None, 3)]
    assert list(r.runs) == [("table4", "no critic (AlexNet (tuned))"), ("table4", "FisherGAN (AlexNet (tuned))"),
                            ("table4", "no critic (ResNet18)"), ("table4", "FisherGAN (ResNet18)"),
                            ("table3", "no critic (AlexNet (tuned))"), ("table3", "Ours (AlexNet (tuned))"),
                            ("table3", "no critic (ResNet18)"), ("table3", "Ours (ResNet18)")]
    assert r.ident == {} and set(r.person) == {("no critic", "unseen subjects"), ("no critic", "seen subjects"),
                                               ("FisherGAN", "unseen subjects"), ("FisherGAN", "seen subjects")}
    assert set(r.models) == {("stills", "none"), ("stills", "fisher"), ("trace", "none"), ("trace", "caf_delta")}
    hp["resnet18"] = False
    calls.clear()
    caf.run_experiments(SimpleNamespace(hp=hp, seeds=[3]), {"stills": data["stills"]})
    assert calls == [("stills", a, "none", 3, None, 6), ("stills", a, "fisher", 3, None, 6)]


def test_train_step_logs_stay_on_the_models_device_on_fake_cuda():
    """A skipped step logs a zero on the batch's device (no CPU scalar mixed into CUDA logs)."""
    from fake_cuda import fake_cuda

    with fake_cuda():
        dev = torch.device("cuda")
        torch.manual_seed(0)
        model = caf.make_model("alexnet", 3, {"width": 0.125, "pool_size": 1}, False, dev)
        steps = caf.CAFSteps(model, None, lr=1e-3)
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.rand(4, 3, 64, 64, generator=g).to(dev),
                 "va": (torch.rand(4, 2, generator=g) - 0.5).to(dev)}
        logs = steps.train_step(batch, SimpleNamespace(epoch=0))
        assert {k: v.device.type for k, v in logs.items()} == {"av": "cuda", "critic": "cuda", "adv": "cuda"}


def test_evaluate_and_encoder_features_resize_for_a_resnet_model():
    va = torch.zeros(2, 2)
    img = torch.tensor([[0, 255, 0, 255, 9, 9, 9, 90], [255, 255, 0, 0, 30, 0, 0, 0]], dtype=torch.uint8)
    img = img.view(2, 2, 2, 2)
    ds = FaceArrays(img, {"va": va})
    net = _FlatNet()
    net.forward = lambda x: x.flatten(1)[:, :2]
    net.resize = 1                                        # as train_caf sets it for the ResNet18 rows
    small = torch.nn.functional.interpolate(img.float() / 255, size=1, mode="bilinear", antialias=True,
                                            align_corners=False).flatten(1)
    _, _, pred = caf.evaluate(net, ds)
    assert pred.shape == (2, 2) and torch.allclose(pred, small)
    assert torch.allclose(caf.encoder_features(net, ds)["output"], small)
