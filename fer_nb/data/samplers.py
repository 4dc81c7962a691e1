"""Identity-aware tuple batches of Liu et al. (CVPRW 2017, Sec. 3 and 5.2).

For each query image ``q`` (expression ``e``, subject ``s``) a tuple is

* ``M`` **positives**: images of expression ``e`` from *other* subjects, chosen at random
  ("random searching ... to select the other 6 (or 5) same expression images");
* ``N = K - 1`` **negatives**: one image of every other expression of the dataset, **from subject
  s** (identity-aware hard-negative mining: the negatives differ from the query only by the
  expression). ``N`` equals 6 for CK+/SFEW (7 classes) and 5 for MMI (6 classes), as in the paper.

**Fallback (paper, Sec. 5.2):** "When the query example lacks some expression images from the same
subject, the corresponding expression images sharing the same ID with any other positive examples
are used." So a missing (subject s, expression e') cell is filled from the subject of a positive
that has it (a random one among them). If no positive's subject has it either, a random image of
``e'`` from any subject is used (the paper does not cover this; :attr:`TupleBatch.source` records
it). When no other subject shows expression ``e``, the positives fall back to other images of
``e`` from subject ``s`` and finally to the query itself (again recorded).

The row layout of a tuple is ``[q, p_1..p_M, n_1..n_N]``; :func:`tuple_groups` gives the group ids
that :mod:`fer_nb.losses` use (query first). Everything is vectorised over the queries of a chunk
(score matrices of shape ``(X, n)`` / ``(X, N, n)`` with random tie-breaking and ``topk`` /
``argmax``), and all randomness comes from the given ``torch.Generator``.

Example::

    sampler = IdentityAwareSampler(labels, subjects, n_positives=6, generator=torch.Generator().manual_seed(0))
    for tb in sampler.epoch(tuples_per_batch=12):
        batch_rows = tb.indices.reshape(-1)          # 12 x (1 + 6 + 6) = 156 image rows
        groups = tuple_groups(tb.indices.shape[0], tb.indices.shape[1])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

#: Codes of :attr:`TupleBatch.source` for each negative slot.
SAME_SUBJECT, POSITIVE_SUBJECT, ANY_SUBJECT = 0, 1, 2
#: Codes for each positive slot.
OTHER_SUBJECT, SAME_SUBJECT_POSITIVE, QUERY_ITSELF = 0, 1, 2


@dataclass
class TupleBatch:
    """``indices`` ``(X, 1 + M + N)`` dataset rows; ``neg_source`` ``(X, N)`` and ``pos_source``
    ``(X, M)`` say where each pick came from (see the module constants)."""

    indices: torch.Tensor
    neg_source: torch.Tensor
    pos_source: torch.Tensor
    n_positives: int
    n_negatives: int

    def fallback_rate(self) -> float:
        """Fraction of negatives that did not come from the query's own subject."""
        return float((self.neg_source != SAME_SUBJECT).float().mean()) if self.neg_source.numel() else 0.0


