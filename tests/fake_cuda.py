"""Fake CUDA tensors for device-discipline tests on a machine without a GPU.

``with fake_cuda():`` every tensor made with ``device="cuda"`` (and every module moved there) is a
:class:`FakeCudaTensor`: a CPU tensor that says ``device == cuda:0``. Kernels and the autograd engine see
the CPU tensor inside (so forward, backward and optimizers run), Python code sees CUDA, and each op checks
its inputs as CUDA would, raising :class:`DeviceMismatch` for

* a CPU tensor (other than a 0-d scalar or an index) mixed with CUDA tensors,
* a ``torch.Generator`` of another device type than the tensor it draws (``torch.Generator(device="cuda")``
  inside the context makes a CPU generator that says it is a CUDA one),
* and ``.numpy()`` of a CUDA tensor raises TypeError, as on CUDA.

``with host_syncs() as syncs:`` (inside :func:`fake_cuda`) records every operation that would make the host
wait for the GPU: reading a CUDA value on the host (``.item()``, ``float()``, ``bool()``, ``.tolist()``,
``if cuda_tensor:``), a copy from CUDA to the CPU, and an op whose output shape depends on CUDA data
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave``
without ``output_size``). Each entry names the op and the innermost frame outside torch that asked for it (a
``fer_nb`` file when the call came from the package). A training step with such a call cannot be captured in a
CUDA graph and stalls the GPU's queue every step.

``torch.autocast("cuda", ...)`` becomes CPU autocast inside the context (``bf16=True``, the default), so a
run under fake CUDA also gets the bf16 activations of a real CUDA run (a float head fed bf16 features fails
here too).

Why not ``torch._subclasses.fake_tensor.FakeTensorMode``: it has no data, so every ``.item()``, ``float()``
or data-dependent shape in the code under test raises ``DataDependentOutputException``, and its tensors
cannot run backward (the autograd engine asks the CUDA driver for a primary context). Here the data is real.

``torch.compile`` inside the context returns the module unchanged and records ``(module class, mode)`` in
:data:`COMPILE_CALLS`: inductor cannot generate CUDA code without a GPU, so a chapter that compiles its network
on CUDA (``fer_nb.compiled``) runs it eager here, and the tests check only that it asked for CUDA graphs
(``tests/test_compiled_steps.py`` checks compiled against eager on the CPU).

Limits: scratch tensors that a composite op makes with ``x.options()`` are taken to be on ``x``'s device
(tracked per torch call); ``torch.cuda`` runtime calls other than ``synchronize`` and ``get_device_name``
(events, streams, memory statistics) are not available; kernels run on the CPU, so CUDA-only numerical
behaviour (TF32, nondeterministic atomics) is not simulated.
"""
from __future__ import annotations

import contextlib
import os
import threading
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

CUDA = torch.device("cuda", 0)
#: ``(module class, mode)`` of every ``torch.compile`` asked for inside :func:`fake_cuda`, in order
COMPILE_CALLS: list[tuple[str, str | None]] = []
aten = torch.ops.aten

#: CUDA kernels accept CPU index tensors for these ops (indices are copied to the device)
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
#: ops that move data between devices on purpose
COPY_OPS = {aten._to_copy.default, aten.copy_.default}


