"""CAF strong/weak grouping: Otsu against a brute-force search, k-means, the official code's rule."""
import pytest
import torch

from fer_nb.caf_grouping import (code_threshold, decision_threshold, group, group_code, kmeans_threshold,
                                 otsu_threshold)


def brute_otsu(x, bins=256):
    lo, hi = float(x.min()), float(x.max())
    best, best_t = -1.0, None
    for t in range(1, bins):
        edge = lo + t * (hi - lo) / bins
        a, b = x[x < edge], x[x >= edge]
        if len(a) == 0 or len(b) == 0:
            continue
        w0, w1 = len(a) / len(x), len(b) / len(x)
        s = w0 * w1 * (float(a.mean()) - float(b.mean())) ** 2
        if s > best + 1e-15:
            best, best_t = s, edge
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_brute_force_between_class_variance(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([0.2 + 0.05 * torch.randn(300, generator=g), 0.7 + 0.1 * torch.randn(200, generator=g)])
    t = otsu_threshold(x, bins=64).item()
    # brute force on bin centres' statistics (histogram quantised) ~ on raw values: same split up to one bin
    assert t == pytest.approx(brute_otsu(x.double(), bins=64), abs=(x.max() - x.min()).item() / 64 + 1e-6)
    assert 0.3 < t < 0.6


def test_otsu_constant_and_empty():
    assert otsu_threshold(torch.full((5,), 0.3)).item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least one"):
        otsu_threshold(torch.zeros(0))


def test_kmeans_threshold_two_clusters_and_k():
    x = torch.tensor([0.1, 0.12, 0.08, 0.9, 0.92, 0.88])
    assert kmeans_threshold(x, 2).item() == pytest.approx(0.5, abs=1e-6)
    assert 0.0 < kmeans_threshold(x, 3).item() < 1.0
    with pytest.raises(ValueError):
        kmeans_threshold(x, 0)


def loop_code_threshold(d, thr1=0.75, thr2=0.95):
    """The official code's loop, transcribed for the test (it returns on its first test)."""
    d = [float(v) for v in d]
    i_s, i_e = min(range(len(d)), key=lambda i: d[i]), max(range(len(d)), key=lambda i: d[i])
    i_m = (i_s + i_e) // 2
    while True:
        w_l, w = sum(d[: i_m + 1]), sum(d)
        if w_l >= w * thr1 or w_l < w * thr2:
            return w_l / w
        i_m += 2


def test_code_threshold_matches_the_loop():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        d = torch.rand(32, generator=g) * 2 - 1
        assert code_threshold(d).item() == pytest.approx(loop_code_threshold(d), rel=1e-5)


def test_group_code_equal_sizes_and_rule():
    g = torch.Generator().manual_seed(4)
    va = torch.rand(64, 2, generator=g) * 2 - 1
    s, w = group_code(va)
    assert int(s.sum()) == int(w.sum()) > 0
    assert not bool((s & w).any())
    r2 = va.pow(2).sum(1)
    th = decision_threshold(va, "code")
    if bool((r2 > th + 0.25).any()) and bool((r2 < th + 0.25).any()):
        assert bool((r2[s] > th + 0.25).all()) and bool((r2[w] < th + 0.25).all())


def test_group_otsu_splits_on_radius():
    g = torch.Generator().manual_seed(5)
    weak = 0.15 * torch.randn(100, 2, generator=g)
    ang = torch.rand(100, generator=g) * 6.283
    strong = 0.8 * torch.stack([ang.cos(), ang.sin()], 1)
    va = torch.cat([weak, strong]).clamp(-1, 1)
    for method, k in [("otsu", 2), ("otsu_radius", 2), ("kmeans", 2), ("kmeans", 3)]:
        m = group(va, method, k=k)
        acc = (m == torch.cat([torch.zeros(100, dtype=torch.bool), torch.ones(100, dtype=torch.bool)])).float().mean()
        assert acc > 0.9, (method, k, acc)
    with pytest.raises(ValueError, match="unknown grouping"):
        decision_threshold(va, "median")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        decision_threshold(va[:, :1])
