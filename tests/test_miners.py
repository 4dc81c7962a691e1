"""Miners (issue #21): loop references, pytorch-metric-learning cross-checks, sampling statistics."""
import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_d
from pytorch_metric_learning import miners as pml_m

from fer_nb import miners
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
from fer_nb.losses.triplet import TripletLoss


def batch(seed=0, b=20, d=4, c=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    y[:c] = torch.arange(c)
    y[c:2 * c] = torch.arange(c)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("power,normalize", [(1, False), (2, False), (1, True)])
def test_batch_hard_matches_loop_and_pml(seed, power, normalize):
    x, y = batch(seed)
    y[-1] = -1
    a, p, n = miners.batch_hard(x, y, power=power, normalize=normalize)
    ra, rp, rn = miners.batch_hard_loop(x, y, power=power, normalize=normalize)
    assert a.tolist() == ra.tolist() and p.tolist() == rp.tolist() and n.tolist() == rn.tolist()
    assert len(a) == len(x) - 1
    if power == 1:
        keep = y >= 0
        xs, ys = x[keep], y[keep]
        pa, pp, pn = pml_m.BatchHardMiner(distance=pml_d.LpDistance(p=2, power=1, normalize_embeddings=normalize))(xs, ys)
        a2, p2, n2 = miners.batch_hard(xs, ys, power=1, normalize=normalize)
        assert sorted(zip(pa.tolist(), pp.tolist(), pn.tolist())) == sorted(zip(a2.tolist(), p2.tolist(), n2.tolist()))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_semi_hard_matches_loop_and_pml(seed, margin):
    x, y = batch(seed, b=16)
    a, p, n = miners.semi_hard(x, y, margin=margin)
    mine = set(zip(a.tolist(), p.tolist(), n.tolist()))
    assert mine == miners.semi_hard_loop(x, y, margin=margin)
    assert mine, "no semi-hard triplet: the test would be vacuous"
    pml = pml_m.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                   distance=pml_d.LpDistance(p=2, power=1, normalize_embeddings=False))(x, y)
    assert mine == set(zip(*(t.tolist() for t in pml)))
    # every semi-hard triplet has a non-zero triplet loss with that margin, and no hard one is in it
    d = torch.cdist(x, x)
    assert bool((d[a, n] > d[a, p]).all()) and bool((d[a, n] - d[a, p] <= margin + 1e-12).all())
    loss = TripletLoss(margin=margin, power=1, reduction="none")(x, y, triplets=torch.stack([a, p, n], 1))
    assert bool((loss > 0).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_distance_weights_match_loop(seed):
    x, y = batch(seed, b=24, d=8)
    y[0] = -1
    w = miners.distance_weights(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4)
    ref = miners.distance_weights_loop(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4)
    assert torch.allclose(w, ref, atol=1e-10)
    has = (y >= 0) & ((y[:, None] != y[None, :]) & (y[None, :] >= 0)).any(1)
    assert torch.allclose(w.sum(1)[has], torch.ones(int(has.sum()), dtype=w.dtype))
    assert bool((w[~has] == 0).all())
    # zero weight on positives and on negatives farther than the cutoff
    same = y[:, None] == y[None, :]
    assert bool((w[same] == 0).all())


def test_distance_weights_undo_the_sphere_density():
    """On the 16-D sphere random distances pile up near sqrt(2); 1/q(d) weights flatten that:
    the weighted histogram of drawn distances is much flatter than the unweighted one."""
    torch.manual_seed(0)
    x = torch.randn(400, 16, dtype=torch.float64)
    y = torch.arange(400)            # every other point is a negative
    w = miners.distance_weights(x, y, cutoff=0.5, nonzero_loss_cutoff=2.0)
    xn = torch.nn.functional.normalize(x, dim=1)
    d = torch.cdist(xn, xn)
    bins = torch.tensor([1.0, 1.2, 1.4, 1.6])
    off = ~torch.eye(400, dtype=torch.bool)
    uniform = torch.histogram(d[off].float(), bins=bins.float()).hist
    weighted = torch.histogram(d[off].float(), bins=bins.float(), weight=w[off].float()).hist
    uniform, weighted = uniform / uniform.sum(), weighted / weighted.sum()
    assert float(uniform.max() / uniform.min()) > 2 * float(weighted.max() / weighted.min())


def test_distance_weighted_sampling_follows_the_weights():
    x, y = batch(0, b=12, d=6)
    w = miners.distance_weights(x, y, nonzero_loss_cutoff=2.0)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros_like(w)
    for _ in range(300):
        a, p, n = miners.distance_weighted(x, y, nonzero_loss_cutoff=2.0, generator=g)
        assert bool((y[a] == y[p]).all()) and bool((y[a] != y[n]).all()) and bool((a != p).all())
        counts.index_put_((a, n), torch.ones(len(a), dtype=counts.dtype), accumulate=True)
    freq = counts / counts.sum(1, keepdim=True).clamp_min(1)
    rows = counts.sum(1) > 0
    assert float((freq[rows] - w[rows]).abs().max()) < 0.08
    a1 = miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(5))
    a2 = miners.distance_weighted(x, y, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a1, a2))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_online_positive_mining_matches_loop_and_the_nm_loss(seed):
    x, y = batch(seed, b=24, d=3, c=3)
    y[-1] = -1
    keep = miners.online_positive_mining(x, y)
    assert keep.tolist() == miners.online_positive_mining_loop(x, y).tolist()
    assert not bool(keep[-1])
    # the (N+M)-tuple clusters loss with mining = Eq. 3 on the kept positives (centre of the kept ones)
    T, tau = 2.0, 2.0
    total = 0.0
    classes = sorted(set(y[y >= 0].tolist()))
    for k in classes:
        kept = x[(y == k) & keep]
        c = kept.mean(0)
        negs = x[(y >= 0) & (y != k)]
        pos_term = torch.clamp(((kept - c) ** 2).sum(1) - T + tau / 2, min=0).mean()
        neg_term = torch.clamp(T + tau / 2 - ((negs - c) ** 2).sum(1), min=0).mean()
        total = total + pos_term + neg_term
    nm = NMTupleClustersLoss(reference=T, tau=tau, mining=True)
    assert torch.allclose(nm(x, y), total / len(classes), atol=1e-10)


