"""Fake CUDA tensors for device-discipline tests on a machine without a GPU.

``with fake_cuda():`` every tensor made with ``device="cuda"`` (and every module moved there) is a
:class:`FakeCudaTensor`: a CPU tensor that says ``device == cuda:0`` and computes on the CPU. Each op
checks its inputs as CUDA would and raises :class:`DeviceMismatch` for

* a CPU tensor (other than a 0-d scalar or an index) mixed with CUDA tensors,
* a ``torch.Generator`` of another device type than the tensor it draws (``torch.Generator(device="cuda")``
  inside the context makes a CPU generator that says it is a CUDA one),
* ``.numpy()`` of a CUDA tensor (TypeError, as on CUDA).

Unlike ``torch._subclasses.fake_tensor.FakeTensorMode`` (which has no data, so every ``.item()``,
``float(...)`` or data-dependent shape in the code under test raises ``DataDependentOutputException``),
the data here is real, so host syncs, boolean masks and ``torch.unique`` run as on a GPU.

Limits (stated where the tests use it):
* no backward: the autograd engine asks the CUDA driver for a primary context for CUDA-device graph
  nodes, which a machine without a driver cannot answer; :func:`fake_cuda` turns ``Tensor.backward``
  into a no-op, so training steps run their forward, losses, augmentation and bookkeeping only;
* dtype behaviour of CUDA autocast is not simulated (the CPU bf16 autocast tests cover it);
* ``torch.cuda.*`` runtime calls (synchronize, events, memory stats) are not available.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
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

    def cpu(self, memory_format=torch.preserve_format):
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
            out = aten._to_copy.default(self, device=torch.device("cpu"))
            return out.to(dtype) if dtype is not None else out
        return super().to(*args, **kwargs)

    def __reduce_ex__(self, protocol):  # torch.save / deepcopy: stored as the CPU data, as .cpu() would
        return (FakeCudaTensor, (self.elem,)) if protocol is None else self.elem.__reduce_ex__(protocol)

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    __array__ = numpy

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _device_type(t: torch.Tensor) -> str:
    return "cuda" if isinstance(t, FakeCudaTensor) else t.device.type


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    if func in INDEX_OPS:
        indices = args[1] if len(args) > 1 else []
        index_ids = {id(i) for i in (indices or []) if isinstance(i, torch.Tensor)}
        tensors = [t for t in tensors if id(t) not in index_ids]
    devices = {_device_type(t) for t in tensors if not (t.dim() == 0 and _device_type(t) == "cpu")}
    if len(devices) > 1 and func not in COPY_OPS:
        raise DeviceMismatch(f"{func}: Expected all tensors to be on the same device, but found at least "
                             f"two devices, cuda:0 and cpu!")
    wanted = kwargs.get("device")
    on_cuda = torch.device(wanted).type == "cuda" if wanted is not None else "cuda" in devices
    if func is aten.copy_.default:
        on_cuda = _device_type(args[0]) == "cuda"
    generator = kwargs.get("generator")
    if generator is not None:
        gen_type = "cuda" if _is_fake_cuda_generator(generator) else generator.device.type
        want_type = "cuda" if on_cuda else "cpu"
        if gen_type != want_type:
            raise DeviceMismatch(f"{func}: Expected a '{want_type}' device type for generator but found '{gen_type}'")

    def unwrap(x):
        return x.elem if isinstance(x, FakeCudaTensor) else x

    real_args, real_kwargs = tree_map(unwrap, (args, kwargs))
    if wanted is not None and torch.device(wanted).type == "cuda":
        real_kwargs = dict(real_kwargs, device=torch.device("cpu"))
    out = func(*real_args, **real_kwargs)
    if func is aten.copy_.default:
        return args[0]
    if not on_cuda:
        return out
    return tree_map(lambda x: FakeCudaTensor(x) if isinstance(x, torch.Tensor)
                    and not isinstance(x, FakeCudaTensor) else x, out)


class _FakeCudaMode(TorchDispatchMode):
    """Catches factory calls (``torch.zeros(..., device="cuda")``) that have no tensor argument."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_REAL_GENERATOR = torch.Generator


class _AnyGenerator(type(torch.Generator)):
    def __instancecheck__(cls, obj) -> bool:  # real generators made outside the block still count
        return isinstance(obj, _REAL_GENERATOR)


#: the fake CUDA generators made so far (weak references)
_FAKE_GENERATORS: list = []


def _is_fake_cuda_generator(generator: torch.Generator) -> bool:
    """Whether ``generator`` is one of the fake CUDA generators.

    The dispatcher hands ops a fresh Python wrapper of the generator, so identity is lost; the state is
    not (a fake CUDA generator starts from a random seed, so an unseeded CPU generator never matches).
    """
    state = generator.get_state()
    return any(g is not None and torch.equal(g.get_state(), state) for g in (r() for r in _FAKE_GENERATORS))


class _Generator(torch.Generator, metaclass=_AnyGenerator):
    """``torch.Generator(device="cuda")`` inside :func:`fake_cuda`: a CPU generator that says CUDA."""

    def __new__(cls, device="cpu"):
        if torch.device(device).type != "cuda":
            return _REAL_GENERATOR(device)
        g = super().__new__(cls, "cpu")
        g.seed()  # not the default seed: an unseeded CPU generator must not look like this one
        _FAKE_GENERATORS.append(weakref.ref(g))
        return g

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return CUDA


@contextlib.contextmanager
def fake_cuda():
    """Run the block with fake CUDA tensors (see the module docstring for what is checked)."""
    saved = {
        "lazy_init": torch.cuda._lazy_init,
        "swap": torch.__future__.get_swap_module_params_on_conversion(),
        "lift": torch._C._only_lift_cpu_tensors(),
        "generator": torch.Generator,
        "is_available": torch.cuda.is_available,
        "is_bf16_supported": torch.cuda.is_bf16_supported,
        "get_device_name": torch.cuda.get_device_name,
        "synchronize": torch.cuda.synchronize,
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
    try:
        with _FakeCudaMode():
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


_PROCESS_CONTEXT = None


def enter_for_process() -> None:
    """Enter :func:`fake_cuda` for the rest of the process (notebook kernels of the fake-CUDA tests)."""
    global _PROCESS_CONTEXT
    if _PROCESS_CONTEXT is None:
        _PROCESS_CONTEXT = fake_cuda()
        _PROCESS_CONTEXT.__enter__()
