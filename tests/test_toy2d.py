"""fer_nb.toy2d: toy problems, training with snapshots/resume, vectorised gradient fields, measures."""
import math

import matplotlib
import pytest
import torch

from fer_nb import toy2d
from fer_nb.losses.angular_margin import AngularMarginLoss
from fer_nb.losses.center import CenterLoss
from fer_nb.losses.contrastive import ContrastiveLoss
from fer_nb.losses.large_margin_loss import LargeMarginLoss
from fer_nb.losses.softmax import SoftmaxLoss
from fer_nb.losses.triplet import TripletLoss

matplotlib.use("Agg")


def ncm_accuracy_on_inputs(p: toy2d.ToyProblem) -> float:
    mu = torch.stack([p.x_train[p.y_train == k].mean(0) for k in range(p.num_classes)])
    return float((torch.cdist(p.x_test, mu).argmin(1) == p.y_test).float().mean())


def test_problems_shapes_balance_determinism_and_difficulty():
    dense = toy2d.make_problem("dense", 200, 120, num_classes=4, in_dim=6, seed=3)
    sep = toy2d.make_problem("separated", 200, 120, num_classes=4, in_dim=6, seed=3)
    assert dense.x_train.shape == (200, 6) and dense.x_test.shape == (120, 6) and dense.in_dim == 6
    assert torch.bincount(dense.y_train).tolist() == [50, 50, 50, 50]
    again = toy2d.make_problem("dense", 200, 120, num_classes=4, in_dim=6, seed=3)
    assert torch.equal(again.x_train, dense.x_train) and torch.equal(again.y_test, dense.y_test)
    other = toy2d.make_problem("dense", 200, 120, num_classes=4, in_dim=6, seed=4)
    assert not torch.equal(other.x_train, dense.x_train)
    # the dense problem is genuinely harder than the separated one for a nearest-mean classifier
    assert ncm_accuracy_on_inputs(sep) > 0.97
    assert ncm_accuracy_on_inputs(dense) < 0.9
    with pytest.raises(ValueError, match="dense"):
        toy2d.make_problem("cifar", 10, 10)
    with pytest.raises(ValueError, match="num_classes"):
        toy2d.make_problem("dense", 10, 10, num_classes=7, in_dim=6)


