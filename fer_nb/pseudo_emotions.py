"""Pseudo-emotions: from action-unit outputs to pseudo-class probabilities (Racoviteanu et al., Eq. 6-7).

Ekman's EMFACS prototypes (the paper's Figure 2b) write each basic expression as a sum of AUs:

==========  =====================  ===========================================
emotion     prototype AUs          available among EmotioNet's 12 labelled AUs
==========  =====================  ===========================================
happiness   6 + 12                 6, 12
sadness     1 + 4 + 15             1, 4            (15 missing)
surprise    1 + 2 + 5 + 26         1, 2, 5, 26
fear        1+2+4+5+7+20+26        1, 2, 4, 5, 20, 26 (7 missing)
anger       4 + 5 + 7 + 23         4, 5            (7, 23 missing)
disgust     9 + 15 + 16            9               (15, 16 missing)
contempt    R12 + R14              (not used by the paper)
==========  =====================  ===========================================

Eq. 6: ``p_i^k = f_k(a_1, ..., a_M)``; "to ensure balanced emotion intensity, one should normalize
the expressions with the number of contributing AUs" (Sec. 3.2). Here ``f_k`` is the mean of the
network's AU outputs over the prototype's AUs **that the AU head actually predicts** (a missing AU
cannot contribute, so dividing by the prototype's full length would handicap e.g. disgust, which
keeps 1 of its 3 AUs on EmotioNet). The pseudo-class is ``argmax_k p_i^k`` (Eq. 7), used as the
label of the large-margin loss on the embedding.

Everything is one matrix product ``p = a @ W.T`` with ``W[k, m] = 1 / n_k`` for the available AUs
``m`` of prototype ``k`` (vectorised, differentiable).
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from fer_nb.data.schema import AUS, EXPRESSIONS

#: EMFACS prototypes (FACS AU numbers); contempt's R12 + R14 ignores the laterality.
PROTOTYPES: Mapping[str, tuple[int, ...]] = {
    "anger": (4, 5, 7, 23),
    "disgust": (9, 15, 16),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "contempt": (12, 14),
}
#: The paper's six pseudo-emotions (no contempt), in the book's canonical expression order.
PSEUDO_EMOTIONS: tuple[str, ...] = tuple(e for e in EXPRESSIONS if e in PROTOTYPES and e != "contempt")
#: AUs with manual labels in EmotioNet (the columns of the paper's Table 2).
EMOTIONET_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 17, 20, 25, 26, 43)
#: The "Avg. small" subset of Table 2 (the AUs that Zhao et al. report).
TABLE2_SMALL_AUS: tuple[int, ...] = (1, 4, 5, 6, 12, 25, 26)


def available_aus(au_columns: Sequence[int] = EMOTIONET_AUS,
                  emotions: Sequence[str] = PSEUDO_EMOTIONS) -> dict[str, tuple[int, ...]]:
    """For each emotion, the prototype AUs present among ``au_columns``."""
    cols = set(int(a) for a in au_columns)
    unknown = [e for e in emotions if e not in PROTOTYPES]
    if unknown:
        raise ValueError(f"no EMFACS prototype for {unknown}; known: {sorted(PROTOTYPES)}")
    return {e: tuple(a for a in PROTOTYPES[e] if a in cols) for e in emotions}


def prototype_matrix(au_columns: Sequence[int] = EMOTIONET_AUS, emotions: Sequence[str] = PSEUDO_EMOTIONS,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """``W`` of shape ``(len(emotions), len(au_columns))``: ``1 / n_k`` on prototype ``k``'s available AUs.

    Raises if an emotion keeps no AU at all (its probability would be undefined): drop it from
    ``emotions`` or predict more AUs.
    """
    avail = available_aus(au_columns, emotions)
    empty = [e for e, a in avail.items() if not a]
    if empty:
        raise ValueError(
            f"pseudo-emotion(s) {empty} have no prototype AU among the predicted AUs {tuple(au_columns)}; "
            f"remove them from `emotions` or predict more AUs"
        )
    cols = [int(a) for a in au_columns]
    W = torch.zeros(len(emotions), len(cols), dtype=dtype, device=device)
    for k, e in enumerate(emotions):  # a handful of constants, built once
        for a in avail[e]:
            W[k, cols.index(a)] = 1.0 / len(avail[e])
    return W


def pseudo_emotion_probs(au_outputs: torch.Tensor, au_columns: Sequence[int] = EMOTIONET_AUS,
                         emotions: Sequence[str] = PSEUDO_EMOTIONS) -> torch.Tensor:
    """Eq. 6: ``(B, M)`` AU outputs -> ``(B, C)`` pseudo-class scores (mean over available prototype AUs)."""
    if au_outputs.ndim != 2 or au_outputs.shape[1] != len(au_columns):
        raise ValueError(
            f"au_outputs must be (batch, {len(au_columns)}) for AU columns {tuple(au_columns)}, got "
            f"{tuple(au_outputs.shape)}"
        )
    dt = torch.float64 if au_outputs.dtype == torch.float64 else torch.float32
    if isinstance(au_outputs, FakeTensor):        # never cache a fake tensor (device checks without a GPU)
        W = prototype_matrix(au_columns, emotions, dtype=dt, device=au_outputs.device)
    else:
        W = _cached_matrix(tuple(int(a) for a in au_columns), tuple(emotions), dt, au_outputs.device)
    return au_outputs.to(dt) @ W.T


@functools.lru_cache(maxsize=32)
def _cached_matrix(au_columns: tuple[int, ...], emotions: tuple[str, ...], dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """:func:`prototype_matrix`, built once per (columns, emotions, dtype, device): a training step
    reuses it instead of writing a dozen entries to a device tensor every time (read-only)."""
    return prototype_matrix(au_columns, emotions, dtype=dtype, device=device)


def pseudo_emotion_labels(au_outputs: torch.Tensor, au_columns: Sequence[int] = EMOTIONET_AUS,
                          emotions: Sequence[str] = PSEUDO_EMOTIONS) -> torch.Tensor:
    """Eq. 7: ``u_i = argmax_k p_i^k`` (int64, detached)."""
    return pseudo_emotion_probs(au_outputs.detach(), au_columns, emotions).argmax(1)


def au_columns_index(au_columns: Sequence[int]) -> torch.Tensor:
    """Indices of ``au_columns`` in the book's ``aus`` tensor (:data:`fer_nb.data.schema.AUS` order)."""
    missing = [a for a in au_columns if a not in AUS]
    if missing:
        raise ValueError(f"AUs {missing} are not columns of the book's schema {AUS}")
    return torch.tensor([AUS.index(a) for a in au_columns], dtype=torch.long)
