"""Kernel launches per training step, counted on fake CUDA tensors (``tests/fake_cuda.py``): what a GPU's
host has to issue for one step of each paper, measured without a GPU.

At the papers' small-image settings (the WRN-28-2 at 32 px, the Inception net at 48 px) a GPU finishes each
kernel faster than Python and the dispatcher can launch the next one, so a step takes about
``launches x (time to launch one)``: ``make bench`` on an H200 measured the fast MixMatch step at 11,414 img/s,
host-bound at 1.8 % of the GPU's bf16 peak. A count of launches is therefore the CPU-side measure of whether
a chapter's own step keeps up with the benchmark's fast path (issue 16 asks for "within 10 %").

:class:`LaunchCounter` counts every aten op that would run a kernel on the GPU: an op with a CUDA tensor
among its inputs or a CUDA factory, except views, allocations (``empty``), ``detach`` and host reads (which
are host syncs, listed by ``fake_cuda.host_syncs``). A fused or foreach optimizer op counts once (CUDA splits
it into a few multi-tensor launches for hundreds of tensors, so this undercounts both the benchmark's and
the chapter's optimizers alike).

Networks compiled for CUDA graphs (``fer_nb.compiled``, ``mode="reduce-overhead"``): their forward and
backward ops replay as one graph each, so :func:`count_step` counts what stays eager (the losses, the
optimizer, the EMA, the augmentation) plus, for each call of the network, one replay per graph and one copy
per tensor input (CUDA-graph trees copy inputs into the graph's static buffers). Fake CUDA runs the network
eager (inductor cannot generate CUDA code without a GPU); the ops between the network's inputs and outputs,
forward and backward, are what the graph would replay.
"""
from __future__ import annotations

import collections
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fake_cuda import _caller, fake_cuda

aten = torch.ops.aten

#: ops that run no GPU kernel: allocations, aliasing, host reads, profiler markers
NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.detach.default,
             aten.lift_fresh.default, aten._local_scalar_dense.default, aten.equal.default,
             aten.set_.source_Storage_storage_offset, aten.resize_.default}
NO_KERNEL_NAMES = {"_record_function_enter_new", "_record_function_exit", "profiler::_record_function_enter_new",
                   "profiler::_record_function_exit"}


def _is_cuda(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cuda"


def _on_cuda(args, kwargs) -> bool:
    """Whether the op runs on the GPU: a CUDA tensor among its inputs (or in a list of them), or a CUDA factory."""
    for x in list(args) + list(kwargs.values()):
        if _is_cuda(x) or (isinstance(x, (list, tuple)) and any(_is_cuda(t) for t in x)):
            return True
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cuda"


class LaunchCounter(TorchDispatchMode):
    """Count the GPU kernels of the ops run inside it (see the module docstring), split into ``eager`` and
    ``graph`` (ops of a network marked with :meth:`watch`, which a CUDA graph would replay)."""

    def __init__(self):
        super().__init__()
        self.eager: collections.Counter = collections.Counter()   # op name -> launches
        self.eager_files: collections.Counter = collections.Counter()   # file that asked (under fer_nb/) -> launches
        self.graph = 0                  # ops inside watched networks (forward and backward)
        self.replays = 0                # graph replays + input copies of the watched networks' calls
        self.graph_nodes: set = set()   # autograd nodes of the watched networks' forward graphs
        self._stops: set = set()        # grad_fn of the current network call's inputs: its graph ends there
        self._inside = 0                # > 0 while a watched network's forward runs
        self.flops = 0                  # matmul / convolution FLOPs of the step (count_step fills it)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func in NO_KERNEL or func.name() in NO_KERNEL_NAMES or not _on_cuda(args, kwargs):
            return out
        node = torch._C._current_autograd_node()
        if self._inside or (node is not None and node in self.graph_nodes):
            self.graph += 1
        else:
            self.eager[func.overloadpacket.__name__] += 1
            where = "backward of eager ops" if node is not None else _caller(("kernel_launches.py",)).partition(":")[0]
            self.eager_files[where] += 1
        return out

    @property
    def launches(self) -> int:
        """What the host issues: the eager ops plus the watched networks' replays and input copies."""
        return sum(self.eager.values()) + self.replays

    def watch(self, network: torch.nn.Module) -> None:
        """Treat ``network`` as compiled for CUDA graphs: its ops count as replayed, not launched."""
        counter = self

        def before(module, args, kwargs):
            inputs = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
            counter._inside += 1
            counter._stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
            counter.replays += 1 + len(inputs)

        def after(module, args, kwargs, output):
            counter._inside -= 1
            outputs = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else [output]
            grads = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            if grads:
                counter.replays += 1          # the backward graph, replayed once in backward
            stack = list(grads)
            while stack:                      # the network's backward nodes: outputs back to its inputs
                n = stack.pop()
                if n is None or n in counter.graph_nodes or n in counter._stops:
                    continue
                counter.graph_nodes.add(n)
                stack.extend(f[0] for f in n.next_functions)

        network.register_forward_pre_hook(before, with_kwargs=True)
        network.register_forward_hook(after, with_kwargs=True)


def count_step(build: Callable[[], tuple[Callable, int]], compiled: bool = False,
               warmup: int = 1) -> tuple[LaunchCounter, int]:
    """``(counter, images)`` for one step of ``build()`` on fake CUDA under bf16 autocast, after ``warmup``
    steps (optimizer state, EMA copies and lazy buffers are made in the first one).

    ``compiled``: the step builder's networks (made through ``benchmarks.steps.compiled``) count as CUDA
    graphs."""
    import benchmarks.steps as steps

    watched: list[torch.nn.Module] = []
    real = steps.compiled

    def compiled_and_watched(model, device):
        net = real(model, device)
        watched.append(net)
        return net

    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_cuda(bf16=True))
        if compiled:
            steps.compiled = compiled_and_watched
        torch.manual_seed(0)               # the same batch for every builder (CAF's groups depend on it)
        try:
            step, images = build()
        finally:
            steps.compiled = real
        for _ in range(warmup):
            step()
        counter = LaunchCounter()
        for net in watched:
            counter.watch(net)
        flops = FlopCounterMode(display=False)
        with counter, flops:
            step()
        counter.flops = flops.get_total_flops()
    return counter, images


