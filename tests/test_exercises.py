"""The course exercises: every checker passes the hidden solution and fails wrong answers."""
import math

import pytest
import torch

from fer_nb import exercises
from fer_nb.exercises import solutions


@pytest.mark.parametrize("name,solution", [("supcon", solutions.supcon), ("normface_grad", solutions.normface_grad),
                                           ("semi_hard_negative", solutions.semi_hard_negative),
                                           ("margin_boundary", solutions.margin_boundary)])
def test_checker_passes_the_solution(name, solution):
    assert isinstance(exercises.CHECKERS[name](solution), str)
    assert exercises.attempt(exercises.CHECKERS[name], solution) is True


def wrong_supcon(z, y, tau):  # temperature forgotten
    return solutions.supcon(z, y, 1.0)


def wrong_supcon_self(z, y, tau):  # the anchor itself left in the denominator
    zn = torch.nn.functional.normalize(z, dim=1)
    logits = zn @ zn.T / tau
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    eye = torch.eye(len(z), dtype=torch.bool)
    pos = (y[:, None] == y[None, :]) & ~eye
    per = -(log_prob * pos).sum(1) / pos.sum(1).clamp_min(1)
    return per[pos.any(1)].mean()


def wrong_grad(x, y, w, s):  # forgot the projection (I - x x^T): the radial part stays
    xh = x / x.norm(dim=1, keepdim=True)
    wh = torch.nn.functional.normalize(w, dim=1)
    p = torch.softmax(s * xh @ wh.T, 1)
    return s * (p @ wh - wh[y]) / len(x) / x.norm(dim=1, keepdim=True)


def wrong_miner(x, y):  # hardest negative, ignoring "farther than the positive"
    out = solutions.semi_hard_negative(x, y)
    d = torch.cdist(x, x).masked_fill(y[:, None] == y[None, :], float("inf"))
    hardest = d.argmin(1)
    return torch.where(out >= 0, hardest[:, None].expand_as(out), out)


def wrong_boundary(kind, m, theta):  # every margin read as ArcFace's
    return solutions.margin_boundary("arcface", m, theta)


@pytest.mark.parametrize("name,wrong", [("supcon", wrong_supcon), ("supcon", wrong_supcon_self),
                                        ("normface_grad", wrong_grad), ("semi_hard_negative", wrong_miner),
                                        ("margin_boundary", wrong_boundary)])
def test_checker_rejects_wrong_answers(name, wrong):
    with pytest.raises(AssertionError):
        exercises.CHECKERS[name](wrong)
    assert exercises.attempt(exercises.CHECKERS[name], wrong) is False


def test_template_counts_as_not_attempted(capsys):
    def template(*args):
        raise NotImplementedError("write me")

    assert exercises.attempt(exercises.check_supcon, template) is False
    assert "not attempted" in capsys.readouterr().out


def test_margin_boundary_closed_forms():
    assert math.isclose(solutions.margin_boundary("arcface", 0.5, math.pi / 2), (math.pi / 2 - 0.5) / 2)
    assert math.isclose(solutions.margin_boundary("sphereface", 4, math.pi / 2), math.pi / 10)
    assert math.isnan(solutions.margin_boundary("arcface", 2.0, math.pi / 2))
