r"""Which fused library kernel runs a recurrence, if any: the dispatch seam of the fast paths.

A mixer asks ``fused_kernel(name, *tensors)`` where its recurrence could run a fused kernel (no
per-position state wanted: no state hook, no state edit). It gets the library's function when

* every tensor is on a CUDA device,
* the library imports (the ``probe-interp[cuda]`` extra: flash-linear-attention, mamba-ssm,
  causal-conv1d, mlstm_kernels, xlstm), and
* fused kernels are not switched off (``PROBE_FUSED=0``, or inside :func:`fused_disabled`),

and ``None`` otherwise: the mixer then runs its PyTorch form, which computes the same recurrence
(the call mappings in the modules of :mod:`probe.ops.fused` are tested against it with each kernel
swapped for a reference of the same signature, :func:`swapped_kernel`). A library that is missing on a CUDA machine is said once, in a warning naming the extra.
"""
from __future__ import annotations

import importlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from torch import Tensor

__all__ = ["KERNELS", "Kernel", "fused_kernel", "fused_disabled", "swapped_kernel"]


@dataclass(frozen=True)
class Kernel:
    """A library function: ``module.attribute`` from the pip package ``package``; ``triton_below``: the
    first Triton version whose language the library's kernels no longer compile under (they would
    fail at their first launch, not at import), or ``None``."""

    module: str
    attribute: str
    package: str
    triton_below: str | None = None


#: the fused kernels by the name mixers ask for
KERNELS: dict[str, Kernel] = {
    "chunk_gla": Kernel("fla.ops.gla", "chunk_gla", "flash-linear-attention"),
    "selective_scan": Kernel("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn", "mamba-ssm"),
    "causal_conv1d": Kernel("causal_conv1d", "causal_conv1d_fn", "causal-conv1d"),
    "ssd_combined": Kernel("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined", "mamba-ssm"),
    "chunk_gated_delta_rule": Kernel("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "flash-linear-attention"),
    "chunk_kda": Kernel("fla.ops.kda", "chunk_kda", "flash-linear-attention"),
    # mlstm_kernels 2.0.6 builds block pointers (tl.make_block_ptr), which Triton 3.9 removed
    "mlstm_chunkwise": Kernel("mlstm_kernels.torch.chunkwise.triton_xl_chunk", "mlstm_chunkwise__xl_chunk",
                              "mlstm_kernels", triton_below="3.9"),
    "slstm_cell": Kernel("xlstm.blocks.slstm.cell", "sLSTMCellFuncGenerator", "xlstm"),
    "chunk_hgrn": Kernel("fla.ops.hgrn", "chunk_hgrn", "flash-linear-attention"),
    "chunk_rwkv7": Kernel("fla.ops.rwkv7", "chunk_rwkv7", "flash-linear-attention"),
    "fused_recurrent_rwkv4": Kernel("fla.ops.rwkv4", "fused_recurrent_rwkv4", "flash-linear-attention"),
}

_loaded: dict[str, Callable | None] = {}
_swapped: dict[str, Callable] = {}
_disabled = [False]


def _enabled() -> bool:
    return not _disabled[0] and os.environ.get("PROBE_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def _load(name: str) -> Callable | None:
    if name not in _loaded:
        kernel = KERNELS[name]
        try:
            _check_triton(kernel)
            _loaded[name] = getattr(importlib.import_module(kernel.module), kernel.attribute)
        except Exception as exc:  # not installed, or installed without a working build (triton, CUDA)
            warnings.warn(f"probe: the fused kernel {kernel.module}.{kernel.attribute} is unavailable "
                          f"({type(exc).__name__}: {exc}); its recurrence runs the slower PyTorch form on CUDA. "
                          f"Install it with pip install 'probe-interp[cuda]' ({kernel.package}).",
                          RuntimeWarning, stacklevel=3)
            _loaded[name] = None
    return _loaded[name]


def _check_triton(kernel: Kernel) -> None:
    """An ``ImportError`` where the installed Triton is too new for ``kernel`` (its ``triton_below``)."""
    if kernel.triton_below is None:
        return
    from packaging.version import Version

    triton = importlib.import_module("triton")
    if Version(triton.__version__).release >= Version(kernel.triton_below).release:
        raise ImportError(f"{kernel.package}'s kernels need Triton below {kernel.triton_below}, "
                          f"this is Triton {triton.__version__}")


def fused_kernel(name: str, *tensors: Tensor) -> Callable | None:
    """The fused kernel ``name`` (a key of :data:`KERNELS`) for these inputs, or ``None`` (see the module docstring)."""
    if name not in KERNELS:
        raise KeyError(f"No fused kernel {name!r}; known: {', '.join(KERNELS)}.")
    if not _enabled():
        return None
    if name in _swapped:
        return _swapped[name]
    if not all(t.is_cuda for t in tensors):
        return None
    return _load(name)


@contextmanager
def fused_disabled() -> Iterator[None]:
    """Within this block every recurrence runs its PyTorch form (benchmarks compare the two)."""
    before, _disabled[0] = _disabled[0], True
    try:
        yield
    finally:
        _disabled[0] = before


@contextmanager
def swapped_kernel(name: str, function: Callable) -> Iterator[None]:
    """Within this block ``function`` stands in for the kernel ``name`` on every device, the CPU
    included: tests run the call mapping with a reference implementation of the same signature."""
    if name not in KERNELS:
        raise KeyError(f"No fused kernel {name!r}; known: {', '.join(KERNELS)}.")
    before = _swapped.get(name)
    _swapped[name] = function
    try:
        yield
    finally:
        if before is None:
            _swapped.pop(name)
        else:
            _swapped[name] = before