RECORD = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_launches.json"
#: the guard of issue 16 ("the notebooks' own steps within 10 % of the benchmark's fast path"), per image
WITHIN = 1.10


def _entry(counter: LaunchCounter, images: int) -> dict:
    return {"launches": counter.launches, "images": images, "flop": int(counter.flops),
            "eager_launches_by_file": dict(counter.eager_files.most_common())}


def measure(spec) -> dict:
    """The record of one ``benchmarks.steps.StepSpec``: the fast step, the chapter's step eager and, for the
    launch-bound ones, with its network compiled; at the benchmark's ``--quick`` batch and the paper's image
    size (the counts do not depend on the batch)."""
    device = torch.device("cuda")
    b, size = spec.quick_batch, spec.image_size
    fast, fast_images = count_step(lambda: spec.build(device, "fast", b, size))
    chapter, chapter_images = count_step(lambda: spec.build_chapter(device, b, size))
    row = {"setting": spec.setting, "batch": b, "image_size": size,
           "fast": _entry(fast, fast_images), "chapter": _entry(chapter, chapter_images)}
    trained = row["chapter"]
    if spec.compilable:
        comp, comp_images = count_step(lambda: spec.build_chapter(device, b, size, compile=True), compiled=True)
        row["chapter_compiled"] = {**_entry(comp, comp_images), "replays_and_input_copies": comp.replays,
                                   "ops_in_cuda_graphs": comp.graph}
        trained = row["chapter_compiled"]
    row["chapter_on_cuda"] = "chapter_compiled" if spec.compilable else "chapter"
    row["ratio_launches_per_image"] = round((trained["launches"] / trained["images"])
                                            / (row["fast"]["launches"] / row["fast"]["images"]), 3)
    row["ratio_flop_per_image"] = round((trained["flop"] / trained["images"])
                                        / (row["fast"]["flop"] / row["fast"]["images"]), 3)
    return row


ABOUT = ("GPU kernel launches per training step, counted on fake CUDA tensors under bf16 autocast "
         "(tests/kernel_launches.py): for each paper the benchmark's fast step (eager), the chapter's own step "
         "eager and, where the chapter compiles its network on CUDA, with the network's forward and backward "
         "replayed as CUDA graphs (counted as one launch per graph plus one copy per input). flop: matmul and "
         "convolution FLOPs of the step (torch.utils.flop_counter). The ratios compare the chapter's step as it "
         "trains on CUDA with the fast step, per image. Rewrite with `.venv/bin/python tests/kernel_launches.py "
         "--write`; tests/test_kernel_launches.py checks the file against the code and the ratios against 1.10.")


def main(argv=None) -> int:
    import argparse

    from benchmarks.steps import STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {RECORD.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = {"_about": ABOUT, "torch": torch.__version__,
              "steps": {s.paper: measure(s) for s in STEPS if s.build_chapter is not None}}
    for paper, row in record["steps"].items():
        print(f"{paper:13s} fast {row['fast']['launches']:4d}  chapter {row['chapter']['launches']:4d}"
              + (f"  compiled {row['chapter_compiled']['launches']:4d}" if "chapter_compiled" in row else "")
              + f"  per image: launches x{row['ratio_launches_per_image']}, flop x{row['ratio_flop_per_image']}")
    if args.write:
        RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    sys.exit(main())