def test_batches_cover_an_epoch_and_reject_oversized_batches():
    p = toy2d.make_problem("separated", 100, 20, num_classes=3, seed=0)
    bs = p.batches(25, torch.Generator().manual_seed(0))
    assert len(bs) == 4 and all(b["x"].shape == (25, 6) for b in bs)
    assert sorted(torch.cat([b["y"] for b in bs]).tolist()) == sorted(p.y_train.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        p.batches(101, torch.Generator())


def test_loss_sum_is_the_weighted_sum():
    torch.manual_seed(0)
    x, y = torch.randn(12, 2), torch.randint(0, 3, (12,))
    sm, ct = SoftmaxLoss(3, 2), ContrastiveLoss()
    total = toy2d.LossSum({"a": sm, "b": ct}, {"a": 1.0, "b": 0.25})
    with torch.no_grad():
        assert float(total(x, y)) == pytest.approx(float(sm(x, y)) + 0.25 * float(ct(x, y)), rel=1e-6)
    with pytest.raises(ValueError, match="same losses"):
        toy2d.LossSum({"a": sm}, {"b": 1.0})


def test_snapshots_state_dict_round_trip():
    s = toy2d.Snapshots()
    s.add(0, torch.zeros(5, 2))
    s.add(7, torch.ones(5, 2))
    t = toy2d.Snapshots()
    t.load_state_dict(s.state_dict())
    assert sorted(t.points) == [0, 7] and torch.equal(t.points[7], torch.ones(5, 2))


def test_train_toy_records_snapshots_trains_loss_parameters_and_resumes(tmp_path):
    p = toy2d.make_problem("separated", 120, 60, num_classes=3, seed=0)

    def run(checkpoint):
        torch.manual_seed(0)
        net, loss = toy2d.EmbeddingMLP(p.in_dim, 16), SoftmaxLoss(3, 2)
        w0 = loss.weight.detach().clone()
        out = toy2d.train_toy(net, loss, p, epochs=5, batch_size=30, lr=0.02, snapshot_steps=[0, 6, 999], seed=0,
                              checkpoint=checkpoint, run_hash="h", progress=False)
        return out, w0

    first, w0 = run(tmp_path / "ck.pt")
    assert sorted(first.snapshots) == [0, 6, 20]  # 999 is beyond the 5 x 4 steps; the last step is added
    assert first.snapshots[0].shape == (60, 2)
    assert torch.equal(first.snapshots[20], first.test_embedding)
    assert not torch.allclose(first.loss.weight.detach(), w0), "the loss's class weights must be trained"
    losses = first.history["train/loss"]
    assert losses[-1] < losses[0]
    # a second call with the same checkpoint loads the finished run: same snapshots, no retraining
    second, _ = run(tmp_path / "ck.pt")
    assert second.history.resumed_from == 5
    for s in first.snapshots:
        torch.testing.assert_close(second.snapshots[s], first.snapshots[s])
    torch.testing.assert_close(second.test_embedding, first.test_embedding)


def test_train_toy_updates_moving_centres():
    p = toy2d.make_problem("separated", 120, 60, num_classes=3, seed=1)
    loss = toy2d.LossSum({"s": SoftmaxLoss(3, 2), "c": CenterLoss(3, 2)}, {"s": 1.0, "c": 0.5})
    c0 = loss.terms["c"].centers.clone()
    out = toy2d.train_toy(toy2d.EmbeddingMLP(p.in_dim, 16), loss, p, epochs=3, batch_size=30, lr=0.02,
                          snapshot_steps=[0], seed=0, progress=False)
    assert not torch.allclose(out.loss.terms["c"].centers, c0)
    assert not out.loss.training  # returned in eval mode


def grad_loop(loss, others, olab, q_label, grid):
    out = []
    for q in grid:
        qq = q.clone().double().requires_grad_(True)
        batch = torch.cat([qq[None], others.double()])
        lab = torch.cat([torch.tensor([q_label]), olab])
        (g,) = torch.autograd.grad(loss(batch, lab), qq)
        out.append(-g)
    return torch.stack(out)


@pytest.mark.parametrize("make", [lambda: ContrastiveLoss(neg_margin=1.5), lambda: TripletLoss(margin=0.5),
                                  lambda: SoftmaxLoss(3, 2), lambda: AngularMarginLoss(2, 3, scale=8.0, margin=0.3),
                                  lambda: LargeMarginLoss(3, 2)])
def test_gradient_field_matches_a_loop_over_grid_points(make):
    torch.manual_seed(0)
    loss = make().double()
    if isinstance(loss, LargeMarginLoss):
        loss.centers.copy_(torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64))
    others = torch.randn(10, 2, dtype=torch.float64)
    olab = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    grid, gx, gy = toy2d.make_grid(others, n=6)
    assert grid.shape == (36, 2) and gx.shape == (6, 6)
    field = toy2d.gradient_field(loss, others, olab, 1, grid)
    loss.eval()
    ref = grad_loop(loss, others, olab, 1, grid)
    torch.testing.assert_close(field, ref, rtol=1e-8, atol=1e-10)


