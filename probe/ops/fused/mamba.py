r"""Mamba-1's selective scan and causal convolution through mamba-ssm and causal-conv1d.

The recurrence is :class:`probe.mixers.mamba.Mamba`'s (``D = d_inner``, ``N = d_state``)::

    s_t = exp(dt_t A) * s_{t-1} + (dt_t u_t) B_t^T,     out_t = s_t C_t + D_skip * u_t

mamba-ssm's call takes channels before positions and starts from a zero state (it has no initial
state argument, so a forward continuing a carried state runs the PyTorch form)::

    selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=True) -> (out, s_last)
    u, delta, out: [b, D, T]    A: [D, N] float32    B, C: [b, N, T]    D: [D] float32    s_last: [b, D, N]

``u``, ``delta``, ``B`` and ``C`` go in one dtype (the model's), ``A`` and ``D`` in float32 (the kernel
accumulates in float32). ``delta`` is the time step after its softplus (hooks and edits act on it).

causal-conv1d's depthwise convolution ``y_t = bias + sum_j w_j x_{t-k+1+j}`` from a zero window::

    causal_conv1d_fn(x, weight, bias, activation=None) -> y      x, y: [b, D, T]   weight: [D, k]   bias: [D]
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["selective_scan_fused", "causal_conv_fused"]


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


def causal_conv_fused(kernel: Callable, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The causal depthwise convolution of ``x [b, T, D]`` from a zero window, ``[b, T, D]``;
    ``weight [D, k]``, ``bias [D]``; ``kernel`` = ``causal_conv1d_fn``."""
    y = kernel(_channels_first(x, x.dtype), weight.to(x.dtype).contiguous(),
               None if bias is None else bias.to(x.dtype), activation=None)
    return y.transpose(1, 2)
