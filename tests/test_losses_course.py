"""The course losses (issue #21): loop references of their equations, pytorch-metric-learning
cross-checks with every setting written out, float64 gradcheck, degenerate batches, bf16, errors."""
import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_d
from pytorch_metric_learning import losses as pml_l
from pytorch_metric_learning import miners as pml_m
from pytorch_metric_learning import reducers as pml_r

from fer_nb.losses.circle import CircleLoss, circle_loop
from fer_nb.losses.lifted_structure import LiftedStructureLoss, lifted_structure_loop
from fer_nb.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loop
from fer_nb.losses.normface import NormFaceLoss, normface_loop
from fer_nb.losses.npair import NPairLoss, first_pairs, npair_loop
from fer_nb.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loop
from fer_nb.losses.proxy_nca import ProxyNCALoss, proxy_nca_loop
from fer_nb.losses.sphereface import SphereFaceLoss, psi, sphereface_loop
from fer_nb.losses.supcon import SupConLoss, supcon_loop

C, D = 4, 5


def batch(seed=0, b=18, unlabelled=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (b,), generator=g)
    y[:C] = torch.arange(C)           # every class present
    y[C:2 * C] = torch.arange(C)      # with at least two rows
    if unlabelled:
        y[-1] = -1
    return x, y


def grads(fn, x):
    x = x.clone().requires_grad_(True)
    value = fn(x)
    (g,) = torch.autograd.grad(value, x)
    return value.detach(), g