class DeviceMismatch(RuntimeError):
    """What CUDA would raise: tensors (or a generator) on different devices in one op."""


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor (``elem``) that reports ``device == cuda:0``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=elem.device, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self) -> str:
        return f"FakeCudaTensor({self.elem!r})"

    # C++ (kernels, the autograd engine) sees a CPU tensor, so backward runs; Python sees CUDA.
    @property
    def device(self) -> torch.device:
        return CUDA

    @property
    def is_cuda(self) -> bool:
        return True

    def get_device(self) -> int:
        return 0

    __torch_function__ = torch._C._disabled_torch_function_impl

    def cpu(self, memory_format=torch.preserve_format):
        with _explicit_cpu():
            return aten._to_copy.default(self, device=torch.device("cpu"))

    def to(self, *args, **kwargs):
        target = kwargs.get("device")
        for a in args:
            if isinstance(a, (str, torch.device)):
                target = a
            elif isinstance(a, torch.Tensor):
                target = a.device
        if target is not None and torch.device(target).type == "cpu":
            dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
            with _explicit_cpu():
                out = aten._to_copy.default(self, device=torch.device("cpu"))
            return out.to(dtype) if dtype is not None else out
        return super().to(*args, **kwargs)

    def __reduce_ex__(self, protocol):  # torch.save / deepcopy: stored as the CPU data, as .cpu() would
        return (FakeCudaTensor, (self.elem,)) if protocol is None else self.elem.__reduce_ex__(protocol)

    def tolist(self):  # a host sync on CUDA; torch refuses subclasses here
        _record_sync("tolist")
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    __array__ = numpy

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _device_type(t: torch.Tensor) -> str:
    return "cuda" if type(t) is FakeCudaTensor else t.device.type


class _State(threading.local):
    def __init__(self):
        self.explicit_cpu = False     # inside Tensor.cpu() / .to("cpu") of a fake CUDA tensor
        self.calls = []               # per torch-level call being run: (got a CUDA tensor?, a CUDA generator?)
        self.syncs = None             # a list while host_syncs() records


#: ops whose output shape depends on the data: CUDA computes it, then the host waits to read it
DATA_DEPENDENT_SHAPE_OPS = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                            aten.unique_dim.default, aten.unique_consecutive.default, aten._unique.default,
                            aten.repeat_interleave.Tensor, aten.bincount.default}
#: ops that return a Python value computed from CUDA data
HOST_VALUE_OPS = {aten._local_scalar_dense.default, aten.equal.default}


def _caller(also_skip: tuple[str, ...] = ()) -> str:
    """The innermost frame of the current call outside torch, this file and files ending in ``also_skip``, as
    ``file:line (code)``; the file relative to ``fer_nb/`` (or ``benchmarks/``) when it is there, else its name."""
    skipped = ("fake_cuda.py", "/contextlib.py", "/functools.py", *also_skip)
    for f in reversed(traceback.extract_stack()):
        path = f.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith(skipped):
            continue
        for root in ("/fer_nb/", "/benchmarks/"):
            if root in path:
                path = path.split(root)[-1] if root == "/fer_nb/" else "benchmarks/" + path.split(root)[-1]
                break
        else:
            path = os.path.basename(path)
        return f"{path}:{f.lineno} ({f.line})"
    return "?"


def _record_sync(what: str) -> None:
    if _STATE.syncs is not None:
        _STATE.syncs.append(f"{what} at {_caller()}")


@contextlib.contextmanager
def host_syncs():
    """Record the host-device synchronisations of the block (see the module docstring) into a list."""
    outer, _STATE.syncs = _STATE.syncs, []
    try:
        yield _STATE.syncs
    finally:
        recorded, _STATE.syncs = _STATE.syncs, outer
        if outer is not None:
            outer.extend(recorded)


_STATE = _State()


@contextlib.contextmanager
def _explicit_cpu():
    _STATE.explicit_cpu = True
    try:
        yield
    finally:
        _STATE.explicit_cpu = False


def _inside_cuda_call() -> bool:
    """Whether the op runs inside a torch function called with CUDA tensors (a composite such as
    ``torch.quantile`` makes its scratch tensors with the input's options: on CUDA, they are CUDA)."""
    return bool(_STATE.calls) and _STATE.calls[-1][0]


def _tensors(obj, out: list) -> list:
    """The tensors in nested tuples / lists / dicts (a fast ``tree_flatten`` for op arguments)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            _tensors(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _tensors(x, out)
    return out


def _map(fn, obj):
    """``fn`` on every tensor in nested tuples / lists / dicts (a fast ``tree_map``)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(fn, x) for x in obj)
    if isinstance(obj, list):
        return [_map(fn, x) for x in obj]
    if isinstance(obj, dict):
        return {k: _map(fn, x) for k, x in obj.items()}
    return obj