def tuple_groups(n_tuples: int, tuple_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Group id of each row of ``indices.reshape(-1)`` (tuple ``t`` -> ``t``)."""
    return torch.arange(n_tuples, device=device).repeat_interleave(tuple_size)


class IdentityAwareSampler:
    """Builds identity-aware (query, M positives, N negatives) tuples over a labelled dataset.

    Args:
        labels: ``(n,)`` expression ids (``-1`` rows are never used).
        subjects: ``(n,)`` subject ids (``-1`` = unknown is an error: negatives need identities).
        n_positives: ``M``.
        generator: seeded ``torch.Generator`` (CPU); all draws come from it.
        chunk: queries scored at once (memory ``chunk * K * n`` floats).
    """

    def __init__(self, labels: torch.Tensor, subjects: torch.Tensor, n_positives: int,
                 generator: torch.Generator | None = None, chunk: int = 256):
        labels = torch.as_tensor(labels).long().cpu()
        subjects = torch.as_tensor(subjects).long().cpu()
        if labels.shape != subjects.shape or labels.ndim != 1:
            raise ValueError(f"labels {tuple(labels.shape)} and subjects {tuple(subjects.shape)} must be equal 1-D shapes")
        usable = labels >= 0
        if bool((subjects[usable] < 0).any()):
            raise ValueError("identity-aware sampling needs subject ids for every labelled image (subject -1 found); "
                             "label identities first (the paper uses an off-the-shelf face recogniser for SFEW)")
        if n_positives < 1:
            raise ValueError(f"n_positives must be >= 1, got {n_positives}")
        self.labels, self.subjects = labels, subjects
        self.usable = usable
        self.classes = torch.unique(labels[usable])
        if len(self.classes) < 2:
            raise ValueError(f"identity-aware sampling needs >= 2 expression classes, found {self.classes.tolist()}")
        self.n_positives = int(n_positives)
        self.n_negatives = len(self.classes) - 1
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.chunk = int(chunk)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def build(self, queries: torch.Tensor) -> TupleBatch:
        """Tuples for the given query rows (vectorised per chunk)."""
        queries = torch.as_tensor(queries).long().cpu()
        if bool((self.labels[queries] < 0).any()):
            raise ValueError("queries must be labelled rows (expression >= 0)")
        parts = [self._build_chunk(queries[i:i + self.chunk]) for i in range(0, len(queries), self.chunk)]
        if not parts:
            m, n = self.n_positives, self.n_negatives
            empty = torch.zeros(0, dtype=torch.long)
            return TupleBatch(empty.reshape(0, 1 + m + n), empty.reshape(0, n), empty.reshape(0, m), m, n)
        return TupleBatch(torch.cat([p.indices for p in parts]), torch.cat([p.neg_source for p in parts]),
                          torch.cat([p.pos_source for p in parts]), self.n_positives, self.n_negatives)

    def _build_chunk(self, q: torch.Tensor) -> TupleBatch:
        y, s, ok = self.labels, self.subjects, self.usable
        m, n_rows = self.n_positives, len(y)
        yq, sq = y[q], s[q]
        same_expr = (y[None, :] == yq[:, None]) & ok[None, :]              # (X, n)
        same_subj = s[None, :] == sq[:, None]
        not_self = torch.arange(n_rows)[None, :] != q[:, None]
        # --- positives: same expression, other subject (priority 3), else same subject (2), else the query (1)
        prio = torch.where(same_expr & ~same_subj, 3.0, torch.where(same_expr & same_subj & not_self, 2.0, 0.0))
        prio = torch.where(~not_self, 1.0, prio)
        n_best = (prio == 3).sum(1)
        score = prio + self._rand(len(q), n_rows)                          # random order inside a tier
        k = min(m, n_rows)
        top_val, top_idx = score.topk(k, dim=1)
        if k < m:  # tiny dataset: repeat
            reps = -(-m // k)
            top_val, top_idx = top_val.repeat(1, reps)[:, :m], top_idx.repeat(1, reps)[:, :m]
        # fewer than M usable picks (other-subject ones, or else same-subject/query ones): cycle through them
        n_same = (prio == 2).sum(1)
        n_avail = torch.where(n_best > 0, n_best, torch.where(n_same > 0, n_same, torch.ones_like(n_same)))
        slot = torch.arange(m)[None, :].remainder(n_avail.clamp_min(1)[:, None])
        top_idx = torch.gather(top_idx, 1, slot)
        top_val = torch.gather(top_val, 1, slot)
        pos = top_idx
        pos_source = torch.where(top_val >= 3, OTHER_SUBJECT, torch.where(top_val >= 2, SAME_SUBJECT_POSITIVE, QUERY_ITSELF))
        # --- negatives: one image of each other expression: query's subject (3) > a positive's subject (2) > any (1)
        others = self.classes[None, :].expand(len(q), -1)
        others = others[others != yq[:, None]].reshape(len(q), self.n_negatives)  # (X, N)
        expr_ok = (y[None, None, :] == others[:, :, None]) & ok[None, None, :]   # (X, N, n)
        pos_subj = (s[None, None, :] == s[pos][:, :, None]).any(1)               # (X, n)
        tier = torch.where(same_subj, 3.0, torch.where(pos_subj, 2.0, 1.0))      # (X, n)
        nscore = torch.where(expr_ok, tier[:, None, :] + self._rand(len(q), self.n_negatives, n_rows), -1.0)
        best_val, neg = nscore.max(2)
        if bool((best_val < 0).any()):
            raise RuntimeError("internal error: an expression class without images")  # classes come from labels
        neg_source = torch.where(best_val >= 3, SAME_SUBJECT, torch.where(best_val >= 2, POSITIVE_SUBJECT, ANY_SUBJECT))
        return TupleBatch(torch.cat([q[:, None], pos, neg], 1), neg_source, pos_source, m, self.n_negatives)

    def epoch(self, tuples_per_batch: int, queries: torch.Tensor | None = None,
              drop_last: bool = False) -> Iterator[TupleBatch]:
        """Every usable image once as a query, in a random order, ``tuples_per_batch`` tuples per batch."""
        if queries is None:
            queries = self.usable.nonzero().squeeze(1)
        order = queries[torch.randperm(len(queries), generator=self.generator)]
        tb = self.build(order)
        stop = len(order) - (len(order) % tuples_per_batch) if drop_last else len(order)
        for start in range(0, stop, tuples_per_batch):
            sl = slice(start, start + tuples_per_batch)
            yield TupleBatch(tb.indices[sl], tb.neg_source[sl], tb.pos_source[sl], tb.n_positives, tb.n_negatives)

    def __len__(self) -> int:
        return int(self.usable.sum())
