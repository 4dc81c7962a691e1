import pytest
import torch
from torch import nn

from fer_nb import fast


def test_prepare_and_optimizer_on_cpu():
    m = fast.prepare(nn.Conv2d(1, 4, 3), torch.device("cpu"))
    opt = fast.optimizer("adam", m.parameters(), 1e-3, torch.device("cpu"))
    loss = m(torch.randn(2, 1, 8, 8)).square().mean()
    loss.backward()
    opt.step()
    with pytest.raises(ValueError, match="unknown optimizer"):
        fast.optimizer("lbfgs2", m.parameters(), 1e-3, torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA"):
        fast.prepare(m, torch.device("cpu"), compile=True)


def test_images_to_device():
    x = fast.images_to_device(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8), torch.device("cpu"))
    assert x.dtype == torch.float32 and float(x.max()) == 1.0
