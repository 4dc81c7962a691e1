"""Input checks that do not make the host wait for the GPU.

A check such as ``if bool((labels < 0).any()): raise ...`` reads a CUDA value on the host: the CPU
waits until every queued kernel has run, once per training step (``benchmarks/host_syncs.json`` lists
where the chapters still do). :func:`require` keeps the check and drops the wait on CUDA: there it
queues ``torch._assert_async``, a device-side assertion that stops the program at the next
synchronisation with the message below (CUDA reports it as "device-side assert triggered", and the
message names the condition but cannot print the offending values). On every other device it reads the
condition and raises :class:`ValueError` with the full message, values included, as before.
"""
from __future__ import annotations

from typing import Callable

import torch


def require(ok: torch.Tensor, rule: str, details: Callable[[], str] | None = None, *,
            error: type[Exception] = ValueError) -> None:
    """Fail when the 0-d boolean tensor ``ok`` is False.

    Args:
        ok: the condition, e.g. ``((labels >= -1) & (labels < C)).all()``.
        rule: what must hold and how to fix it (the whole message on CUDA).
        details: off CUDA, a function returning what was found instead (it may read values); the
            message is ``rule; details``.
        error: the exception raised off CUDA (on CUDA the assertion is CUDA's own error).
    """
    if ok.device.type == "cuda":
        torch._assert_async(ok, rule)
        return
    if not bool(ok):
        raise error(rule + (f"; {details()}" if details is not None else ""))


__all__ = ["require"]
