"""ContrastiveLoss and SoftmaxLoss: loop references, pytorch-metric-learning, gradcheck, degenerate batches."""
import pytest
import torch

from fer_nb.losses.contrastive import ContrastiveLoss, reference_contrastive
from fer_nb.losses.softmax import SoftmaxLoss, reference_softmax


@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum"])
@pytest.mark.parametrize("power,hinge_power,coefficient,normalize",
                         [(1, 2, 0.5, False), (1, 1, 1.0, True), (2, 1, 1.0, False), (2, 2, 0.5, True)])
def test_contrastive_matches_loop(reduction, power, hinge_power, coefficient, normalize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, -1, 1, 1, 2])
    loss = ContrastiveLoss(neg_margin=1.2, pos_margin=0.3, power=power, hinge_power=hinge_power,
                           coefficient=coefficient, normalize=normalize, reduction=reduction)
    ref = float(reference_contrastive(x.double(), y, 1.2, 0.3, power, hinge_power, coefficient, normalize, reduction))
    assert float(loss(x.double(), y)) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert float(loss(x, y)) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_contrastive_none_is_upper_triangle_of_pair_losses():
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, -1])
    loss = ContrastiveLoss(reduction="none")
    mat = loss(x, y)
    assert mat.shape == (6, 6)
    assert torch.all(mat.tril() == 0)
    assert float(mat.sum()) == pytest.approx(float(ContrastiveLoss(reduction="sum")(x, y)))
    assert torch.all(mat[:, 5] == 0)  # the unlabelled row takes part in no pair


def test_contrastive_is_hadsell_eq4_by_default():
    """Two points at distance d: 0.5 d^2 if similar, 0.5 max(0, m - d)^2 if not."""
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4]], dtype=torch.float64)  # d = 0.5
    loss = ContrastiveLoss(neg_margin=2.0, reduction="sum")
    assert float(loss(x, torch.tensor([0, 0]))) == pytest.approx(0.5 * 0.25)
    assert float(loss(x, torch.tensor([0, 1]))) == pytest.approx(0.5 * 1.5 ** 2)


@pytest.mark.parametrize("reducer_name,reduction", [("MeanReducer", "mean"), ("AvgNonZeroReducer", "mean_nonzero")])
@pytest.mark.parametrize("power,normalize", [(1, True), (1, False), (2, False)])
def test_contrastive_matches_pytorch_metric_learning(reducer_name, reduction, power, normalize):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning import distances, reducers

    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64) * (0.4 if not normalize else 1.0)
    y = torch.randint(0, 3, (16,), generator=g)
    ref_fn = pml_losses.ContrastiveLoss(
        pos_margin=0.2, neg_margin=0.9,
        distance=distances.LpDistance(p=2, power=power, normalize_embeddings=normalize),
        reducer=getattr(reducers, reducer_name)())
    ours_fn = ContrastiveLoss(neg_margin=0.9, pos_margin=0.2, power=power, hinge_power=1, coefficient=1.0,
                              normalize=normalize, reduction=reduction)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, ours = ref_fn(xa, y), ours_fn(xb, y)
    ref.backward()
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-9, abs=1e-12)
    assert 0 < float(ours.detach())
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_contrastive_gradcheck(reduction):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    for loss in (ContrastiveLoss(neg_margin=2.0, reduction=reduction),
                 ContrastiveLoss(neg_margin=1.5, pos_margin=0.2, power=2, hinge_power=1, coefficient=1.0,
                                 normalize=True, reduction=reduction)):
        assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))


@pytest.mark.parametrize("case", ["single_class", "all_unlabelled", "zeros", "batch_of_one", "empty_class",
                                  "coincident"])
@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum"])
def test_contrastive_degenerate_batches_are_finite(case, reduction):
    x = torch.randn(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    if case == "single_class":
        y = torch.zeros(6, dtype=torch.long)
    elif case == "all_unlabelled":
        y = torch.full((6,), -1)
    elif case == "zeros":
        x = torch.zeros(6, 2)
    elif case == "batch_of_one":
        x, y = x[:1], y[:1]
    elif case == "empty_class":
        y = torch.tensor([0, 0, 2, 2, 0, 2])  # class 1 has no member
    elif case == "coincident":
        x = torch.ones(6, 2)
    for normalize in (False, True):
        e = x.clone().requires_grad_(True)
        out = ContrastiveLoss(normalize=normalize, reduction=reduction)(e, y)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(e.grad).all()
    if case in ("all_unlabelled", "batch_of_one"):
        assert float(out.detach()) == 0.0


def test_contrastive_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss(reduction="avg")
    with pytest.raises(ValueError, match="neg_margin"):
        ContrastiveLoss(neg_margin=0.1, pos_margin=0.5)
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss()(torch.randn(4, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="long"):
        ContrastiveLoss()(torch.randn(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_contrastive_under_bf16_inputs_computes_in_float32():
    x = torch.randn(8, 3)
    y = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    out = ContrastiveLoss()(x.bfloat16(), y)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_matches_loop_and_torch_cross_entropy(reduction):
    torch.manual_seed(0)
    loss = SoftmaxLoss(4, 3, reduction=reduction).double()
    x = torch.randn(9, 3, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 3, -1, 1, 2, 0, 3])
    ref = float(reference_softmax(x, y, loss.weight.detach(), loss.bias.detach(), reduction))
    assert float(loss(x, y).detach()) == pytest.approx(ref, rel=1e-10)
    ce = torch.nn.functional.cross_entropy(x @ loss.weight.T + loss.bias, y, ignore_index=-1, reduction=reduction)
    assert float(loss(x, y).detach()) == pytest.approx(float(ce.detach()), rel=1e-10)
    per = SoftmaxLoss(4, 3, reduction="none").double()
    per.load_state_dict(loss.state_dict())
    assert per(x, y).shape == (9,) and float(per(x, y)[4].detach()) == 0.0


def test_softmax_gradcheck_in_embeddings_and_head():
    torch.manual_seed(1)
    loss = SoftmaxLoss(3, 2).double()
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 2, -1])
    w = loss.weight.detach().clone().requires_grad_(True)
    b = loss.bias.detach().clone().requires_grad_(True)

    def f(e, w_, b_):
        return torch.func.functional_call(loss, {"weight": w_, "bias": b_}, (e, y))

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("case", ["single_class", "all_unlabelled", "zeros", "batch_of_one", "empty_class"])
def test_softmax_degenerate_batches_are_finite(case):
    loss = SoftmaxLoss(3, 2)
    x = torch.randn(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    if case == "single_class":
        y = torch.zeros(6, dtype=torch.long)
    elif case == "all_unlabelled":
        y = torch.full((6,), -1)
    elif case == "zeros":
        x = torch.zeros(6, 2)
    elif case == "batch_of_one":
        x, y = x[:1], y[:1]
    elif case == "empty_class":
        y = torch.tensor([0, 0, 2, 2, 0, 2])
    e = x.clone().requires_grad_(True)
    out = loss(e, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(e.grad).all() and torch.isfinite(loss.weight.grad).all()
    if case == "zeros":  # logits are the biases only
        ref = torch.nn.functional.cross_entropy(loss.bias.detach().expand(6, 3), y)
        assert float(out.detach()) == pytest.approx(float(ref), rel=1e-6)


def test_softmax_bad_inputs_are_explained():
    loss = SoftmaxLoss(3, 2)
    with pytest.raises(ValueError, match="embedding_dim=4"):
        loss(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        loss(torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="reduction"):
        SoftmaxLoss(3, 2, reduction="mean_nonzero")
