"""Gradient reversal layer and the UDAT update rules (Takashima et al., Eq. 9-11 / 19-21)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fer_nb.losses.angular_margin import AngularMarginLoss
from fer_nb.losses.grl import GradientReversal, dann_lambda, grad_reverse


def _nets(seed=0):
    torch.manual_seed(seed)
    g_f = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    g_y = nn.Linear(5, 3).double()
    g_d = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    d = torch.tensor([0] * 5 + [1] * 5)
    return g_f, g_y, g_d, x, y, d


def test_forward_is_identity_and_backward_is_minus_lambda():
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    out = GradientReversal(0.7)(x)
    assert torch.equal(out, x)
    out.backward(g)
    torch.testing.assert_close(x.grad, -0.7 * g, rtol=0, atol=0)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_feature_gradient_is_exactly_minus_lambda_times_domain_gradient(lam):
    """d L_d / d theta_f through the reversal layer == -lambda * (d L_d / d theta_f without it).

    For powers of two (and 0, 1) scaling commutes exactly with every rounding, so equality is exact.
    """
    g_f, _, g_d, x, _, d = _nets()
    plain = torch.autograd.grad(nn.functional.cross_entropy(g_d(g_f(x)), d), list(g_f.parameters()))
    rev = torch.autograd.grad(nn.functional.cross_entropy(g_d(grad_reverse(g_f(x), lam)), d), list(g_f.parameters()))
    for a, b in zip(rev, plain):
        assert torch.equal(a, -lam * b)


@pytest.mark.parametrize("lam", [0.1, 0.3, 0.7])
def test_feature_gradient_minus_lambda_any_lambda_float64(lam):
    g_f, _, g_d, x, _, d = _nets(1)
    head = AngularMarginLoss(4, 2, margin=0.5).double()  # the angular domain head too
    g_d = nn.Sequential(nn.Linear(5, 4), nn.ReLU()).double()

    def loss(z):
        return head(g_d(z), d)
    plain = torch.autograd.grad(loss(g_f(x)), list(g_f.parameters()))
    rev = torch.autograd.grad(loss(grad_reverse(g_f(x), lam)), list(g_f.parameters()))
    for a, b in zip(rev, plain):
        torch.testing.assert_close(a, -lam * b, rtol=1e-13, atol=1e-15)


def test_domain_classifier_gradient_is_unchanged():
    """Eq. 10/20: the domain classifier descends its own loss; the layer only flips what reaches G_f."""
    g_f, _, g_d, x, _, d = _nets(2)
    plain = torch.autograd.grad(nn.functional.cross_entropy(g_d(g_f(x)), d), list(g_d.parameters()))
    rev = torch.autograd.grad(nn.functional.cross_entropy(g_d(grad_reverse(g_f(x), 0.3)), d), list(g_d.parameters()))
    for a, b in zip(rev, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_one_sgd_step_implements_eq_9_10_11(lam):
    """backward(L_y + L_d) through the layer + SGD == the three update rules written out."""
    mu = 0.1
    g_f, g_y, g_d, x, y, d = _nets(3)
    src = d == 0
    params = {"f": list(g_f.parameters()), "y": list(g_y.parameters()), "d": list(g_d.parameters())}
    # explicit rules with separate gradients (no reversal layer)
    f = g_f(x)
    l_y = nn.functional.cross_entropy(g_y(f[src]), y[src])  # Eq. 7: labelled source only
    l_d = nn.functional.cross_entropy(g_d(f), d)  # Eq. 8: all N + M
    gy_f = torch.autograd.grad(l_y, params["f"], retain_graph=True)
    gy_y = torch.autograd.grad(l_y, params["y"], retain_graph=True)
    gd_f = torch.autograd.grad(l_d, params["f"], retain_graph=True)
    gd_d = torch.autograd.grad(l_d, params["d"])
    expected = {
        "y": [p - mu * g for p, g in zip(params["y"], gy_y)],  # Eq. 9
        "d": [p - mu * g for p, g in zip(params["d"], gd_d)],  # Eq. 10
        "f": [p - mu * (a - lam * b) for p, a, b in zip(params["f"], gy_f, gd_f)],  # Eq. 11
    }
    expected = {k: [t.detach().clone() for t in v] for k, v in expected.items()}
    # the implementation: one backward through the reversal layer, one optimizer step
    opt = torch.optim.SGD([*params["f"], *params["y"], *params["d"]], lr=mu)
    grl = GradientReversal(lam)
    f = g_f(x)
    loss = nn.functional.cross_entropy(g_y(f[src]), y[src]) + nn.functional.cross_entropy(g_d(grl(f)), d)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k in params:
        for p, e in zip(params[k], expected[k]):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def test_gradcheck_float64():
    """With lambda = -1 the backward equals the identity's derivative, so float64 gradcheck passes;
    with any other lambda the layer is deliberately not the derivative of its forward and fails it."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: torch.tanh(grad_reverse(a @ w, -1.0)), (x,))
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(lambda a: torch.tanh(grad_reverse(a @ w, 0.5)), (x,))


