"""CAF losses (Kim & Song 2021): loop references of Eq. 1, 4-8, GramNet/MMD and L_AV; gradcheck; degenerate batches."""
import math

import pytest
import torch

from fer_nb import metrics
from fer_nb.losses.caf_critic import (CAFCriticLoss, collapse_eigenvalue, confidence_delta, gaussian_mi,
                                     margin_count, reference_caf_critic, reference_gaussian_mi)
from fer_nb.losses.fisher_ipm import FisherIPMLoss
from fer_nb.losses.mmd_critic import MMDCriticLoss
from fer_nb.losses.va_regression import VARegressionLoss


def _batch(n=12, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    lab = torch.zeros(n, dtype=torch.long)
    lab[torch.randperm(n, generator=g)[: n // 2 + 1]] = 1
    return z, lab


@pytest.mark.parametrize("margin", ["delta", "constant", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caf_critic_matches_loop_reference(margin, seed):
    z, lab = _batch(seed=seed)
    loss_fn = CAFCriticLoss(margin=margin, bandwidth=1.0)
    got = loss_fn(z, lab, epoch=7)
    want, alpha = reference_caf_critic(z, lab, margin, sigma=1.0, epoch=7)
    assert got.item() == pytest.approx(float(want), rel=1e-9, abs=1e-12)
    assert loss_fn.last["alpha"].item() == pytest.approx(alpha, rel=1e-9)


def test_caf_critic_positive_weight_scales_only_the_pull():
    z, lab = _batch(seed=5)
    pos = [float(((z[i] - z[j]) ** 2).sum()) for i in range(len(z)) for j in range(i + 1, len(z))
           if lab[i] == 1 and lab[j] == 1]
    full = CAFCriticLoss(bandwidth=1.0)(z, lab)
    quarter = CAFCriticLoss(bandwidth=1.0, positive_weight=0.25)(z, lab)
    assert (full - quarter).item() == pytest.approx(0.75 * sum(pos) / len(pos), rel=1e-9)
    with pytest.raises(ValueError, match="positive_weight"):
        CAFCriticLoss(positive_weight=0.0)


def _two_groups(shift, n=400, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2 * n, d, generator=g, dtype=torch.float64)
    strong = torch.arange(2 * n) < n
    f[strong, 0] += shift
    return f, strong


def test_collapse_eigenvalue_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    import numpy as np
    f, strong = _two_groups(1.5, n=60, d=5)
    fs, fw = f[strong].numpy(), f[~strong].numpy()
    cs, cw = np.cov(fs.T), np.cov(fw.T)
    dmu = (fs.mean(0) - fw.mean(0))[:, None]
    s_ss = 2 * cs
    s_ss = s_ss + 1e-3 * np.diag(s_ss).mean() * np.eye(5)
    want = scipy_linalg.eigh(cs + cw + dmu @ dmu.T, s_ss, eigvals_only=True)[-1]
    assert collapse_eigenvalue(f, strong).item() == pytest.approx(want, rel=1e-9)
    # two identical distributions: about 1; a mean shift m along one axis: about 1 + m^2 / 2
    assert collapse_eigenvalue(*_two_groups(0.0, n=4000))  == pytest.approx(1.0, abs=0.1)
    assert collapse_eigenvalue(*_two_groups(3.0, n=4000)) == pytest.approx(5.5, rel=0.1)
    with pytest.raises(ValueError, match="two strong"):
        collapse_eigenvalue(f[:3], torch.tensor([True, False, False]))


def test_collapse_eigenvalue_held_out_removes_the_small_sample_bias():
    # 60 dimensions of pure noise, 300 samples: identical groups, true value 1
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 60, generator=g, dtype=torch.float64)
    f2 = torch.randn(300, 60, generator=g, dtype=torch.float64)
    strong = torch.arange(300) % 2 == 0
    in_sample = collapse_eigenvalue(f, strong).item()
    held_out = collapse_eigenvalue(f, strong, validate=(f2, strong)).item()
    assert in_sample > 2.5 and held_out < 1.5
    # a real mean shift (true value 1 + m^2 / 2 = 5.5) survives the held-out check above the
    # collapse threshold 2; the held-out value is conservative (the fitted direction is noisy)
    f[strong, 0] += 3.0
    f2[strong, 0] += 3.0
    shifted = collapse_eigenvalue(f, strong, validate=(f2, strong)).item()
    assert 2.0 < shifted < 5.5 < collapse_eigenvalue(f, strong).item()


@pytest.mark.parametrize("shift,weight,collapses", [(0.5, 1.0, True), (3.0, 1.0, False), (0.5, 0.25, False)])
def test_linear_critic_collapses_exactly_when_the_eigenvalue_is_below_2w(shift, weight, collapses):
    """Eq. 7 on a linear critic z = W f: W -> 0 iff lambda_max(S_sw, S_ss) <= 2 w (see collapse_eigenvalue)."""
    f, strong = _two_groups(shift, n=64)
    lam = collapse_eigenvalue(f, strong).item()
    assert (lam <= 2 * weight) == collapses
    torch.manual_seed(0)
    critic = torch.nn.Linear(4, 8).double()
    loss_fn = CAFCriticLoss(margin="constant", kappa=0.2, positive_weight=weight)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    spread0 = critic(f).std(0).mean().item()
    for _ in range(600):
        loss = loss_fn(critic(f), strong)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spread = critic(f).std(0).mean().item()
    assert (spread < 0.02 * spread0) == collapses, (lam, spread0, spread)


def test_caf_critic_chi2_regulariser_matches_reference():
    z, lab = _batch(seed=4)
    got = CAFCriticLoss(bandwidth=1.0, chi2_weight=1.0)(z, lab)
    want, _ = reference_caf_critic(z, lab, sigma=1.0, chi2_weight=1.0)
    assert got.item() == pytest.approx(float(want), rel=1e-9)


def test_caf_critic_is_eq4_hinge_form():
    """Eq. 4 with xi = +1 gives -max(0, D^2 - a): for same-group pairs only D^2 enters Eq. 6/7 (no margin);
    with xi = -1 it is max(0, a - D^2): a wide margin makes every cross pair active, a zero margin none."""
    z, lab = _batch(seed=5)
    big = CAFCriticLoss(margin="constant", kappa=1e6, bandwidth=1.0)(z, lab)
    small = CAFCriticLoss(margin="mi_only", bandwidth=1.0, mi_max=0.0)(z, lab)
    strong = lab.bool()
    d2 = torch.cdist(z, z).pow(2)
    pos = d2[strong][:, strong].triu(1).sum() / (strong.sum() * (strong.sum() - 1) / 2)
    assert small.item() == pytest.approx(pos.item(), rel=1e-9)  # hinge all zero
    mi = CAFCriticLoss(margin="constant", kappa=1e6, bandwidth=1.0)
    mi(z, lab)
    neg = 0.5 * (mi.last["alpha"] - d2[strong][:, ~strong]).mean()
    assert big.item() == pytest.approx((pos + neg).item(), rel=1e-9)


def test_code_pairs_option_matches_loop():
    z, lab = _batch(n=11, seed=6)
    loss_fn = CAFCriticLoss(margin="constant", bandwidth=1.0, pairs="code")
    got = loss_fn(z, lab)
    alpha = loss_fn.last["alpha"].item()
    s = [i for i in range(len(z)) if lab[i] == 1]
    w = [i for i in range(len(z)) if lab[i] == 0]
    m = min(len(s), len(w))
    s, w = s[:m], w[:m]
    pos = [float(((z[s[i]] - z[s[m - 1 - i]]) ** 2).sum()) for i in range(m) if i != m - 1 - i]
    neg = [max(0.0, alpha - float(((z[s[i]] - z[w[m - 1 - i]]) ** 2).sum())) for i in range(m)]
    want = sum(pos) / max(1, len(pos)) + 0.5 * sum(neg) / m
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_mutual_information_and_delta_formulas():
    z, lab = _batch(seed=3)
    mi, eta = gaussian_mi(z[lab == 1], z[lab == 0], bandwidth=1.0)
    want_mi, want_eta = reference_gaussian_mi(z, lab, 1.0)
    assert eta.item() == pytest.approx(want_eta, rel=1e-9)
    assert mi.item() == pytest.approx(want_mi, rel=1e-9)
    # identical groups: eta = 1 -> MI clipped at mi_max; MI = -1/2 log(1 - eta^2) for eta = 0.6
    same, _ = gaussian_mi(z, z.clone(), bandwidth=1.0, mi_max=2.5)
    assert same.item() == pytest.approx(2.5)
    assert -0.5 * math.log(1 - 0.36) == pytest.approx(0.2231435513, rel=1e-9)
    assert confidence_delta(256, 1).item() == pytest.approx(math.log(256 / 0.05) / 2)
    assert confidence_delta(256, 10).item() == pytest.approx(math.log(5120) / 20)
    with pytest.raises(ValueError, match="K >= 1"):
        confidence_delta(256, 0)


def test_margin_count_falls_as_groups_separate():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(16, 4, generator=g, dtype=torch.float64)
    zw = torch.randn(16, 4, generator=g, dtype=torch.float64)
    ks = []
    for shift in (0.0, 1.0, 3.0, 10.0):
        d2 = torch.cdist(zs + shift, zw).pow(2)
        ks.append(int(margin_count(d2, torch.zeros((), dtype=torch.float64), 32)))
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1] == 1


def test_margin_count_histogram_matches_the_sorted_definition():
    """K = #{k : d_(k) < base + log(N/c) / (2k)} on sorted distances, against the O(M) histogram form."""
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        m = int(torch.randint(1, 300, (1,), generator=g))
        d = torch.rand(m, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g)) * 10
        base = torch.tensor(float(torch.rand(1, generator=g)) * 3, dtype=torch.float64)
        n = int(torch.randint(2, 300, (1,), generator=g))
        srt = torch.sort(d).values
        want = sum(1 for k, v in enumerate(srt.tolist(), 1) if v < float(base) + math.log(n / 0.05) / (2 * k))
        assert int(margin_count(d, base, n)) == max(want, 1)


def test_caf_critic_gradcheck():
    z, lab = _batch(n=8, d=3, seed=1)
    z.requires_grad_(True)
    for margin in ("delta", "constant", "linear"):
        # margin differentiated through MI (detach_margin=False): the full Eq. 7 with Eq. 8's alpha
        loss_fn = CAFCriticLoss(margin=margin, bandwidth=1.0, chi2_weight=0.5, detach_margin=False)
        assert torch.autograd.gradcheck(lambda x: loss_fn(x, lab), (z,))
    # the default detached margin: the gradient of Eq. 7 with alpha held fixed (here MI off, alpha = kappa)
    loss_fn = CAFCriticLoss(margin="constant", kappa=3.0, mi_max=0.0, chi2_weight=0.5)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, lab), (z,))


