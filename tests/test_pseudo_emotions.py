"""Pseudo-emotion transition (Racoviteanu et al., Eq. 6-7) against a loop reference."""
from __future__ import annotations

import pytest
import torch

from fer_nb.data.schema import AUS
from fer_nb.pseudo_emotions import (
    EMOTIONET_AUS, PROTOTYPES, PSEUDO_EMOTIONS, TABLE2_SMALL_AUS, au_columns_index, available_aus,
    prototype_matrix, pseudo_emotion_labels, pseudo_emotion_probs,
)


def test_constants():
    assert PSEUDO_EMOTIONS == ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    assert PROTOTYPES["happiness"] == (6, 12) and PROTOTYPES["fear"] == (1, 2, 4, 5, 7, 20, 26)
    assert set(TABLE2_SMALL_AUS) <= set(EMOTIONET_AUS) and len(EMOTIONET_AUS) == 12


def test_available_on_emotionet():
    avail = available_aus(EMOTIONET_AUS)
    assert avail["disgust"] == (9,)
    assert avail["anger"] == (4, 5)
    assert avail["sadness"] == (1, 4)
    assert avail["fear"] == (1, 2, 4, 5, 20, 26)
    assert avail["surprise"] == (1, 2, 5, 26)


def _ref(a, cols, emotions):
    out = torch.zeros(a.shape[0], len(emotions), dtype=torch.float64)
    for i in range(a.shape[0]):
        for k, e in enumerate(emotions):
            aus = [u for u in PROTOTYPES[e] if u in cols]
            out[i, k] = sum(float(a[i, cols.index(u)]) for u in aus) / len(aus)
    return out


@pytest.mark.parametrize("cols", [EMOTIONET_AUS, AUS])
def test_probs_match_loop(cols):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, len(cols), generator=g, dtype=torch.float64)
    emotions = PSEUDO_EMOTIONS if cols == EMOTIONET_AUS else PSEUDO_EMOTIONS + ("contempt",)
    p = pseudo_emotion_probs(a, list(cols), emotions)
    assert torch.allclose(p, _ref(a, list(cols), emotions))
    assert torch.equal(pseudo_emotion_labels(a, list(cols), emotions), p.argmax(1))


def test_normalisation_by_available_aus():
    """All predicted AUs at intensity 1 give every pseudo-emotion probability 1 (balanced)."""
    p = pseudo_emotion_probs(torch.ones(2, 12))
    assert torch.allclose(p, torch.ones(2, 6))
    W = prototype_matrix()
    assert torch.allclose(W.sum(1), torch.ones(6))
    # a pure happiness face (AU6 + AU12) -> happiness
    a = torch.zeros(1, 12)
    a[0, EMOTIONET_AUS.index(6)] = a[0, EMOTIONET_AUS.index(12)] = 1.0
    assert PSEUDO_EMOTIONS[int(pseudo_emotion_labels(a))] == "happiness"
    a = torch.zeros(1, 12)
    for u in (1, 2, 5, 26):
        a[0, EMOTIONET_AUS.index(u)] = 1.0
    assert PSEUDO_EMOTIONS[int(pseudo_emotion_labels(a))] == "surprise"


def test_gradient_and_errors():
    a = torch.rand(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pseudo_emotion_probs(x), (a,))
    with pytest.raises(ValueError, match="no prototype AU"):
        prototype_matrix((1, 2), ("happiness",))
    with pytest.raises(ValueError, match=r"\(batch, 12\)"):
        pseudo_emotion_probs(torch.rand(3, 5))
    with pytest.raises(ValueError, match="not columns"):
        au_columns_index((1, 99))
    assert [AUS[i] for i in au_columns_index(EMOTIONET_AUS)] == list(EMOTIONET_AUS)