def test_lambda_zero_gives_zero_feature_gradient_and_degenerate_inputs():
    x = torch.randn(1, 3, requires_grad=True)
    grad_reverse(x, 0.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    e = torch.zeros(0, 3, requires_grad=True)
    grad_reverse(e, 1.0).sum().backward()
    assert e.grad.shape == (0, 3)


def test_dann_schedule():
    assert dann_lambda(0.0) == 0.0
    assert math.isclose(dann_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert math.isclose(dann_lambda(0.5, lambda_max=0.3), 0.3 * (2 / (1 + math.exp(-5)) - 1))
    vals = [dann_lambda(p / 100) for p in range(101)]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dann_lambda(1.5)


def test_bad_lambda_names_the_problem():
    with pytest.raises(ValueError, match="finite"):
        GradientReversal(float("nan"))
    with pytest.raises(TypeError, match="number"):
        GradientReversal("0.5")
    layer = GradientReversal(0.2)
    layer.lambda_ = 0.9  # settable between steps (schedules)
    x = torch.ones(2, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2,), -0.9))


# --- the reversal layer inside the UDAT-AS network (fer_nb.models.udat) -------------------------

from fer_nb.models.udat import DOMAIN_HEADS, UDATNet, udat_losses  # noqa: E402


def _tiny(head, lam, seed=0):
    torch.manual_seed(seed)
    return UDATNet(3, 7, width=1 / 16, fc_dim=16, domain_dim=8, domain_head=head, lambda_=lam,
                   batch_norm=False, pool_size=1, dropout=0.0).double()


@pytest.mark.parametrize("head", DOMAIN_HEADS)
def test_udat_net_reverses_only_the_domain_gradient_into_g_f(head):
    """In the net: d(L_y + L_d)/d theta_f == dL_y/d theta_f - lambda dL_d/d theta_f (Eq. 11 / 21),
    while G_y and G_d get their own plain gradients (Eq. 9-10 / 19-20)."""
    lam = 0.5
    net = _tiny(head, lam)
    g = torch.Generator().manual_seed(1)
    xs, xt = torch.rand(6, 3, 32, 32, generator=g).double(), torch.rand(5, 3, 32, 32, generator=g).double()
    ys = torch.randint(0, 7, (6,), generator=g)
    out = udat_losses(net, xs, ys, xt)
    f_params = [p for n, p in net.named_parameters() if n.startswith(("backbone.", "fc1.", "fc2."))]
    d_params = list(net.domain.parameters())
    total_f = torch.autograd.grad(out["loss"], f_params, retain_graph=True)
    ly_f = torch.autograd.grad(out["loss_y"], f_params, retain_graph=True)
    ld_f_rev = torch.autograd.grad(out["loss_d"], f_params, retain_graph=True)
    ld_d = torch.autograd.grad(out["loss_d"], d_params)
    # the same domain loss without the reversal layer
    f = net.features(torch.cat([xs, xt]))
    dom = torch.tensor([0] * 6 + [1] * 5)
    plain = net.domain(f, dom)
    ld_f = torch.autograd.grad(plain, f_params, retain_graph=True)
    ld_d_plain = torch.autograd.grad(plain, d_params)
    assert any(float(t.abs().max()) > 0 for t in ld_f)
    for a, b in zip(ld_f_rev, ld_f):
        assert torch.equal(a, -lam * b)  # lambda = 0.5: exact
    for t, a, b in zip(total_f, ly_f, ld_f):
        torch.testing.assert_close(t, a - lam * b, rtol=1e-12, atol=1e-14)
    for a, b in zip(ld_d, ld_d_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_udat_net_structure_and_feature_transfer():
    net = UDATNet(3, 7, width=1 / 16, fc_dim=16, domain_dim=8, domain_head="angular_margin", pool_size=1)
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    fcs = [net.fc1[0], net.fc2[0], net.fc3[0], net.fc4]
    assert len(convs) == 13 and all(isinstance(m, nn.Linear) for m in fcs)
    dom_fcs = [m for m in net.domain.modules() if isinstance(m, nn.Linear)]
    assert len(dom_fcs) == 2 and net.domain.out.margin == 0.5 and net.domain.out.scale == 64.0  # + angular layer
    assert net.domain.out.weight.shape == (2, 8)
    assert UDATNet(3, 7, width=1 / 16, fc_dim=16, domain_dim=8, domain_head="angular", pool_size=1).domain.out.margin == 0.0
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, 7) and net.features(x).shape == (2, 16)
    other = UDATNet(3, 40, width=1 / 16, fc_dim=16, pool_size=1)  # e.g. an identity pre-training net
    net.load_feature_state_dict(other.feature_state_dict())
    net.eval(), other.eval()
    torch.testing.assert_close(net.features(x), other.features(x))
    with pytest.raises(KeyError, match="same"):
        net.load_feature_state_dict(UDATNet(3, 7, width=1 / 8, fc_dim=16, pool_size=1, batch_norm=True).feature_state_dict())
    with pytest.raises(RuntimeError, match="domain_head"):
        other.domain_loss(other.features(x), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="domain_head"):
        UDATNet(3, 7, domain_head="cosface")