@pytest.mark.parametrize("case", ["one_group", "no_strong", "zeros", "single", "two"])
def test_caf_critic_degenerate_batches_finite(case):
    z, lab = _batch(n=6, d=4, seed=2, dtype=torch.float32)
    if case == "one_group":
        lab = torch.ones(6, dtype=torch.long)
    elif case == "no_strong":
        lab = torch.zeros(6, dtype=torch.long)
    elif case == "zeros":
        z = torch.zeros(6, 4)
    elif case == "single":
        z, lab = z[:1], lab[:1]
    elif case == "two":
        z, lab = z[:2], torch.tensor([1, 0])
    z = z.clone().requires_grad_(True)
    for margin in ("delta", "constant", "linear"):
        for pairs in ("all", "code"):
            loss = CAFCriticLoss(margin=margin, pairs=pairs)(z, lab)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
            z.grad = None


def test_caf_critic_bad_input_errors():
    with pytest.raises(ValueError, match="margin"):
        CAFCriticLoss(margin="huge")
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        CAFCriticLoss()(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="indicator"):
        CAFCriticLoss()(torch.zeros(4, 2), torch.zeros(3))


def test_caf_critic_float32_under_low_precision_input():
    z, lab = _batch(seed=0, dtype=torch.float32)
    a = CAFCriticLoss(bandwidth=1.0)(z.bfloat16(), lab)
    assert a.dtype == torch.float32


