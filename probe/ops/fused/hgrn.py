r"""The elementwise linear recurrence through flash-linear-attention's ``chunk_hgrn`` (the fused
forward of RG-LRU and QRNN).

The recurrence is :mod:`probe.ops.linear_scan`'s, elementwise over ``D`` channels::

    h_t = a_t * h_{t-1} + b_t,        h_{-1} = h0

fla's kernel takes the decay as its logarithm ``g = log a`` and returns every state (its "output" is
the state)::

    chunk_hgrn(x, g, initial_state=h0, output_final_state=True) -> (o, h_T)
    x = b, g = log a, o: [B, T, D]    h0, h_T: [B, D] (float32)    o in x's dtype, float32 inside

The increments ``b`` go in the dtype the mixer keeps its states in (float32 in a half-precision model,
``WIDE_STATES``), so ``o`` holds the same float32 states the PyTorch scan gives; ``g`` and ``h0`` go in
float32, as the kernel accumulates.

Decays the kernel cannot take, and what runs instead (:func:`hgrn_scan`):

* ``a = 0`` (an RG-LRU reset, a forget gate of 0) is ``g = -inf``: the kernel reads ``exp(-inf) = 0``
  forward and backward (its chunk sums only add logarithms, so no ``-inf - -inf`` arises). Decays
  below float32's smallest normal number (``TINY``, 1.2e-38) count as 0 too, changing a state by at
  most ``TINY * |h|``: their ``1 / a`` would overflow the gradient of ``log a`` to ``inf * 0 = NaN``.
  The gradient with respect to such a decay is 0 (the kernel returns ``dL/dg = a dL/da``, which
  cannot be divided back at ``a = 0``); the PyTorch scan gives ``dL/dh_t * h_{t-1}`` there. Probe's
  decays reach 0 only at an RG-LRU reset, where the decay's gradient is 0 on both paths.
* ``a < 0`` has no logarithm: an edit can write one (``hook_decay``, ``hook_forget``,
  ``hook_state_started``), so a forward with edits checks the signs and runs the PyTorch scan if any
  decay is negative.
* A forced state (``hook_state`` edited) runs the PyTorch scan with :func:`~probe.ops.linear_scan.force_states`;
  a state that is only read costs nothing extra (the kernel returns every state).
* Float64 states run the PyTorch scan (the kernel computes in float32).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from probe.ops.fused.registry import fused_kernel
from probe.ops.linear_scan import force_states, linear_scan

__all__ = ["TINY", "hgrn_fused", "hgrn_scan", "log_decay"]

#: the smallest normal float32: smaller decays enter the kernel as exactly 0
TINY = torch.finfo(torch.float32).tiny


def log_decay(a: Tensor) -> Tensor:
    """``log a`` in float32, ``-inf`` where ``a < TINY``, with gradient ``1 / a`` (0 where ``-inf``)."""
    a = a.to(torch.float32)
    normal = a >= TINY
    return torch.where(normal, torch.where(normal, a, torch.ones_like(a)).log(), -math.inf)


def hgrn_fused(kernel: Callable, b: Tensor, a: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """``(h [B, T, D] in b's dtype, h_T [B, D] in h0's dtype)`` of ``h_t = a_t h_{t-1} + b_t`` from
    ``kernel`` = ``chunk_hgrn``; ``a`` broadcasts to ``b [B, T, D]``, ``h0 [B, D]``, decays ``a >= 0``."""
    g = log_decay(a.expand_as(b)).contiguous()
    h, last = kernel(b.contiguous(), g, initial_state=h0.to(torch.float32).contiguous(), output_final_state=True)
    return h, last.to(h0.dtype)


def hgrn_scan(a: Tensor, b: Tensor, h0: Tensor, force: tuple[Tensor, Tensor] | None = None,
              edited: bool = False) -> Tensor:
    """Every state ``h [B, T, D]`` of ``h_t = a_t h_{t-1} + b_t`` from ``h0 [B, D]`` (``a`` broadcasts
    to ``b``): through ``chunk_hgrn`` when :func:`~probe.ops.fused.registry.fused_kernel` gives it, no
    state is forced, the states are not float64 and, after ``edited`` quantities, every decay is
    ``>= 0``; else through :func:`~probe.ops.linear_scan.linear_scan`, with ``force = (mask, values)``
    overwriting states (module docstring)."""
    if force is None and b.dtype != torch.float64 and (kernel := fused_kernel("chunk_hgrn", b)) is not None:
        if not edited or bool((a >= 0).all()):
            return hgrn_fused(kernel, b, a, h0)[0]
    if force is not None:
        a, b = force_states(a, b, *force)
    return linear_scan(a, b, h0)