def _unwrap(x):
    return x.elem if type(x) is FakeCudaTensor else x


def _wrap(x):
    return x if type(x) is FakeCudaTensor else FakeCudaTensor(x)


def _run(func, args, kwargs):
    tensors = _tensors(kwargs, _tensors(args, []))
    if func in INDEX_OPS:
        indices = args[1] if len(args) > 1 else []
        index_ids = {id(i) for i in (indices or []) if isinstance(i, torch.Tensor)}
        tensors = [t for t in tensors if id(t) not in index_ids]
    devices = {_device_type(t) for t in tensors if not (t.dim() == 0 and _device_type(t) == "cpu")}
    if len(devices) > 1 and func not in COPY_OPS:
        raise DeviceMismatch(f"{func}: Expected all tensors to be on the same device, but found at least "
                             f"two devices, cuda:0 and cpu!")
    wanted = kwargs.get("device")
    wanted_type = torch.device(wanted).type if wanted is not None else None
    first = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("self", kwargs.get("input"))
    if func is aten.copy_.default:
        on_cuda = _device_type(first) == "cuda"
    elif func is aten._to_copy.default:
        source_cuda = first is not None and _device_type(first) == "cuda"
        # C++ casts (x.to(dtype) inside a kernel) name the tensor's own device, which is the CPU here
        on_cuda = wanted_type == "cuda" or (source_cuda and not (wanted_type == "cpu" and _STATE.explicit_cpu))
    elif func in (aten.lift_fresh.default, aten.lift_fresh_copy.default):   # x.new_tensor(data) on CUDA
        on_cuda = "cuda" in devices or _inside_cuda_call()
    elif not tensors and wanted_type is not None:   # a factory
        on_cuda = wanted_type == "cuda" or (wanted_type == "cpu" and _inside_cuda_call())
    else:
        on_cuda = "cuda" in devices
    generator = kwargs.get("generator")
    if generator is not None:
        gen_type = "cuda" if _STATE.calls and _STATE.calls[-1][1] else generator.device.type
        want_type = "cuda" if on_cuda else "cpu"
        if gen_type != want_type:
            raise DeviceMismatch(f"{func}: Expected a '{want_type}' device type for generator but found '{gen_type}'")

    if _STATE.syncs is not None and "cuda" in devices:
        if func in HOST_VALUE_OPS:
            _record_sync("a CUDA value read on the host (.item(), float(), bool(), torch.equal)")
        elif func is aten._to_copy.default and not on_cuda:
            _record_sync("a copy from CUDA to the CPU")
        elif func is aten.copy_.default and not on_cuda:
            _record_sync("a copy from CUDA into a CPU tensor")
        elif func in DATA_DEPENDENT_SHAPE_OPS and not (func is aten.repeat_interleave.Tensor
                                                       and kwargs.get("output_size") is not None):
            _record_sync(f"{func} (output shape depends on CUDA data)")
        elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                      aten._index_put_impl_.default) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])):
            _record_sync(f"{func} with a boolean mask (output shape depends on CUDA data)")

    real_args, real_kwargs = _map(_unwrap, args), _map(_unwrap, kwargs)
    if wanted_type == "cuda":
        real_kwargs = dict(real_kwargs, device=torch.device("cpu"))
    out = func(*real_args, **real_kwargs)
    if func is aten.copy_.default:
        return args[0]
    if not on_cuda:
        return out
    return _map(_wrap, out)


class _CallTracker(TorchFunctionMode):
    """Remembers, for each torch function being run, whether it was given a CUDA tensor or a CUDA generator
    (the dispatcher hands ops a fresh wrapper of the generator, so only this level knows which one it is)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cuda_tensor = any(type(t) is FakeCudaTensor for t in _tensors(kwargs, _tensors(args, [])))
        cuda_generator = any(type(g) is _Generator for g in (*args, *kwargs.values()))
        _STATE.calls.append((cuda_tensor, cuda_generator))
        try:
            return func(*args, **kwargs)
        finally:
            _STATE.calls.pop()


class _FakeCudaMode(TorchDispatchMode):
    """Catches factory calls (``torch.zeros(..., device="cuda")``) that have no tensor argument."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_REAL_GENERATOR = torch.Generator


