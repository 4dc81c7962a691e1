"""A tiny training job used by the crash/resume tests (run as a subprocess).

usage: python tests/resume_job.py OUT_JSON CKPT [SLEEP_PER_STEP]
Trains an MLP with dropout on fixed random data through fer_nb.train.fit_or_load and writes the
final history and a checksum of the weights to OUT_JSON.
"""
import sys
import time

import torch
from torch import nn

from fer_nb import train
from fer_nb.io import save_json
from fer_nb.seed import seed_everything

torch.set_num_threads(1)
out_json, ckpt = sys.argv[1], sys.argv[2]
sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0

g = torch.Generator().manual_seed(123)
x = torch.randn(256, 10, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long()
seed_everything(0)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)


def step(batch, ctx):
    if sleep:
        time.sleep(sleep)
    loss = nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": loss}


def batches(epoch):
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(epoch))
    return [{"x": x[perm[i:i + 32]], "y": y[perm[i:i + 32]]} for i in range(0, 256, 32)]


hist = train.fit_or_load(ckpt, "job-v1", modules={"model": model}, optimizers={"opt": opt},
                         schedulers={"sched": sched}, train_step=step, train_batches=batches,
                         epochs=6, progress=False)
checksum = float(sum(p.double().sum() for p in model.parameters()))
save_json({"history": hist.records, "checksum": checksum, "resumed_from": hist.resumed_from}, out_json)