# name -> (module factory, loop reference(module, x, y)); all in float64
CASES = {
    "proxy_nca": (lambda: ProxyNCALoss(D, C, scale=3.0).double(),
                  lambda m, x, y: proxy_nca_loop(x, y, m.proxies, 3.0, False)),
    "proxy_nca_incl": (lambda: ProxyNCALoss(D, C, scale=3.0, include_positive=True).double(),
                       lambda m, x, y: proxy_nca_loop(x, y, m.proxies, 3.0, True)),
    "proxy_anchor": (lambda: ProxyAnchorLoss(D, C, alpha=32.0, margin=0.1).double(),
                     lambda m, x, y: proxy_anchor_loop(x, y, m.proxies, 32.0, 0.1)),
    "multi_similarity": (lambda: MultiSimilarityLoss(2.0, 50.0, 0.5),
                         lambda m, x, y: multi_similarity_loop(x, y, 2.0, 50.0, 0.5)),
    "multi_similarity_mined": (lambda: MultiSimilarityLoss(2.0, 40.0, 0.5, mining=True, epsilon=0.1),
                               lambda m, x, y: multi_similarity_loop(x, y, 2.0, 40.0, 0.5, True, 0.1)),
    "lifted_structure": (lambda: LiftedStructureLoss(margin=1.0),
                         lambda m, x, y: lifted_structure_loop(x, y, 1.0)),
    "npair": (lambda: NPairLoss(l2_reg=0.01),
              lambda m, x, y: npair_loop(x, first_pairs(y), 0.01)),
    "supcon_out": (lambda: SupConLoss(0.1, "out"), lambda m, x, y: supcon_loop(x, y, 0.1, "out")),
    "supcon_in": (lambda: SupConLoss(0.5, "in"), lambda m, x, y: supcon_loop(x, y, 0.5, "in")),
    "circle": (lambda: CircleLoss(m=0.4, gamma=80.0), lambda m, x, y: circle_loop(x, y, 0.4, 80.0)),
    "normface": (lambda: NormFaceLoss(D, C, scale=10.0).double(),
                 lambda m, x, y: normface_loop(x, y, m.weight, m.log_scale.exp())),
    "sphereface": (lambda: SphereFaceLoss(D, C, margin=4).double(),
                   lambda m, x, y: sphereface_loop(x, y, m.weight, 4)),
    "sphereface_annealed": (lambda: SphereFaceLoss(D, C, margin=3, lam=5.0).double(),
                            lambda m, x, y: sphereface_loop(x, y, m.weight, 3, 5.0)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_loop_reference_value_and_gradient(name, seed):
    torch.manual_seed(seed)
    make, loop = CASES[name]
    m = make()
    x, y = batch(seed)
    v1, g1 = grads(lambda e: m(e, y), x)
    v2, g2 = grads(lambda e: loop(m, e, y), x)
    assert torch.allclose(v1, v2, rtol=1e-9, atol=1e-9), (float(v1), float(v2))
    assert torch.allclose(g1, g2, rtol=1e-7, atol=1e-9)
    assert float(v1) != 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_float64(name):
    torch.manual_seed(3)
    m = CASES[name][0]()
    if name == "circle":  # the detached weights alpha are not the formula's exact gradient: check the exact one
        m = CircleLoss(m=0.4, gamma=80.0, detach_weights=False)
    x, y = batch(3, b=10)
    x = (x * 0.5).requires_grad_(True)   # moderate logits: finite differences stay accurate
    if name.startswith("sphereface"):
        x = x.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: m(e, y), (x,), eps=1e-6, atol=1e-5)


def pml_pairs():
    """(ours, pml) pairs with matching settings, for the losses that pytorch-metric-learning has."""
    out = []
    ours = ProxyNCALoss(D, C, scale=3.0, include_positive=True).double()
    theirs = pml_l.ProxyNCALoss(C, D, softmax_scale=3.0, reducer=pml_r.MeanReducer(),
                                distance=pml_d.LpDistance(p=2, power=2, normalize_embeddings=True)).double()
    theirs.proxies.data.copy_(ours.proxies.data)
    out.append(("proxy_nca", ours, theirs, None))
    ours = ProxyAnchorLoss(D, C, alpha=32.0, margin=0.1).double()
    theirs = pml_l.ProxyAnchorLoss(C, D, margin=0.1, alpha=32, distance=pml_d.CosineSimilarity(),
                                   reducer=pml_r.DivisorReducer()).double()
    theirs.proxies.data.copy_(ours.proxies.data)
    out.append(("proxy_anchor", ours, theirs, None))
    ms = dict(alpha=2, beta=50, base=0.5, distance=pml_d.CosineSimilarity(), reducer=pml_r.MeanReducer())
    out.append(("multi_similarity", MultiSimilarityLoss(2.0, 50.0, 0.5), pml_l.MultiSimilarityLoss(**ms), None))
    out.append(("multi_similarity+miner", MultiSimilarityLoss(2.0, 50.0, 0.5, mining=True, epsilon=0.1),
                pml_l.MultiSimilarityLoss(**ms), pml_m.MultiSimilarityMiner(epsilon=0.1, distance=pml_d.CosineSimilarity())))
    out.append(("lifted_structure", LiftedStructureLoss(margin=1.0),
                pml_l.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, reducer=pml_r.MeanReducer(),
                                          distance=pml_d.LpDistance(p=2, power=1, normalize_embeddings=False)), None))
    out.append(("npair", NPairLoss(), pml_l.NPairsLoss(distance=pml_d.DotProductSimilarity(normalize_embeddings=False),
                                                       reducer=pml_r.MeanReducer()), None))
    out.append(("supcon", SupConLoss(0.1), pml_l.SupConLoss(temperature=0.1, distance=pml_d.CosineSimilarity(),
                                                            reducer=pml_r.AvgNonZeroReducer()), None))
    out.append(("circle", CircleLoss(m=0.25, gamma=64.0),
                pml_l.CircleLoss(m=0.25, gamma=64, distance=pml_d.CosineSimilarity(),
                                 reducer=pml_r.AvgNonZeroReducer()), None))
    ours = NormFaceLoss(D, C, scale=20.0).double()
    theirs = pml_l.NormalizedSoftmaxLoss(C, D, temperature=1.0 / float(ours.log_scale.exp()),
                                         distance=pml_d.DotProductSimilarity(normalize_embeddings=True),
                                         reducer=pml_r.MeanReducer()).double()
    theirs.W.data.copy_(ours.weight.data.T)
    out.append(("normface", ours, theirs, None))
    for m in (1, 2, 4):
        ours = SphereFaceLoss(D, C, margin=m).double()
        theirs = pml_l.SphereFaceLoss(C, D, margin=m, scale=1, distance=pml_d.CosineSimilarity(),
                                      reducer=pml_r.MeanReducer()).double()
        theirs.W.data.copy_(ours.weight.data.T)
        out.append((f"sphereface m={m}", ours, theirs, None))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pytorch_metric_learning_cross_check(seed):
    torch.manual_seed(seed)
    x, y = batch(seed, b=24, unlabelled=False)  # PML has no "unlabelled" convention
    for name, ours, theirs, miner in pml_pairs():
        v1, g1 = grads(lambda e: ours(e, y), x)
        v2, g2 = grads(lambda e: theirs(e, y, miner(e, y)) if miner else theirs(e, y), x)
        assert torch.allclose(v1, v2, rtol=1e-9, atol=1e-10), (name, float(v1), float(v2))
        assert torch.allclose(g1, g2, rtol=1e-7, atol=1e-9), name


