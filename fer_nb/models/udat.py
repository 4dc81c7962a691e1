"""The network of UDAT / UDAT-AS (Takashima et al.): a modified VGG16 with a domain classifier.

Sec. VI-B of the paper: "the modified version of the VGG16 architecture, which introduced 13
convolutional layers and 4 fully-connected layers ... the last layer corresponds to a softmax
layer with linear transformation. When we performed UDAT, the domain classification network was
connected to the second fully-connected layer. The domain classification network was composed
of 3 fully-connected layers where the last layer corresponds to the softmax layer or the angular
softmax layer." So, in the notation of Eq. 1, 5 and 12:

* ``G_f`` (feature extractor, :meth:`UDATNet.features`): 13 convs of VGG16 (configuration "D",
  :func:`fer_nb.models.backbones.vgg16`) -> FC1 -> FC2. Its output is the "feature before the
  gradient reversal layer" of Figure 3.
* ``G_y`` (label predictor, :meth:`UDATNet.classify`): FC3 -> FC4, the softmax layer of Eq. 2.
* ``G_d`` (domain classifier, :class:`DomainClassifier`): gradient reversal -> FC -> FC -> output
  layer, which is a linear softmax layer (Eq. 6, "UDAT"), an angular softmax (Eq. 13-14,
  "UDAT-AS") or an angular softmax with additive angular margin (Eq. 15-16, "UDAT-AS with margin").

The paper does not give the FC widths; VGG16's are 4096 (``fc_dim``). ``width`` scales the conv
channels and ``fc_dim``/``domain_dim`` the FC layers so that ``smoke`` runs take seconds on a CPU.
:func:`udat_losses` computes Eq. 17 and 18 for one source batch and one target batch; one
``backward()`` of their sum and one SGD step is Eq. 19-21 (the reversal layer supplies the
``-lambda``).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fer_nb.losses.angular_margin import AngularMarginLoss, working_dtype
from fer_nb.losses.grl import GradientReversal
from fer_nb.models.backbones import vgg16

__all__ = ["DOMAIN_HEADS", "DomainClassifier", "UDATNet", "udat_losses"]

#: Output layers of the domain classifier: Eq. 6 (softmax), Eq. 13-14 (angular), Eq. 15-16 (angular + margin).
DOMAIN_HEADS = ("softmax", "angular", "angular_margin")


class DomainClassifier(nn.Module):
    """``G_d``: 3 fully-connected layers; the last is a softmax or an angular softmax layer.

    Args:
        in_dim: width of the features it reads (FC2's output).
        hidden: width of its two hidden FC layers.
        head: one of :data:`DOMAIN_HEADS`.
        scale, margin, overflow: ``s``, ``m`` (radians) and the ``pi - m`` rule of the angular head
            (:class:`fer_nb.losses.angular_margin.AngularMarginLoss`); ``margin`` is used only by
            ``"angular_margin"``.
        num_domains: 2 (source = 0, target = 1).

    ``forward(features, domains) -> loss`` (Eq. 8 / Eq. 18, mean over the batch);
    :meth:`logits` gives the margin-free domain logits.
    """

    def __init__(self, in_dim: int, hidden: int = 1024, head: str = "softmax", scale: float = 64.0,
                 margin: float = 0.5, overflow: str = "arcface", num_domains: int = 2):
        super().__init__()
        if head not in DOMAIN_HEADS:
            raise ValueError(f"unknown domain head {head!r}; use one of {DOMAIN_HEADS}")
        self.head = head
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        if head == "softmax":
            self.out = nn.Linear(hidden, num_domains)
        else:
            self.out = AngularMarginLoss(hidden, num_domains, scale=scale,
                                         margin=margin if head == "angular_margin" else 0.0,
                                         overflow=overflow, reduction="mean")

    def extra_repr(self) -> str:
        return f"head={self.head!r}"

    def pre_output(self, features: torch.Tensor) -> torch.Tensor:
        """``d'`` of Eq. 5 / ``r'`` of Eq. 12 (after the two hidden layers)."""
        return self.body(features)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        h = self.pre_output(features)
        return self.out(h) if self.head == "softmax" else self.out.logits(h)

    def forward(self, features: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        h = self.pre_output(features)
        if self.head == "softmax":
            with torch.autocast(h.device.type, enabled=False):  # the float head reads bf16 features under autocast
                logits = self.out(h.to(self.out.weight.dtype))
                return F.cross_entropy(logits.to(working_dtype(logits)), domains)
        return self.out(h, domains)


class UDATNet(nn.Module):
    """Modified VGG16 (13 conv + 4 FC) with an optional domain classifier on FC2 (Sec. VI-B).

    Args:
        in_channels: 3 (RGB) or 1.
        num_classes: expression classes (7 in the paper).
        width: multiplier on VGG16's conv channels (1.0 = VGG16).
        fc_dim: width of FC1-FC3 (4096 in VGG16).
        domain_head: ``None`` (no domain classifier: source only / train on target) or one of
            :data:`DOMAIN_HEADS`.
        domain_dim: width of the domain classifier's hidden layers.
        lambda_: trade-off of Eq. 11 / 21, held by the gradient reversal layer (settable).
        scale, margin, overflow: angular head settings (``s = 64``, ``m = 0.5`` in the paper).
        batch_norm: BatchNorm after each conv (not in the paper's VGG16; see the notebook).
        pool_size: adaptive average pool after the convs (7 for 224 px input, 1 for 32-64 px).
        dropout: dropout after FC1, FC2, FC3 (VGG16 uses 0.5).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 7, *, width: float = 1.0, fc_dim: int = 4096,
                 domain_head: str | None = None, domain_dim: int = 1024, lambda_: float = 0.0,
                 scale: float = 64.0, margin: float = 0.5, overflow: str = "arcface",
                 batch_norm: bool = False, pool_size: int = 7, dropout: float = 0.5):
        super().__init__()
        if domain_head is not None and domain_head not in DOMAIN_HEADS:
            raise ValueError(f"unknown domain_head {domain_head!r}; use None or one of {DOMAIN_HEADS}")
        self.backbone = vgg16(in_channels, width, batch_norm=batch_norm, pool_size=pool_size)
        d = self.backbone.feature_dim

        def fc(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, o), nn.ReLU(inplace=True))

        self.fc1, self.fc2, self.fc3 = fc(d, fc_dim), fc(fc_dim, fc_dim), fc(fc_dim, fc_dim)
        self.drop = nn.Dropout(dropout)
        self.fc4 = nn.Linear(fc_dim, num_classes)  # softmax layer, Eq. 2
        self.feature_dim = fc_dim
        self.grl = GradientReversal(lambda_)
        self.domain = (DomainClassifier(fc_dim, domain_dim, domain_head, scale, margin, overflow)
                       if domain_head is not None else None)

    @property
    def lambda_(self) -> float:
        return self.grl.lambda_

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        self.grl.lambda_ = GradientReversal(value).lambda_

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``G_f(x)``: convs -> FC1 -> FC2 (the feature before the reversal layer, Figure 3)."""
        if x.ndim != 4 or min(x.shape[-2:]) < 32:
            raise ValueError(f"UDATNet needs images (B, C, H, W) of at least 32x32 px (VGG16 halves them "
                             f"five times), got {tuple(x.shape)}; use image_size >= 32")
        return self.fc2(self.drop(self.fc1(self.backbone(x))))

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """``G_y(f)``: FC3 -> FC4, the pre-softmax logits ``w_i^T y'`` of Eq. 2."""
        return self.fc4(self.drop(self.fc3(self.drop(f))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def domain_loss(self, f: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """``L_d`` (Eq. 8) or ``L_r`` (Eq. 18) of features ``f`` through the reversal layer."""
        if self.domain is None:
            raise RuntimeError("this UDATNet has no domain classifier; build it with domain_head=...")
        return self.domain(self.grl(f), domains)

    def feature_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of ``G_f`` (convs, FC1, FC2): what a pre-trained face model (VGGFace) provides."""
        keep = ("backbone.", "fc1.", "fc2.")
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(keep)}

    def load_feature_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Initialise ``G_f`` from :meth:`feature_state_dict` of another net (fine-tuning, Table II)."""
        own = {k for k in self.state_dict() if k.startswith(("backbone.", "fc1.", "fc2."))}
        if set(state) != own:
            raise KeyError(f"feature state does not fit this net: missing {sorted(own - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - own)[:3]}; build both nets with the same "
                           f"in_channels/width/fc_dim/batch_norm/pool_size")
        self.load_state_dict(state, strict=False)


def udat_losses(model: UDATNet, source: torch.Tensor, source_labels: torch.Tensor,
                target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Losses of one UDAT / UDAT-AS step (Eq. 17-18): label loss on the labelled source batch,
    domain loss on source (domain 0) + target (domain 1) through the reversal layer.

    Source and target go through ``G_f`` in one batch (BatchNorm, if any, sees both). With no
    ``target`` or no domain classifier this is plain supervised training (Eq. 3). Returns
    ``loss = L_y + L_d`` (``backward`` of it gives Eq. 19-21 through the reversal layer), the parts,
    and the domain classifier's accuracy on the batch.
    """
    if target is None or model.domain is None:
        logits = model(source)
        loss_y = F.cross_entropy(logits.to(working_dtype(logits)), source_labels)
        return {"loss": loss_y, "loss_y": loss_y,
                "acc": (logits.argmax(1) == source_labels).float().mean()}
    n = source.shape[0]
    f = model.features(torch.cat([source, target]))
    logits = model.classify(f[:n])
    loss_y = F.cross_entropy(logits.to(working_dtype(logits)), source_labels)  # Eq. 17 (1/N over the source)
    domains = torch.cat([torch.zeros(n, dtype=torch.long, device=f.device),
                         torch.ones(target.shape[0], dtype=torch.long, device=f.device)])
    loss_d = model.domain_loss(f, domains)  # Eq. 18 (1/(N+M) over source + target)
    with torch.no_grad():
        d_acc = (model.domain.logits(f).argmax(1) == domains).float().mean()
    return {"loss": loss_y + loss_d, "loss_y": loss_y, "loss_d": loss_d,
            "acc": (logits.argmax(1) == source_labels).float().mean(), "domain_acc": d_acc}
