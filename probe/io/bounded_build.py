r"""Build a model from an untrusted config without letting the config choose how much memory it takes.

A checkpoint's ``config.json`` decides every tensor's size (``vocab_size=10**10`` asks for a
640 GB embedding), while its weight file is what it is. :func:`build_bounded` constructs the
model with tensor factories (``torch.empty``, ``zeros``, ``ones``, ``full``, ``rand``,
``randn``, ``randint``) counted against a budget of elements: a request past the budget is
made on the ``meta`` device (shape only, no memory), so the caller can compare every shape
with the weight file's header before anything large is allocated.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint}
#: factory calls past the budget after which the build stops (a config of 10**7 layers would
#: otherwise spend minutes building meta modules)
MAX_SPILLED_CALLS = 1000


class _OverBudget(RuntimeError):
    pass


def _requested_numel(func, args, kwargs) -> int | None:
    """Elements a factory call asks for, or None when its size cannot be read."""
    size = kwargs.get("size")
    if size is None:
        if func is torch.full:
            size = args[0] if args else None
        elif func is torch.randint:
            size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
        else:
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    try:
        return math.prod(int(s) for s in size)
    except (TypeError, ValueError):
        return None


class _Budget(TorchFunctionMode):
    """Tensor factories within ``budget`` elements (in total) allocate; the rest go to ``meta``."""

    def __init__(self, budget: int):
        super().__init__()
        self.left = budget
        self.spilled = 0  # elements requested past the budget
        self.spilled_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            n = _requested_numel(func, args, kwargs)
            if n is not None and n > self.left:
                kwargs["device"] = "meta"
                self.spilled += n
                self.spilled_calls += 1
                if self.spilled_calls > MAX_SPILLED_CALLS:
                    raise _OverBudget(f"more than {MAX_SPILLED_CALLS} tensors past the budget")
            elif n is not None:
                self.left -= n
        return func(*args, **kwargs)


def build_bounded(build: Callable[[], torch.nn.Module], budget: int) -> tuple[torch.nn.Module | None, int]:
    """``(module, spilled)``: ``build()`` run with at most ``budget`` tensor elements allocated by
    factories; ``spilled`` counts the elements asked for beyond it (their tensors are on ``meta``:
    only shapes). When spilling made ``build()`` itself fail, returns ``(None, spilled)``."""
    mode = _Budget(budget)
    try:
        with mode:
            module = build()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        if not mode.spilled:
            raise
        return None, mode.spilled
    return module, mode.spilled