def test_supcon_with_two_views_is_nt_xent():
    """Labels = image ids, two views each: SupCon (L_out and L_in) is SimCLR's NT-Xent cross-entropy."""
    torch.manual_seed(0)
    n, tau = 6, 0.2
    z = torch.randn(2 * n, D, dtype=torch.float64)
    ids = torch.arange(n).repeat(2)
    zn = torch.nn.functional.normalize(z, dim=1)
    logits = (zn @ zn.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    nt_xent = torch.nn.functional.cross_entropy(logits, partner)
    for variant in ("out", "in"):
        assert torch.allclose(SupConLoss(tau, variant)(z, ids), nt_xent, atol=1e-12)


def test_proxy_nca_with_positive_is_normface_at_twice_the_scale():
    """On the unit sphere d = 2 - 2 cos: ProxyNCA (softmax over all proxies, scale s) = NormFace with 2 s."""
    x, y = batch(0, unlabelled=False)
    pn = ProxyNCALoss(D, C, scale=2.5, include_positive=True).double()
    nf = NormFaceLoss(D, C, scale=5.0).double()
    nf.weight.data.copy_(pn.proxies.data)
    nf.log_scale.data.fill_(math.log(5.0))
    assert torch.allclose(pn(x, y), nf(x, y), atol=1e-12)


def test_sphereface_psi_is_monotone_and_matches_cos_m_theta():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    for m in (1, 2, 3, 4):
        p = psi(torch.cos(theta), m)
        assert bool((p[1:] <= p[:-1] + 1e-12).all()), m
        first = theta <= math.pi / m
        assert torch.allclose(p[first], torch.cos(m * theta[first]), atol=1e-9)
    assert torch.allclose(psi(torch.cos(theta), 1), torch.cos(theta), atol=1e-12)


def test_circle_decision_boundary_is_a_circle():
    """On the boundary alpha_n (s_n - Delta_n) = alpha_p (s_p - Delta_p): (s_n)^2 + (s_p - 1)^2 = 2 m^2."""
    m = 0.25
    t = torch.linspace(0.1, 1.4, 50, dtype=torch.float64)
    sn, sp = math.sqrt(2) * m * torch.sin(t), 1 - math.sqrt(2) * m * torch.cos(t)
    lhs = (sn + m) * (sn - m)              # alpha_n (s_n - Delta_n) with alpha_n = s_n - O_n = s_n + m
    rhs = (1 + m - sp) * (sp - (1 - m))    # alpha_p (s_p - Delta_p)
    assert torch.allclose(lhs, rhs, atol=1e-12)


ALL = {k: v[0] for k, v in CASES.items()}


@pytest.mark.parametrize("name", list(ALL))
def test_degenerate_batches_stay_finite(name):
    m = ALL[name]()
    cases = [
        (torch.randn(6, D, dtype=torch.float64), torch.zeros(6, dtype=torch.long)),             # one class
        (torch.zeros(6, D, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])),           # zero vectors
        (torch.randn(4, D, dtype=torch.float64), torch.full((4,), -1, dtype=torch.long)),      # all unlabelled
        (torch.randn(4, D, dtype=torch.float64), torch.tensor([0, 1, 2, 3])),                 # no positive pair
    ]
    for x, y in cases:
        x = x.requires_grad_(True)
        value = m(x, y)
        value.backward()
        assert torch.isfinite(value), (name, y.tolist())
        assert torch.isfinite(x.grad).all(), (name, y.tolist())


