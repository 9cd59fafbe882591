r"""Mamba-2's SSD scan through mamba-ssm's ``mamba_chunk_scan_combined`` (Triton).

The recurrence is :mod:`probe.ops.ssd`'s, per head ``h`` with group ``g(h)``::

    S_t[h] = exp(dt_t[h] A[h]) S_{t-1}[h] + dt_t[h] x_t[h] B_t[g(h)]^T,    y_t[h] = S_t[h] C_t[g(h)] + D[h] x_t[h]

mamba-ssm's call, in probe's layout (batch, position, head, channel)::

    mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=None, dt_bias=None, initial_states=h0,
                              dt_softplus=False, dt_limit=(-inf, inf), return_final_states=True) -> (y, h_T)
    x, y: [b, T, H, P]    dt: [b, T, H]    A, D: [H] float32    B, C: [b, T, G, N]    h0, h_T: [b, H, P, N] float32

``dt`` arrives after probe's softplus, clamp and hooks, so the kernel adds no bias, no softplus and no
clamp of its own. Its chunk scan takes the decay products as ``exp(min(sum dt A, 0))``: right only for
``dt >= 0`` (``A < 0``), which probe's ``dt`` is unless edited, so :class:`probe.mixers.mamba2.Mamba2`
runs an edited ``dt`` in PyTorch. ``x``, ``B`` and ``C`` go in
one dtype (the model's), ``dt`` and the state in float32 (the kernel accumulates in float32, starts from
``h0`` and returns the final state in float32); ``y`` comes back in ``x``'s dtype. The gate ``z`` and
the norm stay probe's (``hook_y`` is the scan's output before them).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["ssd_fused", "SSD_CHUNK"]

#: positions per chunk of the fused scan (mamba-ssm's ``Mamba2`` default; results do not depend on it)
SSD_CHUNK = 256


def ssd_fused(kernel: Callable, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor,
              D: Tensor) -> tuple[Tensor, Tensor]:
    """``(y [b, T, H, P] in x's dtype, h_T [b, H, P, N] in h0's dtype)`` from ``kernel`` =
    ``mamba_chunk_scan_combined``, with ``x [b, T, H, P]``, ``dt [b, T, H]``, ``A, D [H]``,
    ``B, C [b, T, G, N]``, ``h0 [b, H, P, N]``."""
    dtype = x.dtype
    y, last = kernel(x.contiguous(), dt.to(torch.float32).contiguous(), A.to(torch.float32).contiguous(),
                     B.to(dtype).contiguous(), C.to(dtype).contiguous(), SSD_CHUNK,
                     D=D.to(torch.float32).contiguous(), z=None, dt_bias=None,
                     initial_states=h0.to(torch.float32).contiguous(), dt_softplus=False,
                     dt_limit=(float("-inf"), float("inf")), return_final_states=True)
    return y, last.to(h0.dtype)
