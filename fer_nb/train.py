"""The book's one training loop: progress, bf16 autocast on CUDA, history, checkpoint + resume.

A notebook supplies a ``train_step(batch, ctx) -> dict[str, Tensor]`` that does its own
forward/backward/optimizer calls (the papers' steps differ too much for one shared step: an
adversarial critic step, a semi-supervised MixMatch step, ...). :func:`fit` supplies the rest:

* per-step metrics are accumulated **on the device** and read once per epoch (no ``.item()``
  per step, so no host-device synchronisation inside the step);
* after each epoch the whole state (modules, optimizers, schedulers, RNG states, history) is
  written atomically to ``checkpoint``; a re-run with the same ``run_hash`` resumes after the
  last finished epoch and ends with the same numbers as an uninterrupted run (tested on CPU);
* a non-finite loss stops training with a clear error instead of writing NaN results.

``train_batches(epoch)`` is called exactly once per epoch, after the RNG states are restored, so a
resumed run draws the same batches as an uninterrupted one whether the batch order comes from a
generator seeded by (seed, epoch) or from the global RNGs (``torch.randperm`` without a
generator, ``random.shuffle``, ``np.random``). Checkpoints carry the code fingerprint of the run
hash (:mod:`fer_nb.fingerprint`) under ``code``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

import torch

from fer_nb.fingerprint import code_of_run_hash
from fer_nb.io import CheckpointError, clean_stale_temp, load_torch, save_torch
from fer_nb.progress import bar
from fer_nb.seed import rng_state, set_rng_state


@dataclass
class History:
    """Per-epoch records: ``{"epoch": 1, "train/loss": ..., "val/acc": ..., "seconds": ...}``."""

    records: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def last(self) -> dict[str, float]:
        return dict(self.records[-1]) if self.records else {}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.records)


class NonFiniteLossError(FloatingPointError):
    pass


def _state_dicts(objs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v.state_dict() for k, v in (objs or {}).items()}


def _load_state_dicts(objs: Mapping[str, Any] | None, states: Mapping[str, Any], path: Path) -> None:
    for k, v in (objs or {}).items():
        if k not in states:
            raise CheckpointError(f"checkpoint {path} has no state for {k!r}; delete it to retrain")
        try:
            v.load_state_dict(states[k])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {path} does not fit {k!r} ({first}); delete it to retrain") from None


_CHECKPOINT_KEYS = ("run_hash", "epoch", "modules", "optimizers", "rng", "history")


def fit(
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    train_step: Callable[[dict, SimpleNamespace], Mapping[str, torch.Tensor]],
    train_batches: Callable[[int], Iterable[dict]],
    epochs: int,
    *,
    evaluate: Callable[[int], Mapping[str, float]] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    run_hash: str = "",
    steps_per_epoch: int | None = None,
    desc: str = "train",
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> History:
    """Train for ``epochs`` epochs (resuming from ``checkpoint`` if it holds an earlier state).

    ``train_step(batch, ctx)`` gets ``ctx.epoch`` (0-based), ``ctx.step`` (global step),
    ``ctx.total_steps`` and ``ctx.progress`` in [0, 1] (for schedules such as DANN's lambda or a
    decaying loss weight) and returns scalar tensors to log (averaged over the epoch as
    ``train/<name>``). ``evaluate(epoch)`` returns floats logged as given (e.g. ``val/acc``).
    ``extra_state`` holds other objects with ``state_dict`` (EMA models, learned centroids).
    ``stop_after_steps`` aborts mid-epoch (used by the crash/resume test to simulate a kill).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    history = History()
    start_epoch = 0
    path = Path(checkpoint) if checkpoint is not None else None
    code = code_of_run_hash(run_hash)
    if path is not None:
        clean_stale_temp(path)
    if path is not None and path.exists():
        state = load_torch(path)
        if not isinstance(state, Mapping) or any(k not in state for k in _CHECKPOINT_KEYS):
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"{path} is not a fer_nb training checkpoint (it holds {have}); delete it "
                                  f"or use another OUT_DIR")
        if state.get("run_hash") != run_hash:
            same_code = state.get("code") is not None and state.get("code") == code
            codes = f"; code {state.get('code')} vs {code}" if (state.get("code"), code) != (None, None) else ""
            raise ValueError(
                f"checkpoint {path} was made with another configuration"
                f"{'' if same_code or code is None else ' or other code'} (hash {state.get('run_hash')} "
                f"!= {run_hash}{codes}); delete it or use another OUT_DIR"
            )
        _load_state_dicts(modules, state["modules"], path)
        _load_state_dicts(optimizers, state["optimizers"], path)
        _load_state_dicts(schedulers, state.get("schedulers", {}), path)
        _load_state_dicts(extra_state, state.get("extra", {}), path)
        set_rng_state(state["rng"])
        history = History(list(state["history"]), resumed_from=int(state["epoch"]))
        start_epoch = int(state["epoch"])
    # The first epoch's batches double as the length probe: calling train_batches twice would draw
    # twice from the global RNG when it shuffles with it, and a resumed run would see other batches.
    first = train_batches(start_epoch) if start_epoch < epochs else None
    if steps_per_epoch is None:
        steps_per_epoch = len(first) if first is not None and hasattr(first, "__len__") else 0
    total = max(1, steps_per_epoch * epochs)
    step = start_epoch * steps_per_epoch
    steps_done = 0
    for epoch in range(start_epoch, epochs):
        for m in modules.values():
            m.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        epoch_batches = first if epoch == start_epoch else train_batches(epoch)
        first = None
        iterator = bar(
            epoch_batches, total=steps_per_epoch or None, disable=not progress,
            desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
        )
        for batch in iterator:
            ctx = SimpleNamespace(epoch=epoch, step=step, total_steps=total, progress=min(1.0, step / total))
            logs = train_step(batch, ctx)
            for k, v in logs.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v.clone()
            n_steps += 1
            step += 1
            steps_done += 1
            if stop_after_steps is not None and steps_done >= stop_after_steps:
                raise KeyboardInterrupt(f"stopped after {steps_done} steps (stop_after_steps)")
        for sch in (schedulers or {}).values():
            sch.step()
        record: dict[str, float] = {"epoch": epoch + 1}
        for k, v in sums.items():  # one host sync per epoch
            value = float(v.item()) / max(1, n_steps)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"{desc}: train/{k} became {value} in epoch {epoch + 1}; lower the learning rate "
                    f"or check the inputs (no results were written)"
                )
            record[f"train/{k}"] = value
        if evaluate is not None:
            for m in modules.values():
                m.eval()
            with torch.no_grad():
                record.update({k: float(v) for k, v in evaluate(epoch).items()})
        record["seconds"] = time.perf_counter() - t0
        history.records.append(record)
        if path is not None:
            save_torch(
                {
                    "run_hash": run_hash, "code": code, "epoch": epoch + 1, "complete": epoch + 1 == epochs,
                    "modules": _state_dicts(modules), "optimizers": _state_dicts(optimizers),
                    "schedulers": _state_dicts(schedulers), "extra": _state_dicts(extra_state),
                    "rng": rng_state(), "history": history.records,
                },
                path,
            )
    for m in modules.values():
        m.eval()
    return history


