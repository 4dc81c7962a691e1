import pytest
import torch

from fer_nb.models.backbones import count_parameters
from fer_nb.models.wrn import WideResNet, wrn28_2


def test_wrn28_2_parameter_count_matches_mixmatch():
    m = wrn28_2(10)
    assert count_parameters(m) == 1_467_610  # ~1.47M, as MixMatch's WRN-28-2
    assert m.embedding_dim == 128
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == 1 + 3 * 4 * 2 + 3  # stem, 24 convs, 3 shortcuts


def test_wrn_configuration():
    m = wrn28_2(10)
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert all(b.momentum == 0.001 for b in bns)
    firsts = [blk.activate_before_residual for st in (m.block1, m.block2, m.block3) for blk in st]
    assert firsts == [True] + [False] * 11
    assert [st[0].conv1.out_channels for st in (m.block1, m.block2, m.block3)] == [32, 64, 128]


def test_wrn_shapes_knobs_and_gradients():
    m = WideResNet(7, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)
    assert all(b.momentum == 0.1 for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
    x = torch.randn(3, 1, 32, 32)
    logits, e = m(x, with_embedding=True)
    assert logits.shape == (3, 7) and e.shape == (3, 64)
    assert torch.allclose(m.fc(e), logits)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert count_parameters(m) < count_parameters(WideResNet(7, depth=16, widen_factor=1, in_channels=1))
    assert m(torch.randn(2, 1, 48, 48)).shape == (2, 7)  # global pooling: any input size


@pytest.mark.parametrize("kw", [{"depth": 27}, {"widen_factor": 0}, {"bn_momentum": 0.0}])
def test_wrn_bad_arguments(kw):
    args = {"num_classes": 10, **kw}
    with pytest.raises(ValueError):
        WideResNet(**args)
