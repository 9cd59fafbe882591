r"""RWKV-7's generalised delta rule through flash-linear-attention's ``chunk_rwkv7`` (the fused forward
of :class:`probe.mixers.rwkv7.RWKV7`).

The recurrence is :func:`probe.ops.delta_rule.dplr_sequential`'s, per head, with the state read by
keys (``S [K, V]``, probe's and fla's layout)::

    S_t = (diag(exp(w_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T,      o_t = scale S_t^T r_t
    a_t = -kk_t,   b_t = kk_t * iclr_t,   w_t = log decay,   scale = 1

(the correction ``b_t a_t^T S_{t-1}`` reads the state before its decay, as fla's kernels and
``dplr_recurrence`` do). fla's call, in the layout probe already uses (batch, position, head, channel)::

    chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True) -> (o, h_T)
    r, w, k, a, b: [b, T, H, K]    v: [b, T, H, V]    h0, h_T: [b, H, K, V] float32    o: [b, T, H, V]

``r``, ``k``, ``v``, ``a`` and ``b`` go in one dtype (the model's: the kernel's matrix products take one),
the log-decays ``w`` and the state in float32 (the kernel turns ``w`` into float32 cumulative sums
and returns a float32 state). Key heads up to :data:`~probe.ops.fused.delta_rule.MAX_K` wide.

The kernel works chunk by chunk with the log-decays' cumulative sums inside each chunk: a decay of
exactly 0 (``w = -inf``) makes them ``-inf - (-inf)``, and a very large ``|w|`` swamps the small ones
it is added to. It is given log-decays in :data:`LOG_DECAY_RANGE` only (fla's "safe range" of the
gate, which holds RWKV-7's own ``(-e^{-1/2}, 0]``); an edit that leaves it runs the PyTorch form.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["rwkv7_fused", "takes_log_decays", "LOG_DECAY_RANGE"]

#: the log-decays given to the kernel: decays from e^-5 to 1
LOG_DECAY_RANGE = (-5.0, 0.0)


def takes_log_decays(log_w: Tensor) -> bool:
    """Whether every log-decay lies in :data:`LOG_DECAY_RANGE` (NaN does not)."""
    low, high = LOG_DECAY_RANGE
    return bool(((log_w >= low) & (log_w <= high)).all())


def rwkv7_fused(kernel: Callable, r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, kk: Tensor, iclr: Tensor,
                h0: Tensor) -> tuple[Tensor, Tensor]:
    """``(o [b, T, H, V] in v's dtype, h_T [b, H, K, V] in h0's dtype)`` from ``kernel`` = ``chunk_rwkv7``:
    ``r, log_w, k`` (the write key), ``kk`` (the unit removal key), ``iclr`` ``[b, T, H, K]``,
    ``v [b, T, H, V]``, ``h0 [b, H, K, V]``."""
    dtype = v.dtype
    one = lambda t: t.to(dtype).contiguous()  # noqa: E731
    o, last = kernel(one(r), log_w.to(torch.float32).contiguous(), one(k), v.contiguous(), one(-kk), one(kk * iclr),
                     scale=1.0, initial_state=h0.to(torch.float32).contiguous(), output_final_state=True)
    return o, last.to(h0.dtype)