# ---------- Fisher IPM (Eq. 1) ----------------------------------------------------------------

def test_fisher_ipm_matches_loop_and_multiplier_update():
    z, lab = _batch(seed=7)
    loss_fn = FisherIPMLoss(rho=0.3)
    loss_fn.lagrange.fill_(0.7)
    got = loss_fn(z, lab)
    f = [float(z[i].mean()) for i in range(len(z))]
    p = [f[i] for i in range(len(z)) if lab[i] == 1]
    q = [f[i] for i in range(len(z)) if lab[i] == 0]
    ep, eq = sum(p) / len(p), sum(q) / len(q)
    omega = 0.5 * (sum(x * x for x in p) / len(p) + sum(x * x for x in q) / len(q))
    want = -(ep - eq + 0.7 * (1 - omega) - 0.3 / 2 * (1 - omega) ** 2)
    assert got.item() == pytest.approx(want, rel=1e-7)  # the multiplier is a float32 buffer
    loss_fn.update_multiplier()
    assert loss_fn.lagrange.item() == pytest.approx(0.7 - 0.3 * (1 - omega), rel=1e-6)


def test_fisher_ipm_gradcheck_and_degenerate():
    z, lab = _batch(n=8, d=3, seed=1)
    z.requires_grad_(True)
    loss_fn = FisherIPMLoss(rho=0.5)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, lab), (z,))
    for zz, ll in [(torch.zeros(4, 3), torch.ones(4)), (torch.randn(1, 3), torch.zeros(1)),
                   (torch.randn(5, 3), torch.tensor([1, 0, 0, 0, 0]))]:
        zz.requires_grad_(True)
        loss = loss_fn(zz, ll)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zz.grad).all()


