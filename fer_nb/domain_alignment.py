"""How well are two domains aligned in a feature space? A number to go with a t-SNE picture.

Takashima et al. judge alignment by eye (their Figure 3: t-SNE of the features before the
gradient reversal layer). A number that says the same thing: train a *fresh* domain classifier on
the frozen features of source and target samples and measure how well it separates them on held-out
samples. Aligned (domain-invariant) features give chance accuracy.

* ``domain_acc``: held-out accuracy of the fresh classifier (0.5 = indistinguishable, with
  balanced classes, which this module enforces by subsampling the larger domain);
* ``proxy_a_distance``: Ben-David et al.'s proxy A-distance ``2 (1 - 2 err)`` with
  ``err = 1 - domain_acc`` (2 = perfectly separable, 0 = aligned; slightly negative values are
  chance fluctuations).

The classifier is an L2-regularised logistic regression on standardised features (the usual
linear probe; ``classifier="mlp"`` uses a small MLP for non-linear separability), trained on a
random half and tested on the other half of a class-balanced sample, from scikit-learn.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["domain_alignment", "proxy_a_distance"]

CLASSIFIERS = ("logistic", "mlp")


def proxy_a_distance(error: float) -> float:
    """``2 (1 - 2 error)`` (Ben-David et al., 2007)."""
    return 2.0 * (1.0 - 2.0 * float(error))


def domain_alignment(source_features, target_features, *, classifier: str = "logistic", test_fraction: float = 0.5,
                     seed: int = 0, max_per_domain: int | None = 2000) -> dict[str, float]:
    """Held-out accuracy of a fresh source-vs-target classifier on frozen features, and the PAD.

    Args:
        source_features, target_features: ``(N_s, D)`` and ``(N_t, D)`` tensors or arrays.
        classifier: ``"logistic"`` (linear probe) or ``"mlp"`` (one hidden layer of 64).
        test_fraction: share of the balanced sample held out for testing.
        seed: seeds the subsampling, the split and the classifier.
        max_per_domain: cap on samples per domain (keeps the probe fast); ``None`` = no cap.

    Returns ``{"domain_acc", "domain_error", "proxy_a_distance", "n_per_domain"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    xs = torch.as_tensor(source_features).detach().float().cpu().numpy()
    xt = torch.as_tensor(target_features).detach().float().cpu().numpy()
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {xs.shape} and {xt.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(xt).all()):
        raise ValueError("features contain NaN/inf; the model did not train cleanly")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    n = min(len(xs), len(xt), max_per_domain or max(len(xs), len(xt)))
    n_test = int(round(n * test_fraction))
    if n < 4 or n_test < 1 or n - n_test < 2:
        raise ValueError(f"need at least 4 samples per domain for a train/test split, got {n}")
    xs, xt = xs[rng.permutation(len(xs))[:n]], xt[rng.permutation(len(xt))[:n]]
    # the same number of each domain in train and test, so chance is exactly 0.5
    tr = np.concatenate([xs[n_test:], xt[n_test:]])
    te = np.concatenate([xs[:n_test], xt[:n_test]])
    ytr = np.r_[np.zeros(n - n_test), np.ones(n - n_test)]
    yte = np.r_[np.zeros(n_test), np.ones(n_test)]
    if classifier == "logistic":
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    else:
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
    model = make_pipeline(StandardScaler(), clf).fit(tr, ytr)
    acc = float((model.predict(te) == yte).mean())
    return {"domain_acc": acc, "domain_error": 1.0 - acc, "proxy_a_distance": proxy_a_distance(1.0 - acc),
            "n_per_domain": float(n)}
