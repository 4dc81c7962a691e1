"""Plots used across the notebooks: training curves, confusion heatmaps, embedding scatters."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

#: matplotlib defaults of the book. The HTML page shows a figure at most ~1200 px wide, so a
#: 16-inch figure at 100 dpi is drawn at ~75 %: these sizes keep its tick labels at ~11 px there,
#: and at full size in narrower figures. Panel layouts stay with each chapter.
BOOK_STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "legend.title_fontsize": 11,
    "figure.titlesize": 14,
    "axes.titleweight": "normal",
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "axes.grid": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


def book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib (done when ``fer_nb.plots`` is imported)."""
    mpl.rcParams.update(BOOK_STYLE)


book_style()


def training_curves(histories: Mapping[str, "object"], keys: Sequence[str], title: str = "",
                    ncols: int | None = None):
    """One panel per key (e.g. ``train/loss``, ``val/acc``); one line per named history."""
    ncols = ncols or len(keys)
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, hist in histories.items():
            ys = hist[key]
            if ys:
                ax.plot(hist["epoch"][: len(ys)], ys, marker="o", ms=3, label=name)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmap(cm: torch.Tensor, class_names: Sequence[str], title: str = "",
                      normalise: bool = True, ax=None):
    """Row-normalised (percent) confusion matrix; rows = true class."""
    import seaborn as sns

    cm = torch.as_tensor(cm, dtype=torch.float64)
    data = 100 * cm / cm.sum(1, keepdim=True).clamp_min(1) if normalise else cm
    if ax is None:
        _, ax = plt.subplots(figsize=(0.7 * len(class_names) + 2, 0.6 * len(class_names) + 1.5))
    sns.heatmap(data.numpy(), annot=True, fmt=".0f" if normalise else "g", cmap="Blues",
                xticklabels=class_names, yticklabels=class_names, cbar=False, ax=ax, vmin=0,
                vmax=100 if normalise else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return ax


def embed_2d(features: torch.Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D projection of ``features`` with scikit-learn's t-SNE (default), UMAP or PCA."""
    x = torch.as_tensor(features).float().cpu().numpy()
    if x.shape[1] <= 2:
        return x[:, :2]
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise ValueError(f"unknown projection {method!r}; use 'tsne', 'umap' or 'pca'")


def embedding_scatter(points: np.ndarray, labels, names: Sequence[str] | None = None, title: str = "",
                      ax=None, s: float = 8, cmap: str = "tab10"):
    """Scatter of 2-D points coloured by integer ``labels`` with a legend of ``names``."""
    labels = np.asarray(torch.as_tensor(labels).cpu())
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    colors = plt.get_cmap(cmap)
    for i, lab in enumerate(np.unique(labels)):
        sel = labels == lab
        name = names[lab] if names is not None and 0 <= lab < len(names) else str(lab)
        ax.scatter(points[sel, 0], points[sel, 1], s=s, color=colors(i % colors.N), label=name, alpha=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(np.unique(labels)) <= 12:
        ax.legend(fontsize=9, markerscale=2, loc="best")
    return ax


def image_grid(images: torch.Tensor, nrow: int, titles: Sequence[str] | None = None, scale: float = 1.4,
               row_labels: Sequence[str] | None = None):
    """Show ``(N, C, H, W)`` images (uint8 or float in [0, 1]) in a grid with optional titles."""
    imgs = torch.as_tensor(images).detach().cpu()
    if imgs.dtype == torch.uint8:
        imgs = imgs.float() / 255
    n = imgs.shape[0]
    ncol = nrow
    rows = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(rows, ncol, figsize=(scale * ncol, scale * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        if i >= n:
            continue
        img = imgs[i].permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=1)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=10)
    if row_labels is not None:
        for r, lab in enumerate(row_labels[:rows]):
            axes[r, 0].set_ylabel(lab, fontsize=10)
    fig.tight_layout()
    return fig