# ---------- MMD / GramNet -----------------------------------------------------------------------

def test_mmd_and_gramnet_match_reference():
    z, lab = _batch(n=10, d=3, seed=8)
    zp, zq = z[lab == 1], z[lab == 0]
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / 2)
    np_, nq = len(zp), len(zq)
    mmd2 = (sum(k(a, b) for a in zp for b in zp) / np_**2 + sum(k(a, b) for a in zq for b in zq) / nq**2
            - 2 * sum(k(a, b) for a in zq for b in zp) / (np_ * nq))
    assert MMDCriticLoss("mmd", bandwidth=1.0)(z, lab).item() == pytest.approx(-mmd2, rel=1e-9)
    kqq = torch.tensor([[k(a, b) for b in zq] for a in zq], dtype=torch.float64)
    rhs = torch.tensor([sum(k(a, b) for b in zp) for a in zq], dtype=torch.float64)
    r = (nq / np_) * torch.linalg.solve(kqq + 0.01 * torch.eye(nq, dtype=torch.float64), rhs)
    want = -float(((r - 1) ** 2).mean())
    assert MMDCriticLoss("gramnet", bandwidth=1.0, lam=0.01)(z, lab).item() == pytest.approx(want, rel=1e-8)


def test_mmd_critic_gradcheck_and_degenerate():
    z, lab = _batch(n=8, d=3, seed=9)
    z.requires_grad_(True)
    for kind in ("mmd", "gramnet"):
        loss_fn = MMDCriticLoss(kind, bandwidth=1.5)
        assert torch.autograd.gradcheck(lambda x: loss_fn(x, lab), (z,))
        for zz, ll in [(torch.zeros(4, 3), torch.tensor([1, 1, 0, 0])), (torch.randn(1, 3), torch.ones(1)),
                       (torch.randn(4, 3), torch.ones(4))]:
            zz.requires_grad_(True)
            loss = MMDCriticLoss(kind)(zz, ll)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(zz.grad).all()


# ---------- L_AV --------------------------------------------------------------------------------