def test_gradient_field_of_center_loss_is_the_analytic_pull_and_leaves_centres_alone():
    loss = CenterLoss(2, 2)
    loss.centers.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    loss.train()
    before = loss.centers.clone()
    others = torch.randn(5, 2)
    olab = torch.tensor([0, 1, 0, 1, 1])
    grid, _, _ = toy2d.make_grid(others, n=4)
    field = toy2d.gradient_field(loss, others, olab, 0, grid)
    expected = -2 * (grid - before[0].double()) / 6
    torch.testing.assert_close(field, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(loss.centers, before) and loss.training  # eval during the field, restored after


def test_embedding_measures_on_a_known_configuration():
    # two classes at (+-2, 0), each point on its mean except one class-0 point moved by 0.5
    tr = torch.tensor([[2.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [-2.0, 0.0]])
    ytr = torch.tensor([0, 0, 1, 1])
    te = torch.tensor([[2.0, 0.0], [2.0, 0.5], [-2.0, 0.0], [-2.0, 0.0]])
    m = toy2d.embedding_measures(tr, ytr, te, ytr, 2)
    s = 4.0  # distance between the class means
    assert m["intra"] == pytest.approx(0.5 / 4 / s)
    assert m["ncm_acc"] == pytest.approx(100.0)
    # margins of the four points: (4-0)/4 = 1, (sqrt(16.25)-0.5)/4, 1, 1 -> median 1
    assert m["margin"] == pytest.approx(1.0)
    assert m["ang_margin"] == pytest.approx(180.0)
    assert m["norm"] == pytest.approx((2 + math.hypot(2, 0.5) + 2 + 2) / 4)
    lo = toy2d.embedding_measures(tr, ytr, te, ytr, 2, quantile=0.0)
    assert lo["margin"] == pytest.approx((math.sqrt(16.25) - 0.5) / 4)
    # every measure but the norm is unchanged when the embedding is scaled
    big = toy2d.embedding_measures(3 * tr, ytr, 3 * te, ytr, 2)
    for k in ("intra", "margin", "ang_intra", "ang_margin", "ncm_acc"):
        assert big[k] == pytest.approx(m[k], abs=1e-9)
    assert big["norm"] == pytest.approx(3 * m["norm"])


def test_radial_share_separates_scale_invariant_losses():
    torch.manual_seed(0)
    x = torch.randn(30, 2)
    y = torch.randint(0, 3, (30,))
    assert toy2d.radial_share(AngularMarginLoss(2, 3, scale=8.0, margin=0.3), x, y) < 1e-5
    lm = LargeMarginLoss(3, 2)
    lm.centers.copy_(torch.randn(3, 2))
    assert toy2d.radial_share(lm, x, y) < 1e-5
    center = CenterLoss(3, 2)  # centres at 0: the gradient 2 x / N is purely radial
    center.centers.zero_()
    assert toy2d.radial_share(center, x, y) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < toy2d.radial_share(ContrastiveLoss(), x, y) < 1.0
    # a loss with zero gradient at every scale reports 0
    assert toy2d.radial_share(ContrastiveLoss(neg_margin=1e-9), x, torch.arange(30)) == 0.0


def test_plot_loss_panels_draws_one_row_per_problem():
    import matplotlib.pyplot as plt

    p = toy2d.make_problem("separated", 60, 30, num_classes=3, seed=0)
    loss = SoftmaxLoss(3, 2)
    run = toy2d.train_toy(toy2d.EmbeddingMLP(p.in_dim, 8), loss, p, epochs=2, batch_size=30, lr=0.01,
                          snapshot_steps=[0, 1], seed=0, progress=False)
    grid, gx, gy = toy2d.make_grid(run.test_embedding, n=5)
    g = toy2d.gradient_field(loss, run.test_embedding[:10], p.y_test[:10], 0, grid).numpy()
    field = (gx, gy, g[:, 0].reshape(gx.shape), g[:, 1].reshape(gx.shape), run.test_embedding[:10].numpy(),
             p.y_test[:10].numpy(), 0)
    fig = toy2d.plot_loss_panels("softmax", {"separated": run, "again": run}, {"separated": p, "again": p},
                                 {"separated": field, "again": field}, ["a", "b", "c"])
    assert len(fig.axes) == 2 * 3 + 2  # 2 rows x (first and last snapshot + field), plus 2 colour bars
    assert fig.get_size_inches()[0] <= 9.0  # fits an ~800 px page without shrinking the fonts
    texts = [t for t in fig.findobj(plt.Text) if t.get_text().strip()]
    assert texts and min(t.get_fontsize() for t in texts) >= 9
    plt.close(fig)


def test_ncm_accuracy_uses_the_loss_geometry():
    """Two cones: class 0 along +x at norms 1 and 10, class 1 at 0.5 rad (norm 3). A short class-0 point is
    nearer class 1's Euclidean mean, but its direction is class 0's: cosine NCM gets it right."""
    tr = torch.tensor([[1.0, 0.0], [10.0, 0.0], [3 * math.cos(0.5), 3 * math.sin(0.5)]])
    ytr = torch.tensor([0, 0, 1])
    te = torch.tensor([[1.0, 0.05]])
    euc = toy2d.embedding_measures(tr, ytr, te, torch.tensor([0]), 2)
    cos = toy2d.embedding_measures(tr, ytr, te, torch.tensor([0]), 2, metric="cosine")
    assert euc["ncm_acc"] == 0.0 and euc["ncm_acc_euclid"] == 0.0
    assert cos["ncm_acc"] == 100.0 and cos["ncm_acc_euclid"] == 0.0
    with pytest.raises(ValueError, match="metric"):
        toy2d.embedding_measures(tr, ytr, te, torch.tensor([0]), 2, metric="l1")
