"""Two-dimensional toy problems for looking at what a metric-learning loss does to an embedding.

Used by the course chapter ``notebooks/60_loss_geometry.md``. Everything is small enough to train
a dozen losses on a CPU in seconds:

* :func:`make_problem`: a ``"dense"`` problem (overlapping classes plus a large nuisance factor
  shared across classes, like identity in facial-expression data: low margin, the FER regime of
  the Margin-Mix paper) and a ``"separated"`` one (compact, far-apart classes, like CIFAR's
  regime). Inputs live in ``in_dim`` dimensions; the network maps them to 2-D.
* :class:`EmbeddingMLP`: a tiny MLP with a 2-D output (no normalisation layer, so the losses are
  free to change the scale of the embedding, which is one of the things the chapter measures).
* :func:`train_toy`: trains a network (and the loss's own parameters: class centres, class
  weights) with :func:`fer_nb.train.fit`, recording the embedding of the test points at chosen
  steps (:class:`Snapshots`, stored in the checkpoint so a resumed run keeps them).
* :func:`gradient_field`: ``-dL/dq`` for a query point ``q`` of a given class placed at every
  node of a grid, the other points (and the loss's parameters) held fixed; vectorised over the
  grid with ``torch.func.vmap``.
* :func:`embedding_measures` and :func:`radial_share`: what a trained embedding enforces
  (intra-class compactness, inter-class margin in distance and in angle, dependence on scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

PROBLEMS = {
    # separation: distance between any two class means; noise: per-dimension std of a sample;
    # nuisance: std of a per-"subject" offset shared by all classes (what makes FER dense).
    "dense": {"separation": 2.6, "noise": 0.8, "nuisance": 0.8, "n_subjects": 12},
    "separated": {"separation": 6.0, "noise": 0.5, "nuisance": 0.0, "n_subjects": 1},
}


@dataclass
class ToyProblem:
    """Train/test inputs ``(N, in_dim)`` and integer labels of a toy classification problem."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device | str) -> "ToyProblem":
        return ToyProblem(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                          self.y_test.to(device), self.num_classes)

    def batches(self, batch_size: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
        """One epoch of shuffled training batches ``{"x", "y"}`` (the last short batch is dropped)."""
        n = len(self.y_train)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} > {n} training points; lower batch_size or raise n_train")
        order = torch.randperm(n, generator=generator).to(self.x_train.device)
        return [{"x": self.x_train[order[i:i + batch_size]], "y": self.y_train[order[i:i + batch_size]]}
                for i in range(0, n - batch_size + 1, batch_size)]


