r"""Mamba-1's selective scan and causal convolution through mamba-ssm and causal-conv1d.

The recurrence is :class:`probe.mixers.mamba.Mamba`'s (``D = d_inner``, ``N = d_state``)::

    s_t = exp(dt_t A) * s_{t-1} + (dt_t u_t) B_t^T,     out_t = s_t C_t + D_skip * u_t

mamba-ssm's call takes channels before positions and starts from a zero state (it has no initial
state argument)::

    selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=True) -> (out, s_last)
    u, delta, out: [b, D, T]    A: [D, N] float32    B, C: [b, N, T]    D: [D] float32    s_last: [b, D, N]

``u``, ``delta``, ``B`` and ``C`` go in one dtype (the model's), ``A`` and ``D`` in float32 (the kernel
accumulates in float32). ``delta`` is the time step after its softplus (hooks and edits act on it).

The recurrence is linear in its state, so a forward continuing a carried state ``s_0`` adds, to the
kernel's run from zero, the carried state's free response (:func:`carried_state_response`)::

    out_t += sum_n C_t[n] exp(A[:, n] cum_t) s_0[:, n],     s_T += exp(A cum_T) * s_0,     cum_t = sum_{i<=t} dt_i

causal-conv1d's depthwise convolution ``y_t = bias + sum_j w_j x_{t-k+1+j}`` from a zero window::

    causal_conv1d_fn(x, weight, bias, activation=None) -> y      x, y: [b, D, T]   weight: [D, k]   bias: [D]
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["selective_scan_fused", "carried_state_response", "causal_conv_fused"]

#: the most numbers one block of the free response holds (2^26 float32 = 256 MiB)
MAX_RESPONSE_ELEMENTS = 1 << 26


def _channels_first(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype).transpose(1, 2).contiguous()


def selective_scan_fused(kernel: Callable, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor) -> tuple[Tensor, Tensor]:
    """``(s_t C_t + D u_t  [b, T, D] in u's dtype, s_{T-1} [b, D, N] float32)`` from a zero state, with
    ``u, dt [b, T, D]``, ``A [D, N]``, ``B, C [b, T, N]``, ``D [D]``; ``kernel`` = ``selective_scan_fn``."""
    dtype = u.dtype
    out, last = kernel(_channels_first(u, dtype), _channels_first(dt, dtype), A.to(torch.float32).contiguous(),
                       _channels_first(B, dtype), _channels_first(C, dtype), D.to(torch.float32).contiguous(),
                       z=None, delta_bias=None, delta_softplus=False, return_last_state=True)
    return out.transpose(1, 2), last.to(torch.float32)


def carried_state_response(dt: Tensor, A: Tensor, C: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """What a carried state ``s0 [b, D, N]`` adds to a run from zero: ``(its readout [b, T, D], the part
    of the final state it leaves [b, D, N])``, float32, with ``dt [b, T, D]`` (after its softplus),
    ``A [D, N]`` and ``C [b, T, N]``. Computed a block of positions at a time (at most
    ``MAX_RESPONSE_ELEMENTS`` decays held)."""
    b, T, D = dt.shape
    A, s0 = A.to(torch.float32), s0.to(torch.float32)
    elapsed = dt.to(torch.float32).cumsum(1)  # [b, T, D]
    block = max(1, MAX_RESPONSE_ELEMENTS // max(1, b * s0[0].numel()))
    read = []
    for t0 in range(0, T, block):
        decay = torch.exp(elapsed[:, t0:t0 + block, :, None] * A)  # [b, l, D, N]
        read.append(torch.einsum("bldn,bln,bdn->bld", decay, C[:, t0:t0 + block].to(torch.float32), s0))
    return torch.cat(read, dim=1), torch.exp(elapsed[:, -1, :, None] * A) * s0


def causal_conv_fused(kernel: Callable, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The causal depthwise convolution of ``x [b, T, D]`` from a zero window, ``[b, T, D]``;
    ``weight [D, k]``, ``bias [D]``; ``kernel`` = ``causal_conv1d_fn``."""
    y = kernel(_channels_first(x, x.dtype), weight.to(x.dtype).contiguous(),
               None if bias is None else bias.to(x.dtype), activation=None)
    return y.transpose(1, 2)
