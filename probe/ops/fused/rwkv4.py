r"""RWKV-4's WKV through flash-linear-attention's ``fused_recurrent_rwkv4`` (the fused forward of
:class:`probe.mixers.rwkv.RWKV`).

The recurrence is :mod:`probe.mixers.rwkv`'s stabilised one, per channel, with ``num``, ``den`` the
memory scaled by ``e^{-p}`` and ``p`` its running maximum exponent; ``w = exp(time_decay)`` (the
decay per step is ``e^{-w}``) and ``u = time_first`` (the bonus of the current token)::

    q      = max(p_{t-1}, u + k_t)
    wkv_t  = (e^{p_{t-1} - q} num_{t-1} + e^{u + k_t - q} v_t) / (e^{p_{t-1} - q} den_{t-1} + e^{u + k_t - q})
    p_t    = max(p_{t-1} - w, k_t)
    num_t  = e^{p_{t-1} - w - p_t} num_{t-1} + e^{k_t - p_t} v_t,     den_t alike with v = 1

fla's kernel runs exactly these steps with its state ``(alpha, beta, eps) = (num, den, p)``; it takes
the decay parameter itself and negates its exponential (``w <- -exp(w)``)::

    fused_recurrent_rwkv4(w, u, k, v, state) -> (wkv, state_T)
    w = time_decay, u = time_first: [D]    k, v, wkv: [b, T, D]
    state, state_T: [b, 3, 1, D]  (num, den, p stacked on dim 1)

The kernel computes in float32 and writes ``wkv`` and ``state_T`` in ``k``'s dtype: ``k``, ``v`` and the
state go in float32, as probe keeps the carried ``state_num``, ``state_den``, ``state_max``. It
takes one decay per channel: a decay edited at some position runs the PyTorch form.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["rwkv4_fused"]


def rwkv4_fused(kernel: Callable, time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, num0: Tensor,
                den0: Tensor, max0: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``(wkv [b, T, D] float32, (num_T, den_T, max_T) [b, D] in num0's dtype)`` from ``kernel`` =
    ``fused_recurrent_rwkv4``: ``time_decay, time_first [D]``, ``k, v [b, T, D]``, the carried
    ``num0, den0, max0 [b, D]``."""
    f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    state = torch.stack([num0, den0, max0], dim=1).unsqueeze(2)  # [b, 3, 1, D]
    wkv, last = kernel(f32(time_decay), f32(time_first), f32(k), f32(v), f32(state))
    num, den, p = last[:, :, 0].to(num0.dtype).unbind(1)
    return wkv, (num, den, p)
