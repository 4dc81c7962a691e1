"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) as a training step.

The teacher is the weight EMA of the student (:class:`~fer_nb.ssl.ema.WeightEMA`). Each step:
two independent augmentations of every image; cross entropy of the student on the labelled batch;
consistency cost ``w(t) * lambda_c * mean ||softmax(student(x_u')) - softmax(teacher(x_u''))||^2``
on the unlabelled batch (the labelled images' consistency is included too, as in the reference);
``w(t) = exp(-5 (1 - t / t_ramp)^2)`` is the paper's sigmoid ramp-up. Evaluation uses the teacher.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.device import autocast
from fer_nb.ssl.mixmatch import SSLMethod


def sigmoid_rampup(progress: float, length: float) -> float:
    """Mean Teacher's ramp-up ``exp(-5 (1 - t)^2)`` for ``t = progress / length`` clipped to [0, 1]."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, progress / length))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class MeanTeacher(SSLMethod):
    """Mean Teacher step; ``consistency`` is ``lambda_c`` (MSE on probabilities), ``rampup`` a fraction of training."""

    name = "mean_teacher"

    def __init__(self, model: nn.Module, num_classes: int, *, consistency: float = 10.0, rampup: float = 0.3,
                 ema_decay: float = 0.99, **kw):
        if ema_decay is None:
            raise ValueError("Mean Teacher needs a teacher: ema_decay must be a number in (0, 1)")
        super().__init__(model, num_classes, ema_decay=ema_decay, **kw)
        self.consistency, self.rampup = consistency, rampup

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        xl, y = batch["image"], batch["expression"]
        x = torch.cat([xl, batch["u_image"]]) if "u_image" in batch else xl
        b = xl.shape[0]
        x1, x2 = self.augment(x), self.augment(x)
        logits = self.forward(x1).float()
        with torch.no_grad(), autocast(self.device, enabled=self.amp):
            self.ema_model.train()  # teacher BN in the same mode as the student's
            teacher = torch.softmax(self.ema_model(x2).float(), 1)
        ce = F.cross_entropy(logits[:b], y)
        cons = (torch.softmax(logits, 1) - teacher).pow(2).sum(1).mean() / self.num_classes
        w = self.consistency * sigmoid_rampup(ctx.progress, self.rampup)
        loss = ce + w * cons
        self._update(loss)
        return {"loss": loss.detach(), "loss_ce": ce.detach(), "loss_cons": cons.detach()}
