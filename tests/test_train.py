import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fer_nb import train
from fer_nb.io import load_torch

JOB = Path(__file__).parent / "resume_job.py"


def _toy(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)

    def step(batch, ctx):
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss, "progress": torch.tensor(ctx.progress)}

    def batches(epoch):
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        return [(x[perm[i:i + 16]], y[perm[i:i + 16]]) for i in range(0, 64, 16)]

    return model, opt, step, batches


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_history_and_progress():
    model, opt, step, batches = _toy()
    hist = train.fit({"m": model}, {"o": opt}, step, batches, 3, progress=False,
                     evaluate=lambda e: {"val/x": e * 1.0})
    assert [r["epoch"] for r in hist.records] == [1, 2, 3]
    assert hist["val/x"] == [0.0, 1.0, 2.0]
    assert 0 <= hist["train/progress"][0] < hist["train/progress"][-1] < 1
    assert not model.training  # left in eval mode


def test_resume_in_process_equals_uninterrupted(tmp_path):
    model_a, opt_a, step_a, batches_a = _toy()
    train.fit({"m": model_a}, {"o": opt_a}, step_a, batches_a, 4, progress=False)
    ckpt = tmp_path / "c.pt"
    model_b, opt_b, step_b, batches_b = _toy()
    with pytest.raises(KeyboardInterrupt):
        train.fit({"m": model_b}, {"o": opt_b}, step_b, batches_b, 4, checkpoint=ckpt, run_hash="h",
                  progress=False, stop_after_steps=10)  # dies in epoch 3
    assert load_torch(ckpt)["epoch"] == 2
    model_c, opt_c, step_c, batches_c = _toy(seed=99)  # fresh weights: all must come from the checkpoint
    hist = train.fit({"m": model_c}, {"o": opt_c}, step_c, batches_c, 4, checkpoint=ckpt, run_hash="h", progress=False)
    assert hist.resumed_from == 2 and len(hist.records) == 4
    assert torch.equal(_weights(model_a), _weights(model_c))


def test_fit_or_load_skips_finished_run(tmp_path):
    ckpt = tmp_path / "c.pt"
    model, opt, step, batches = _toy()
    train.fit_or_load(ckpt, "h", modules={"m": model}, optimizers={"o": opt}, train_step=step,
                      train_batches=batches, epochs=2, progress=False)
    calls = []
    model2, opt2, _, batches2 = _toy(seed=5)
    hist = train.fit_or_load(ckpt, "h", modules={"m": model2}, optimizers={"o": opt2},
                             train_step=lambda b, c: calls.append(1), train_batches=batches2, epochs=2, progress=False)
    assert calls == [] and len(hist.records) == 2
    assert torch.equal(_weights(model), _weights(model2))


def test_checkpoint_of_another_config_is_refused(tmp_path):
    ckpt = tmp_path / "c.pt"
    model, opt, step, batches = _toy()
    train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt, run_hash="config-A", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train.fit({"m": model}, {"o": opt}, step, batches, 2, checkpoint=ckpt, run_hash="config-B", progress=False)


def test_checkpoint_path_contains_hash(tmp_path):
    p = train.checkpoint_path(tmp_path, "lm loss/seed 0", "abc123")
    assert p.name == "lm_loss_seed_0-abc123.pt" and p.parent.name == "checkpoints"


def test_nan_loss_stops_with_clear_error(tmp_path):
    model, opt, _, batches = _toy()

    def step(batch, ctx):
        return {"loss": torch.tensor(float("nan"))}

    with pytest.raises(train.NonFiniteLossError, match="lower the learning rate"):
        train.fit({"m": model}, {"o": opt}, step, batches, 2, checkpoint=tmp_path / "c.pt", run_hash="h", progress=False)
    assert not (tmp_path / "c.pt").exists()  # nothing written for the NaN epoch


def test_checkpoints_load_weights_only(tmp_path):
    ckpt = tmp_path / "c.pt"
    model, opt, step, batches = _toy()
    train.fit({"m": model}, {"o": opt}, step, batches, 1, checkpoint=ckpt, run_hash="h", progress=False)
    torch.load(ckpt, weights_only=True)  # raises if anything but tensors/containers was pickled


def _run_job(out, ckpt, sleep="0"):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(JOB), str(out), str(ckpt), sleep], env=env)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref.json"
    assert _run_job(ref, tmp_path / "ref.pt").wait(120) == 0
    ckpt = tmp_path / "crash.pt"
    proc = _run_job(tmp_path / "never.json", ckpt, sleep="0.05")  # 8 steps x 0.05 s per epoch
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and load_torch(ckpt)["epoch"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.15)  # well inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (tmp_path / "never.json").exists()
    epoch_at_kill = load_torch(ckpt)["epoch"]
    assert 2 <= epoch_at_kill < 6
    out = tmp_path / "resumed.json"
    assert _run_job(out, ckpt).wait(120) == 0
    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert b["resumed_from"] == epoch_at_kill
    assert b["checksum"] == a["checksum"]
    assert [r["train/loss"] for r in b["history"]] == [r["train/loss"] for r in a["history"]]


def test_long_run_prints_its_projected_wall_time(tmp_path, capsys):
    """A run projected past two minutes prints steps/s and its duration once; a short one prints nothing."""
    import time as _time

    from fer_nb.train import fit, format_duration

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(batch, ctx):
        _time.sleep(0.01)            # ~100 steps/s
        loss = model(batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    batches = [torch.ones(4, 2)] * 30
    fit({"m": model}, {"o": opt}, step, lambda e: batches, epochs=1, progress=False)
    assert capsys.readouterr().out == ""
    try:
        fit({"m": model}, {"o": opt}, step, lambda e: batches, epochs=1000, progress=False,
            checkpoint=tmp_path / "ck.pt", stop_after_steps=25)
    except KeyboardInterrupt:
        pass
    out = capsys.readouterr().out
    assert "steps/s measured: 30000 steps take about" in out and "resumes from" in out
    assert out.count("steps/s measured") == 1
    assert format_duration(3725) == "1 h 02 min" and format_duration(95) == "1 min 35 s"
    assert format_duration(5) == "5 s" and format_duration(3 * 86400) == "3.0 days"