@pytest.mark.parametrize("name", list(ALL))
def test_bf16_inputs_compute_in_float32(name):
    torch.manual_seed(0)
    m = ALL[name]().float()
    x, y = batch(0, unlabelled=False)
    ref = m(x.float(), y)
    out = m(x.bfloat16(), y)
    assert out.dtype == torch.float32
    assert torch.allclose(out, m(x.bfloat16().float(), y), atol=1e-5)
    assert torch.isfinite(ref)


@pytest.mark.parametrize("name", list(ALL))
def test_bad_inputs_name_the_fix(name):
    m = ALL[name]()
    with pytest.raises((ValueError, TypeError)):
        m(torch.randn(4, D, dtype=torch.float64), torch.zeros(4))                 # float labels
    with pytest.raises(ValueError):
        m(torch.randn(4, D, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        m(torch.randn(4, D, dtype=torch.float64), torch.zeros(3, dtype=torch.long))


def test_constructor_errors():
    with pytest.raises(ValueError, match="integer"):
        SphereFaceLoss(D, C, margin=1.5)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(0.0)
    with pytest.raises(ValueError, match="variant"):
        SupConLoss(0.1, "both")
    with pytest.raises(ValueError, match="reduction"):
        CircleLoss(reduction="avg")
    with pytest.raises(ValueError, match="scale"):
        NormFaceLoss(D, C, scale=0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        ProxyAnchorLoss(D, C)(torch.randn(3, D), torch.tensor([0, 1, C]))
    with pytest.raises(ValueError, match="distinct labels"):
        NPairLoss()(torch.randn(4, D), torch.tensor([0, 0, 0, 0]), pairs=torch.tensor([[0, 1], [2, 3]]))


@pytest.mark.parametrize("name", ["multi_similarity", "supcon_out", "circle", "proxy_nca", "normface", "npair"])
def test_reductions_are_consistent(name):
    m = ALL[name]()
    x, y = batch(1)
    m.reduction = "none"
    per = m(x, y)
    m.reduction = "sum"
    total = m(x, y)
    assert torch.allclose(per.sum(), total)
    m.reduction = "mean"
    assert abs(float(m(x, y).detach())) <= abs(float(total.detach())) + 1e-12


def test_learned_normface_scale_gets_a_gradient():
    m = NormFaceLoss(D, C, scale=2.0, learn_scale=True)
    x, y = batch(0, unlabelled=False)
    m(x.float(), y).backward()
    assert m.log_scale.grad is not None and float(m.log_scale.grad) != 0.0


def test_first_pairs_picks_first_two_rows_per_class():
    y = torch.tensor([2, 0, -1, 2, 1, 0, 2, 3])
    assert first_pairs(y).tolist() == [[1, 5], [0, 3]]


def test_pair_losses_run_on_fake_cuda_bf16():
    """Device slips (a tensor made on the CPU inside a loss) fail here without a GPU: the batch losses run on
    fake CUDA bf16 tensors and return float32 on the same device. (The proxy/classifier losses validate label
    ranges with data-dependent checks in fer_nb.losses.common, which fake tensors cannot evaluate; N-pair selects
    its pairs with boolean indexing.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fer_nb import miners

    mods = [MultiSimilarityLoss(mining=True), LiftedStructureLoss(), SupConLoss(), SupConLoss(variant="in"), CircleLoss()]
    mods += [miners.MinedTripletLoss(m) for m in miners.MINED]
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(12, D, device="cuda", dtype=torch.bfloat16)
        y = torch.randint(0, C, (12,), device="cuda")
        for m in mods:
            v = m.to("cuda")(x, y)
            assert v.device.type == "cuda" and v.dtype == torch.float32, type(m).__name__