class _AnyGenerator(type(torch.Generator)):
    def __instancecheck__(cls, obj) -> bool:  # real generators made outside the block still count
        return isinstance(obj, _REAL_GENERATOR)


class _Generator(torch.Generator, metaclass=_AnyGenerator):
    """``torch.Generator(device="cuda")`` inside :func:`fake_cuda`: a CPU generator that says CUDA."""

    def __new__(cls, device="cpu"):
        if torch.device(device).type != "cuda":
            return _REAL_GENERATOR(device)
        return super().__new__(cls, "cpu")

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return CUDA


class _Autocast(torch.amp.autocast):
    """``torch.autocast("cuda", ...)`` as CPU autocast: the fake CUDA tensors are CPU tensors inside."""

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


def _fake_compile(model=None, *, mode=None, **kwargs):
    """``torch.compile`` under fake CUDA: record the request, return ``model`` unchanged (runs eager)."""
    COMPILE_CALLS.append((type(model).__name__, mode))
    return model


@contextlib.contextmanager
def fake_cuda(bf16: bool = True):
    """Run the block with fake CUDA tensors (see the module docstring for what is checked).

    ``bf16=False`` leaves ``torch.autocast("cuda")`` without effect instead of mapping it to CPU bf16
    autocast: this CPU has no bf16 instructions, so whole chapters run ~5x slower under it; the notebook
    tests use that, and the dtype checks are done step by step in the unit tests."""
    saved = {
        "lazy_init": torch.cuda._lazy_init,
        "swap": torch.__future__.get_swap_module_params_on_conversion(),
        "lift": torch._C._only_lift_cpu_tensors(),
        "generator": torch.Generator,
        "is_available": torch.cuda.is_available,
        "is_bf16_supported": torch.cuda.is_bf16_supported,
        "get_device_name": torch.cuda.get_device_name,
        "autocast": torch.autocast,
        "amp_autocast": torch.amp.autocast,
        "synchronize": torch.cuda.synchronize,
        "capturing": torch.cuda.is_current_stream_capturing,
        "compile": torch.compile,
    }
    # a CUDA device guard that does nothing (no driver here); as FakeTensorMode does
    torch._C._ensureCUDADeviceGuardSet()
    # factory calls with device="cuda" ask for CUDA's lazy initialisation before dispatch
    torch.cuda._lazy_init = lambda: None
    # module.to("cuda") must replace each parameter by a fake CUDA one, not set .data
    torch.__future__.set_swap_module_params_on_conversion(True)
    torch._C._set_only_lift_cpu_tensors(True)
    torch.Generator = _Generator
    torch.cuda.is_available = lambda: True
    torch.cuda.is_bf16_supported = lambda *a, **k: True
    torch.cuda.get_device_name = lambda *a, **k: "fake CUDA (tests/fake_cuda.py)"
    torch.cuda.synchronize = lambda *a, **k: None
    # optimizers' CUDA-graph health check (torch <= 2.11 asks it whenever CUDA is available): no capture here
    torch.cuda.is_current_stream_capturing = lambda: False
    torch.compile = _fake_compile
    if bf16:
        torch.autocast = torch.amp.autocast = _Autocast
    try:
        with _FakeCudaMode(), _CallTracker():
            yield
    finally:
        torch.cuda._lazy_init = saved["lazy_init"]
        torch.__future__.set_swap_module_params_on_conversion(saved["swap"])
        torch._C._set_only_lift_cpu_tensors(saved["lift"])
        torch.Generator = saved["generator"]
        torch.cuda.is_available = saved["is_available"]
        torch.cuda.is_bf16_supported = saved["is_bf16_supported"]
        torch.cuda.get_device_name = saved["get_device_name"]
        torch.cuda.synchronize = saved["synchronize"]
        torch.cuda.is_current_stream_capturing = saved["capturing"]
        torch.compile = saved["compile"]
        torch.autocast, torch.amp.autocast = saved["autocast"], saved["amp_autocast"]


