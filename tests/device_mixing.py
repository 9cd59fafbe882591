"""Catch device mixing on a CPU-only machine.

On CUDA an op whose tensor arguments live on two devices raises ("Expected all tensors to be on
the same device"); on the CPU everything is on one device, so such bugs (a ``torch.zeros(n)``
without ``device=`` added to a model activation) pass every CPU test. :class:`DeviceMixing`
pretends the model lives on an accelerator: it marks the model's parameters, buffers and inputs
as *device* tensors, propagates the mark through every torch call (a result of an op with a
device argument is on the device; ``.to(device)`` / ``device=`` put a tensor there; ``.cpu()``,
factories without ``device=`` and ``.numpy()`` make host tensors) and records every op that
mixes a device tensor with a host tensor of one or more dimensions, which CUDA refuses. Host
index tensors in indexing and 0-dim host tensors are allowed, as on CUDA.

Ops inside compiled code (a C++ kernel) are invisible: run with ``PROBE_NATIVE=0``.
"""
from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

MARK = "_probe_on_device"

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye, torch.tensor,
             torch.as_tensor, torch.randn, torch.rand, torch.randint, torch.randperm, torch.linspace,
             torch.logspace, torch.tril_indices, torch.triu_indices, torch.from_numpy}
#: calls whose result is on the host whatever their argument
TO_HOST = {"cpu", "numpy", "tolist", "item"}
#: calls that take host index tensors for a device tensor (allowed on CUDA)
INDEXING = {"__getitem__", "__setitem__", "__get__", "size", "dim", "__len__"}


def _on_device(t: torch.Tensor) -> bool:
    return bool(getattr(t, MARK, False))


def _names_the_host(device) -> bool:
    """A device written as the string ``"cpu"`` means the host (code that moves values off the model's
    device says so literally); a ``torch.device`` object may be the model's own ``x.device``."""
    return isinstance(device, str) and device.split(":")[0] == "cpu"


def _moves_to_device(name: str, args, kwargs) -> bool:
    if name != "to":
        return False
    devices = [kwargs["device"]] if "device" in kwargs else [a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))]
    return bool(devices) and not any(_names_the_host(d) for d in devices)


class DeviceMixing(TorchFunctionMode):
    """Context manager: ``with DeviceMixing([*model.parameters(), tokens]) as dm: ...``; then
    ``dm.mixes`` lists ``(op, host argument shapes, where)`` of every device-mixing call."""

    def __init__(self, device_tensors):
        super().__init__()
        for t in device_tensors:
            setattr(t, MARK, True)
        self.mixes: list[tuple[str, list[tuple[int, ...]], str]] = []

    def __enter__(self):
        # nn.Parameter(t) makes its tensor outside torch functions: carry the mark over
        self._new_parameter = torch.nn.Parameter.__new__

        def new_parameter(cls, data=None, requires_grad=True):
            p = self._new_parameter(cls, data, requires_grad)
            if data is not None and _on_device(data):
                setattr(p, MARK, True)
            return p

        torch.nn.Parameter.__new__ = new_parameter
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__new__ = self._new_parameter
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        moves = _moves_to_device(name, args, kwargs)
        if moves:
            kwargs = {**kwargs, "copy": True}  # a real move makes a new tensor; on one device .to returns self
        out = func(*args, **kwargs)
        if name == "cpu" and out is args[0]:
            out = out.clone()
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in FACTORIES or name in TO_HOST or (name == "to" and not moves and _names_the_host(
                kwargs.get("device", next((a for a in args[1:] if isinstance(a, str)), None)))):
            on_device = func in FACTORIES and kwargs.get("device") is not None and not _names_the_host(kwargs["device"])
        elif moves:
            on_device = True
        else:
            marks = [_on_device(t) for t in tensors]
            on_device = any(marks)
            host = [tuple(t.shape) for t, m in zip(tensors, marks) if not m and t.dim() > 0]
            if on_device and host and name not in INDEXING:
                where = "".join(traceback.format_stack(limit=6)[:-1])
                self.mixes.append((name, host, where))
        if on_device:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    setattr(t, MARK, True)
        return out
