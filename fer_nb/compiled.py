"""CUDA graphs for the launch-bound networks: ``torch.compile(mode="reduce-overhead")`` on CUDA.

The Margin-Mix WRN at 32 px and the (N+M) Inception net at 48 px run hundreds of small kernels per
step; on a GPU their time goes to launching them from Python, not to the arithmetic (``make bench``:
host-bound, a few per cent of the GPU's peak). ``torch.compile`` with ``mode="reduce-overhead"`` fuses
the network's kernels with inductor and replays its forward and backward as CUDA graphs, one launch
each. The loss, the optimizer and the EMA stay eager: only the network is compiled, so a host read in a
loss (see ``benchmarks/host_syncs.json``) costs a wait but does not break the graph.

The chapters choose with the preset key ``compile_network``:

* ``"auto"`` (every preset): compile on CUDA, stay eager elsewhere. On a CPU inductor would spend a
  minute or two compiling for a run of a few minutes, and the recorded CPU runs are eager;
* ``"on"``: compile on any device (inductor's default mode off CUDA);
* ``"off"``: eager everywhere (``HP={"compile_network": "off"}`` in papermill, if compiling fails on a
  reader's machine: the error names this fix).

A compiled network computes what the eager one does up to float rounding (fused kernels sum in
another order): ``tests/test_compiled_steps.py`` checks three steps of each compiled chapter (Margin-Mix, (N+M)) against
eager on the CPU.
The compiled module shares the eager one's parameters and buffers, so checkpoints, the EMA copy and
evaluation keep using the eager module.
"""
from __future__ import annotations

import torch
from torch import nn

SETTINGS = ("auto", "on", "off")


def wants_compile(setting, device: torch.device | str) -> bool:
    """Whether ``compile_network=setting`` compiles on ``device`` (see the module docstring)."""
    if setting not in SETTINGS:
        raise ValueError(f"compile_network must be one of {SETTINGS}, got {setting!r}")
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return setting == "on"


class CompiledNetwork(nn.Module):
    """``torch.compile(network)`` that says how to switch it off when compiling fails.

    The first call compiles (inductor traces the network on fake tensors, so a failure there has
    changed nothing); an error then is re-raised with the fix in its message (``compile_network: "off"``)
    rather than swallowed, so a run never silently trains eager when it was asked to compile. Attribute
    access goes to the eager network (``net.classifier`` etc.).
    """

    def __init__(self, network: nn.Module, mode: str | None):
        super().__init__()
        self.mode = mode
        self.network = network
        self.compiled = torch.compile(network, mode=mode)
        self._ran = False

    def forward(self, *args, **kwargs):
        if self._ran:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:
            raise RuntimeError(
                f"torch.compile(mode={self.mode!r}) of {type(self.network).__name__} failed ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); run the chapter eager with "
                f"HP={{'compile_network': 'off'}} (papermill: -p HP '{{\"compile_network\": \"off\"}}')") from exc
        self._ran = True
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["network"], name)


def maybe_compile(network: nn.Module, setting, device: torch.device | str) -> nn.Module:
    """``network`` wrapped in :class:`CompiledNetwork` when :func:`wants_compile`, else ``network`` itself.

    ``mode="reduce-overhead"`` (CUDA graphs) on CUDA; inductor's default mode elsewhere."""
    if not wants_compile(setting, device):
        return network
    return CompiledNetwork(network, "reduce-overhead" if torch.device(device).type == "cuda" else None)


__all__ = ["CompiledNetwork", "SETTINGS", "maybe_compile", "wants_compile"]