def make_problem(kind: str, n_train: int, n_test: int, num_classes: int = 4, in_dim: int = 6,
                 seed: int = 0) -> ToyProblem:
    """A Gaussian toy problem of ``num_classes`` (3-5) classes in ``in_dim`` dimensions.

    Class means sit on a regular simplex (all pairwise distances equal ``separation``), turned by a
    random rotation. A sample is ``mean_y + noise * eps + offset_s`` where ``offset_s`` is the
    offset of one of ``n_subjects`` "subjects" (std ``nuisance``), shared across classes: in the
    ``"dense"`` problem the nuisance is as large as the class separation (low margin), in the
    ``"separated"`` problem there is none. Balanced classes; train and test use disjoint subjects.
    """
    if kind not in PROBLEMS:
        raise ValueError(f"unknown toy problem {kind!r}; use one of {sorted(PROBLEMS)}")
    if not 2 <= num_classes <= in_dim:
        raise ValueError(f"num_classes must be in [2, in_dim={in_dim}], got {num_classes}")
    p = PROBLEMS[kind]
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(in_dim, in_dim, generator=g, dtype=torch.float64))
    simplex = torch.eye(num_classes, in_dim, dtype=torch.float64)
    simplex = simplex - simplex.mean(0, keepdim=True)
    means = (simplex * p["separation"] / math.sqrt(2)) @ rot.T  # ||e_j - e_k|| = sqrt(2)
    n_subj = p["n_subjects"]
    offsets = torch.randn(2 * n_subj, in_dim, generator=g, dtype=torch.float64) * p["nuisance"]

    def draw(n: int, subject_lo: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        s = subject_lo + torch.randint(0, n_subj, (n,), generator=g)
        x = means[y] + p["noise"] * torch.randn(n, in_dim, generator=g, dtype=torch.float64) + offsets[s]
        return x.float(), y

    x_tr, y_tr = draw(n_train, 0)
    x_te, y_te = draw(n_test, n_subj)
    return ToyProblem(kind, x_tr, y_tr, x_te, y_te, num_classes)


class EmbeddingMLP(nn.Module):
    """``in_dim -> hidden -> hidden -> out_dim`` MLP (ReLU), 2-D output by default, no normalisation."""

    def __init__(self, in_dim: int, hidden: int = 32, out_dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LossSum(nn.Module):
    """``sum_k w_k * loss_k(embeddings, labels)``, e.g. softmax + lambda * center loss (Wen et al.)."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} must name the same losses")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float(v) for k, v in weights.items()}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * fn(embeddings, labels) for k, fn in self.terms.items())


class Snapshots:
    """Embeddings of fixed points recorded at chosen training steps; checkpointable (``state_dict``)."""

    def __init__(self) -> None:
        self.points: dict[int, torch.Tensor] = {}

    def add(self, step: int, points: torch.Tensor) -> None:
        self.points[int(step)] = points.detach().float().cpu().clone()

    def state_dict(self) -> dict:
        steps = sorted(self.points)
        return {"steps": torch.tensor(steps, dtype=torch.long),
                "points": torch.stack([self.points[s] for s in steps]) if steps else torch.zeros(0)}

    def load_state_dict(self, state: Mapping) -> None:
        self.points = {int(s): p.clone() for s, p in zip(state["steps"].tolist(), state["points"])}


@dataclass
class ToyRun:
    """Result of :func:`train_toy`."""

    net: EmbeddingMLP
    loss: nn.Module
    snapshots: dict[int, torch.Tensor]
    history: object
    train_embedding: torch.Tensor = field(repr=False)
    test_embedding: torch.Tensor = field(repr=False)


def train_toy(net: nn.Module, loss: nn.Module, problem: ToyProblem, *, epochs: int, batch_size: int, lr: float,
              snapshot_steps: Iterable[int], seed: int, device: torch.device | str = "cpu",
              checkpoint: str | Path | None = None, run_hash: str = "", desc: str = "toy",
              progress: bool = True) -> ToyRun:
    """Train ``net`` (and ``loss``'s parameters, if it has any) with Adam on ``problem``.

    Uses :func:`fer_nb.train.fit` (checkpoint/resume when ``checkpoint`` is given). The loss module
    is trained as a module of its own, so learned centres/class weights are optimised (and moving
    centre updates run in ``train()`` mode) and saved in the checkpoint. ``snapshot_steps`` are
    the numbers of updates after which the test embedding is recorded (0 = at initialisation; the
    last step is always recorded).
    """
    from fer_nb.train import fit

    device = torch.device(device)
    problem = problem.to(device)
    net, loss = net.to(device), loss.to(device)
    params = list(net.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = len(problem.y_train) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} > {len(problem.y_train)} training points")
    total = steps_per_epoch * epochs
    wanted = {int(s) for s in snapshot_steps if 0 <= int(s) <= total} | {total}
    snaps = Snapshots()

    @torch.no_grad()
    def embed_test() -> torch.Tensor:
        was = net.training
        net.eval()
        out = net(problem.x_test)
        net.train(was)
        return out

    def step(batch, ctx):
        if ctx.step in wanted and ctx.step not in snaps.points:
            snaps.add(ctx.step, embed_test())
        emb = net(batch["x"])
        value = loss(emb, batch["y"])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return {"loss": value.detach()}

    def batches(epoch):
        return problem.batches(batch_size, torch.Generator().manual_seed(10_000 * seed + epoch))

    torch.manual_seed(seed)
    history = fit({"net": net, "loss": loss}, {"opt": opt}, step, batches, epochs,
                  extra_state={"snapshots": snaps}, checkpoint=checkpoint, run_hash=run_hash,
                  steps_per_epoch=steps_per_epoch, desc=desc, progress=progress)
    net.eval()
    loss.eval()
    with torch.no_grad():
        test_emb = net(problem.x_test).float().cpu()
        train_emb = net(problem.x_train).float().cpu()
    if total not in snaps.points:
        snaps.add(total, test_emb)
    return ToyRun(net, loss, dict(sorted(snaps.points.items())), history, train_emb, test_emb)


# ------------------------------------------------------------------------------------------- fields

def gradient_field(loss: nn.Module, others: torch.Tensor, other_labels: torch.Tensor, query_label: int,
                   grid: torch.Tensor) -> torch.Tensor:
    """``-dL/dq`` at each grid node ``q`` for a query of class ``query_label``; ``(G, 2)``.

    The batch is ``[q, *others]`` with labels ``[query_label, *other_labels]``; the other points and
    the loss's parameters are held fixed, the loss is put in ``eval()`` mode (no moving centre
    updates) and restored afterwards. Vectorised over the ``G`` grid nodes with
    ``torch.func.vmap(torch.func.grad(...))``, in float64.
    """
    if grid.ndim != 2 or grid.shape[1] != others.shape[1]:
        raise ValueError(f"grid must be (G, {others.shape[1]}), got {tuple(grid.shape)}")
    was = loss.training
    loss.eval()
    dev = others.device
    labels = torch.cat([torch.tensor([query_label], device=dev, dtype=torch.long), other_labels.long()])
    fixed = others.detach().double()
    params = {k: v.detach().double() for k, v in loss.named_parameters()}
    buffers = {k: (v.detach().double() if v.is_floating_point() else v) for k, v in loss.named_buffers()}

    def value(q: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([q[None, :], fixed], 0)
        return torch.func.functional_call(loss, (params, buffers), (batch, labels))

    try:
        grads = torch.func.vmap(torch.func.grad(value))(grid.double().to(dev))
    finally:
        loss.train(was)
    return -grads


def make_grid(points: torch.Tensor, n: int = 15, pad: float = 0.15) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """An ``n x n`` grid covering ``points`` (2-D) with ``pad`` relative padding: ``(n*n, 2)``, X, Y."""
    lo, hi = points.min(0).values.double(), points.max(0).values.double()
    span = (hi - lo).clamp_min(1e-3)
    lo, hi = lo - pad * span, hi + pad * span
    xs = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=torch.float64)
    ys = torch.linspace(float(lo[1]), float(hi[1]), n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), gx.numpy(), gy.numpy()


# ------------------------------------------------------------------------------------------ measures

def _class_means(emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype).index_add_(0, labels, emb)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(emb.dtype)
    return sums / counts[:, None]


def embedding_measures(train_emb: torch.Tensor, train_y: torch.Tensor, test_emb: torch.Tensor,
                       test_y: torch.Tensor, num_classes: int, quantile: float = 0.5,
                       metric: str = "euclidean") -> dict[str, float]:
    """What an embedding enforces, measured on the test points with class means from the training points.

    With class means ``mu_k`` (of the training embeddings) and ``s`` the mean distance between two
    class means (so the Euclidean measures are free of the embedding's scale):

    * ``intra``: ``mean_i ||x_i - mu_{y_i}|| / s`` (intra-class compactness; lower = tighter);
    * ``margin``: the ``quantile`` (default: the median) over test points of
      ``(min_{k != y_i} ||x_i - mu_k|| - ||x_i - mu_{y_i}||) / s``: how much closer a point is to its
      own class mean than to the nearest other one (higher = larger inter-class margin; negative =
      the point is nearer another class's mean);
    * ``ang_intra``: mean angle (degrees) between ``x_i`` and ``mu_{y_i}``;
    * ``ang_margin``: the same quantile of ``min_{k != y_i} angle(x_i, mu_k) - angle(x_i, mu_{y_i})``;
    * ``ncm_acc``: nearest-class-mean accuracy (percent) in the loss's own geometry ``metric``
      (``"euclidean"``, ``"cosine"`` or ``"dot"``, :func:`fer_nb.retrieval.metric_for`; with
      ``"cosine"`` the class means are mean directions), so an angular loss is not judged by
      Euclidean distances it never optimised;
    * ``ncm_acc_euclid``: the same with Euclidean distances to the class means, for every loss;
    * ``norm``: mean ``||x_i||`` (the scale the loss let the embedding take).
    """
    tr, te = train_emb.double(), test_emb.double()
    mu = _class_means(tr, train_y.long().cpu(), num_classes)
    y = test_y.long().cpu()
    d = torch.cdist(te, mu)  # (N, C)
    off = ~torch.eye(num_classes, dtype=torch.bool)
    s = torch.cdist(mu, mu)[off].mean().clamp_min(1e-12)
    own = d.gather(1, y[:, None]).squeeze(1)
    other = d.masked_fill(nn.functional.one_hot(y, num_classes).bool(), float("inf")).min(1).values
    unit = te / te.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mu_unit = mu / mu.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ang = torch.rad2deg(torch.arccos((unit @ mu_unit.T).clamp(-1, 1)))
    ang_own = ang.gather(1, y[:, None]).squeeze(1)
    ang_other = ang.masked_fill(nn.functional.one_hot(y, num_classes).bool(), float("inf")).min(1).values
    from fer_nb.retrieval import ncm_accuracy

    return {
        "intra": float(own.mean() / s),
        "margin": float(torch.quantile((other - own) / s, quantile)),
        "ang_intra": float(ang_own.mean()),
        "ang_margin": float(torch.quantile(ang_other - ang_own, quantile)),
        "ncm_acc": ncm_accuracy(tr, train_y, te, test_y, num_classes, metric),
        "ncm_acc_euclid": 100.0 * float((d.argmin(1) == y).double().mean()),
        "norm": float(te.norm(dim=1).mean()),
    }


def radial_share(loss: nn.Module, emb: torch.Tensor, labels: torch.Tensor,
                 factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> float:
    """Share of the loss's gradient that would change the norms of the embeddings, in [0, 1].

    With ``g_i = dL/dx_i`` at the embedding scaled by a factor ``f`` (parameters held fixed,
    ``eval()`` mode, so no moving centre updates) and ``x_hat_i = x_i / ||x_i||``,

    ``R_f = sum_i |<g_i, x_hat_i>| / sum_i ||g_i||``,

    averaged over the ``factors`` at which the gradient is not zero. A loss that depends on each
    embedding only through its direction has ``g_i`` orthogonal to ``x_i`` (``R = 0``: scale
    invariant); ``R = 1`` means the gradient only moves points along their radius (it can only
    shrink or inflate the embedding). Several scales are used so that a hinge loss that happens to
    be satisfied at the trained scale is still measured where it is active. Returns 0 if the
    gradient is zero at every scale.
    """
    was = loss.training
    loss.eval()
    shares = []
    try:
        for f in factors:
            x = (emb.detach().float() * f).requires_grad_(True)
            (g,) = torch.autograd.grad(loss(x, labels), x)
            total = float(g.norm(dim=1).sum())
            if total > 0:
                unit = x.detach() / x.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
                shares.append(float((g * unit).sum(1).abs().sum()) / total)
    finally:
        loss.train(was)
    return float(np.mean(shares)) if shares else 0.0


# ---------------------------------------------------------------------------------------------- plots

def plot_loss_panels(title: str, runs: Mapping[str, ToyRun], problems: Mapping[str, ToyProblem],
                     fields: Mapping[str, tuple], class_names: Sequence[str] | None = None,
                     max_snapshots: int = 2, panel: float = 2.9):
    """One row per problem: snapshots of the test embedding, then the gradient field (last column).

    ``fields[problem] = (grid_x, grid_y, U, V, others, other_labels, query_label)`` from
    :func:`make_grid` / :func:`gradient_field`. Arrows show the direction of ``-dL/dq`` (unit
    length); their colour is ``log10 ||dL/dq||``. With the default two snapshots (the untrained
    network and the final embedding) a row has three panels of ``panel`` inches: about 800 px wide
    at 100 dpi, fonts of at least 9 pt.
    """
    import matplotlib.pyplot as plt

    names = list(runs)
    steps = sorted(runs[names[0]].snapshots)
    if len(steps) > max_snapshots:
        pick = np.unique(np.linspace(0, len(steps) - 1, max_snapshots).round().astype(int))
        steps = [steps[i] for i in pick]
    ncols = len(steps) + 1
    fig, axes = plt.subplots(len(names), ncols, figsize=(panel * ncols, panel * len(names) + 0.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, name in enumerate(names):
        run, prob = runs[name], problems[name]
        y = prob.y_test.cpu().numpy()
        for c, s in enumerate(steps):
            ax = axes[r, c]
            pts = run.snapshots[s].numpy()
            ax.scatter(pts[:, 0], pts[:, 1], c=[cmap(int(v)) for v in y], s=6, alpha=0.7, linewidths=0)
            ax.set_title(f"{name}, step {s}", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.set_aspect("equal", adjustable="datalim")
        ax = axes[r, -1]
        gx, gy, u, v, others, olab, q = fields[name]
        mag = np.hypot(u, v)
        un, vn = u / np.maximum(mag, 1e-12), v / np.maximum(mag, 1e-12)
        col = np.log10(np.maximum(mag, 1e-8))
        ax.scatter(others[:, 0], others[:, 1], c=[cmap(int(t)) for t in olab], s=12, alpha=0.8, linewidths=0)
        qv = ax.quiver(gx, gy, un, vn, col, cmap="viridis", angles="xy", pivot="mid", width=0.006)
        cb = fig.colorbar(qv, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=9)
        cb.set_label("log10 |grad|", fontsize=9)
        ax.set_title(f"{name}: field, class-{q} point", fontsize=10, color=cmap(q))
        ax.tick_params(labelsize=9)
        ax.set_aspect("equal", adjustable="datalim")
    if class_names:
        handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i), label=n) for i, n in enumerate(class_names)]
        fig.legend(handles=handles, loc="upper right", fontsize=9, ncol=len(class_names))
    fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    fig.tight_layout()
    return fig


__all__ = ["PROBLEMS", "ToyProblem", "make_problem", "EmbeddingMLP", "LossSum", "Snapshots", "ToyRun", "train_toy",
           "gradient_field", "make_grid", "embedding_measures", "radial_share", "plot_loss_panels"]
