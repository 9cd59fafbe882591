r"""Gated linear attention through flash-linear-attention's ``chunk_gla`` (HGRN2's fused forward).

The recurrence is :mod:`probe.ops.gla`'s, per head::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale q_t S_t

fla's call, in the layout probe already uses (batch, position, head, channel)::

    chunk_gla(q, k, v, g, scale=scale, initial_state=h0, output_final_state=True) -> (o, h_T)
    q, k, g: [b, T, H, K]    v: [b, T, H, V]    h0, h_T: [b, H, K, V] (float32)    o: [b, T, H, V]

``q``, ``k`` and ``v`` go in one dtype (the model's: bf16 in a bf16 model), the log-decays ``g`` and the
state in float32, as fla's kernels take them (they accumulate in float32).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["gla_fused"]


def gla_fused(kernel: Callable, q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, h0: Tensor,
              scale: float) -> tuple[Tensor, Tensor]:
    """``(o [b, T, H, V] in v's dtype, h_T [b, H, K, V] in h0's dtype)`` from ``kernel`` = ``chunk_gla``."""
    dtype = v.dtype
    o, last = kernel(q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.contiguous(),
                     log_decay.to(torch.float32).contiguous(), scale=scale,
                     initial_state=h0.to(torch.float32).contiguous(), output_final_state=True)
    return o, last.to(h0.dtype)
