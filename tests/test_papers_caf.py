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