_PROCESS_CONTEXT = None


def enter_for_process(bf16: bool = False) -> None:
    """Enter :func:`fake_cuda` for the rest of the process (notebook kernels of the fake-CUDA tests)."""
    global _PROCESS_CONTEXT
    if _PROCESS_CONTEXT is None:
        _PROCESS_CONTEXT = fake_cuda(bf16=bf16)
        _PROCESS_CONTEXT.__enter__()


def _site(entry: str) -> str:
    """``'<what> at losses/common.py:64 (code)'`` -> ``'losses/common.py: code'`` (no line number, so the
    inventory survives edits elsewhere in the file)."""
    what, _, where = entry.partition(" at ")
    path, _, rest = where.partition(":")
    code = rest.partition(" (")[2][:-1] if " (" in rest else ""
    return f"{path}: {code}" if code else path


def _count(record: dict, kind: str, syncs: list[str]) -> None:
    """Add ``syncs`` (entries of :func:`host_syncs`) to ``record[kind]``, counted per call site."""
    for s in syncs:
        record[kind][_site(s)] = record[kind].get(_site(s), 0) + 1


class _RecordedBatches:
    """``train_batches(epoch)`` of a recorded fit: the host syncs of each ``next()`` are recorded."""

    def __init__(self, batches, record: dict):
        self.batches, self.record = batches, record

    def __iter__(self):
        it = iter(self.batches)
        while True:
            with host_syncs() as syncs:
                try:
                    batch = next(it)
                except StopIteration:
                    return
            _count(self.record, "batch_syncs", syncs)
            yield batch


class _SizedRecordedBatches(_RecordedBatches):
    """The same, for batches with a length (``fit`` reads it as the number of steps per epoch)."""

    def __len__(self):
        return len(self.batches)


def record_fit_syncs(report: str) -> None:
    """Wrap :func:`fer_nb.train.fit` so every training run of the process records, per step, the host syncs of
    its ``train_step`` and of drawing its batches; the inventory is rewritten to ``report`` (JSON) after each
    run: ``[{"desc", "steps", "step_syncs": {site: count}, "batch_syncs": {site: count}}, ...]``."""
    import functools
    import inspect
    import json

    import fer_nb.train as train

    real_fit = train.fit
    runs: list[dict] = []
    seen = [0]   # COMPILE_CALLS already attributed to a run

    @functools.wraps(real_fit)
    def fit(*args, **kwargs):
        bound = inspect.signature(real_fit).bind(*args, **kwargs)
        record = {"desc": bound.arguments.get("desc", "train"), "steps": 0, "step_syncs": {}, "batch_syncs": {},
                  "compiled": [list(c) for c in COMPILE_CALLS[seen[0]:]]}   # asked for since the last fit
        seen[0] = len(COMPILE_CALLS)
        runs.append(record)
        step, batches = bound.arguments["train_step"], bound.arguments["train_batches"]

        def train_step(batch, ctx):
            with host_syncs() as syncs:
                out = step(batch, ctx)
            record["steps"] += 1
            _count(record, "step_syncs", syncs)
            return out

        def train_batches(epoch):
            with host_syncs() as syncs:
                made = batches(epoch)
            _count(record, "batch_syncs", syncs)
            return (_SizedRecordedBatches if hasattr(made, "__len__") else _RecordedBatches)(made, record)

        bound.arguments["train_step"] = train_step
        bound.arguments["train_batches"] = train_batches
        try:
            return real_fit(*bound.args, **bound.kwargs)
        finally:
            with open(report, "w", encoding="utf-8") as f:
                json.dump(runs, f, indent=1)

    train.fit = fit