def test_va_loss_matches_global_metrics():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(50, 2, generator=g, dtype=torch.float64) * 2 - 1
    p = 0.6 * y + 0.3 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    loss_fn = VARegressionLoss(eps=0.0)
    got = loss_fn(p, y)
    m = metrics.va_metrics(p, y)
    want = (m["rmse_valence"] + m["rmse_arousal"]
            + 0.5 * (1 - (m["pcc_valence"] + m["pcc_arousal"]) / 2)
            + 0.5 * (1 - (m["ccc_valence"] + m["ccc_arousal"]) / 2))
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_va_loss_gradcheck_and_degenerate():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(6, 2, generator=g, dtype=torch.float64)
    p = torch.rand(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: VARegressionLoss()(x, y), (p,))
    for pp, yy in [(torch.zeros(1, 2), torch.zeros(1, 2)), (torch.zeros(5, 2), torch.rand(5, 2)),
                   (torch.ones(4, 2), torch.ones(4, 2))]:
        pp.requires_grad_(True)
        loss = VARegressionLoss()(pp, yy)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(pp.grad).all()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        VARegressionLoss()(torch.zeros(3, 3), torch.zeros(3, 3))


# ---------- networks (fer_nb.models.caf_net) ----------------------------------------------------------

def test_caf_networks_match_the_official_parameter_counts():
    from fer_nb.models.backbones import count_parameters
    from fer_nb.models.caf_net import CAFNet

    net = CAFNet("alexnet")  # 224 px RGB, 256x6x6 = 9216-d features
    assert count_parameters(net.encoder) + count_parameters(net.regressor) == 3_060_122  # paper: 3.0M
    assert count_parameters(net) == 3_652_618                                            # paper: 3.6M
    assert net.critic.out_dim == 16


def test_caf_networks_forward_small_inputs():
    from fer_nb.models.caf_net import CAFNet

    x = torch.rand(3, 3, 64, 64)
    net = CAFNet("alexnet", 3, width=0.25, pool_size=2)
    assert net(x).shape == (3, 2) and net.critic_out(x).shape == (3, 16)
    res = CAFNet("resnet18", 3, with_critic=False)
    assert res(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    with pytest.raises(RuntimeError, match="with_critic"):
        res.critic_out(x)
    with pytest.raises(ValueError, match="unknown CAF encoder"):
        CAFNet("vgg")


def test_caf_critic_loss_is_float32_math_under_bf16_autocast():
    """forward switches autocast off: the D^2 GEMM of Eq. 7 stays float32 inside a bf16 region."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(16, 8, generator=g)
    strong = (torch.arange(16) % 3 == 0).long()
    loss = CAFCriticLoss()
    want = loss.compute(z, strong.bool())                  # Eq. 7 in float32, no autocast anywhere
    for region in (torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False)):
        with region:
            got = loss(z, strong)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_va_regression_keeps_its_parts_under_their_names():
    loss = VARegressionLoss()
    pred, target = torch.tensor([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.4]]), torch.tensor([[0.0, 0.1], [0.4, 0.0], [-0.1, 0.5]])
    loss(pred, target)
    assert set(loss.last) == {"rmse_v", "rmse_a", "pcc", "ccc"}


def test_batch_pcc_ccc_defaults_to_a_negligible_eps():
    """With its default eps, PCC and CCC are the textbook population formulas to float64 precision."""
    from fer_nb.losses.va_regression import batch_pcc_ccc

    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(20, 2, dtype=torch.float64, generator=g), torch.randn(20, 2, dtype=torch.float64, generator=g)
    pcc, ccc = batch_pcc_ccc(pred, target)
    dp, dt = pred - pred.mean(0), target - target.mean(0)
    cov, vp, vt = (dp * dt).mean(0), dp.pow(2).mean(0), dt.pow(2).mean(0)
    torch.testing.assert_close(pcc, cov / (vp * vt).sqrt(), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(ccc, 2 * cov / (vp + vt + (pred.mean(0) - target.mean(0)) ** 2), atol=1e-7, rtol=1e-7)