def fit_or_load(checkpoint: str | Path, run_hash: str, **kwargs: Any) -> History:
    """:func:`fit` with a mandatory checkpoint: a finished run with the same hash is loaded, not retrained.

    Put ``run_hash`` in the file name (see :func:`checkpoint_path`) so runs with other settings
    never meet each other's files; the hash inside the file is checked as well.
    """
    return fit(checkpoint=checkpoint, run_hash=run_hash, **kwargs)


def checkpoint_path(out_dir: str | Path, name: str, run_hash: str) -> Path:
    """``OUT_DIR/checkpoints/<name>-<hash>.pt``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(out_dir) / "checkpoints" / f"{safe}-{run_hash}.pt"


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], fn: Callable[[torch.nn.Module, dict], Any] | None = None,
            keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Run ``model`` over ``batches``; return concatenated outputs (CPU) plus the label ``keys``.

    ``fn(model, batch)`` returns a tensor or a dict of tensors (default: ``model(batch["image"])``).
    """
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        out = fn(model, batch) if fn is not None else model(batch["image"])
        if not isinstance(out, Mapping):
            out = {"output": out}
        for k, v in out.items():
            outs.setdefault(k, []).append(v.detach().float().cpu())
        for k in keys:
            outs.setdefault(k, []).append(batch[k].detach().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}