def test_mining_changes_something():
    """A mined-away positive exists in these batches (otherwise the test above would not test mining)."""
    dropped = 0
    for seed in range(4):
        x, y = batch(seed, b=24, d=3, c=3)
        dropped += int((~miners.online_positive_mining(x, y)).sum())
    assert dropped > 0


def test_miners_errors_and_empty_batches():
    x = torch.randn(5, 3)
    with pytest.raises(TypeError, match="labels.long"):
        miners.batch_hard(x, torch.zeros(5))
    with pytest.raises(ValueError, match="margin"):
        miners.semi_hard(x, torch.zeros(5, dtype=torch.long), margin=0.0)
    with pytest.raises(ValueError, match=">= 2"):
        miners.distance_weights(torch.randn(5, 1), torch.arange(5))
    one_class = torch.zeros(5, dtype=torch.long)
    for fn in (miners.batch_hard, miners.semi_hard, miners.distance_weighted):
        a, p, n = fn(x, one_class)
        assert len(a) == len(p) == len(n) == 0


def test_pair_masks_and_reduce_rows():
    y = torch.tensor([0, 0, 1, -1])
    pos, neg = miners.pair_masks(y)
    assert pos.tolist()[0] == [False, True, False, False] and neg.tolist()[0] == [False, False, True, False]
    assert not bool(pos[3].any() | neg[3].any() | pos[:, 3].any())
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    keep = torch.tensor([True, False, True, False])
    assert float(miners.reduce_rows(v, keep, "mean")) == 2.0
    assert float(miners.reduce_rows(v, keep, "sum")) == 4.0
    none = miners.reduce_rows(v, torch.zeros(4, dtype=torch.bool), "mean")
    none.backward()
    assert float(none) == 0.0 and v.grad is not None


@pytest.mark.parametrize("miner", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mined_triplet_loss_equals_triplet_loss_on_the_mined_triplets(miner, seed):
    x, y = batch(seed, b=16, d=3)
    loss = miners.MinedTripletLoss(miner, margin=0.3, normalize=True)
    xn = torch.nn.functional.normalize(x, dim=1)
    a, p, n = (miners.batch_hard(xn, y) if miner == "batch_hard" else miners.semi_hard(xn, y, margin=0.3))
    assert len(a) > 0
    ref = TripletLoss(margin=0.3, power=1, reduction="mean")(xn, y, triplets=torch.stack([a, p, n], 1))
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    va = loss(xa, y)
    na = torch.nn.functional.normalize(xb, dim=1)
    vb = TripletLoss(margin=0.3, power=1, reduction="mean")(na, y, triplets=torch.stack([a, p, n], 1))
    assert torch.allclose(va, ref, atol=1e-10) and torch.allclose(va, vb, atol=1e-10)
    va.backward()
    vb.backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-9)


def test_mined_triplet_loss_all_and_distance_weighted():
    x, y = batch(2, b=14, d=5)
    xn = torch.nn.functional.normalize(x, dim=1)
    all_ref = TripletLoss(margin=0.2, power=1, reduction="mean")(xn, y)
    assert torch.allclose(miners.MinedTripletLoss("all", margin=0.2)(x, y), all_ref, atol=1e-10)
    # distance-weighted: the expected hinge over the sampling distribution, written out per (a, p)
    prob = miners.distance_weights(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4)
    d = torch.cdist(xn, xn)
    total, pairs = 0.0, 0
    for a in range(len(x)):
        for p in range(len(x)):
            if p != a and y[p] == y[a]:
                total += float((prob[a] * torch.relu(d[a, p] - d[a] + 0.2)).sum())
                pairs += 1
    value = miners.MinedTripletLoss("distance_weighted", margin=0.2)(x, y)
    assert math.isclose(float(value), total / pairs, rel_tol=1e-9)


def test_mined_triplet_loss_works_under_vmap():
    """The gradient-field helper vmaps the loss over query points: no data-dependent shapes allowed."""
    x, y = batch(0, b=10, d=2)
    q = torch.randn(7, 2, dtype=torch.float64)
    for miner in miners.MINED:
        loss = miners.MinedTripletLoss(miner, margin=0.3)

        def f(qq):
            return loss(torch.cat([qq[None], x]), torch.cat([torch.tensor([0]), y]))

        g = torch.func.vmap(torch.func.grad(f))(q)
        ref = torch.stack([torch.func.grad(f)(qi) for qi in q])
        assert torch.allclose(g, ref, atol=1e-10), miner
    with pytest.raises(ValueError, match="normalize"):
        miners.MinedTripletLoss("distance_weighted", normalize=False)