def test_lambda_zero_udat_equals_source_only_training():
    """"UDAT is suppressed by setting lambda to 0.0": with no BatchNorm, the FER part of a lambda = 0
    UDAT run follows exactly the same trajectory as source-only training."""
    torch.manual_seed(3)
    a = UDATNet(3, 7, width=1 / 16, fc_dim=16, domain_dim=8, domain_head="softmax", lambda_=0.0, pool_size=1, dropout=0.0)
    b = UDATNet(3, 7, width=1 / 16, fc_dim=16, pool_size=1, dropout=0.0)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("domain.")})
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.05), torch.optim.SGD(b.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        xs, xt = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g)
        ys = torch.randint(0, 7, (4,), generator=g)
        for net, opt, tgt in ((a, oa, xt), (b, ob, None)):
            opt.zero_grad()
            udat_losses(net, xs, ys, tgt)["loss"].backward()
            opt.step()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, rtol=1e-6, atol=1e-7)


def test_udat_net_rejects_too_small_images():
    with pytest.raises(ValueError, match="image_size >= 32"):
        UDATNet(3, 7, width=1 / 16, fc_dim=16, pool_size=1)(torch.rand(1, 3, 24, 24))


def test_domain_alignment_number():
    from fer_nb.domain_alignment import domain_alignment, proxy_a_distance

    g = torch.Generator().manual_seed(0)
    same = domain_alignment(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g))
    apart = domain_alignment(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 3.0)
    assert abs(same["domain_acc"] - 0.5) < 0.1 and abs(same["proxy_a_distance"]) < 0.4
    assert apart["domain_acc"] > 0.97 and apart["proxy_a_distance"] > 1.8
    assert proxy_a_distance(0.5) == 0.0 and proxy_a_distance(0.0) == 2.0
    with pytest.raises(ValueError, match="same D"):
        domain_alignment(torch.randn(10, 3), torch.randn(10, 4))


def test_lambda_may_be_a_one_element_tensor_but_not_a_longer_one():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, torch.tensor(0.25)).sum().backward()           # a 0-d tensor (a schedule's output)
    torch.testing.assert_close(x.grad, torch.full((3,), -0.25))
    assert GradientReversal(torch.tensor([0.5])).lambda_ == 0.5
    with pytest.raises(ValueError, match=r"lambda must be a scalar, got a tensor of shape \(2,\)"):
        GradientReversal(torch.tensor([0.5, 0.5]))
