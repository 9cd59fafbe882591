r"""The gated delta rule through flash-linear-attention's ``chunk_gated_delta_rule`` (Gated DeltaNet)
and ``chunk_kda`` (Kimi Delta Attention): one call mapping for both.

The recurrence is :mod:`probe.ops.delta_rule`'s, per value head, with a scalar log-gate
``g_t [Hv]`` (gdn) or one per key channel ``g_t [Hv, K]`` (kda)::

    S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,     o_t = scale S_t^T q_t

fla's calls, in the layout probe already uses (batch, position, head, channel)::

    chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=h0, output_final_state=True,
                           state_v_first=False)
    chunk_kda(...the same arguments...)  -> (o, h_T)
    q, k: [b, T, Hk, K]   v: [b, T, Hv, V]   g: [b, T, Hv] or [b, T, Hv, K] float32   beta: [b, T, Hv]
    h0, h_T: [b, Hv, K, V] float32   o: [b, T, Hv, V]

Value head ``h`` reads key head ``h // (Hv / Hk)`` in both (fla's grouped value attention, probe's
:meth:`probe.mixers.gdn.GatedDeltaNet.expand_heads`), so ``q`` and ``k`` go unexpanded. ``q`` and ``k``
arrive l2-normalised (probe's own norm, hooked before it: ``use_qk_l2norm_in_kernel=False``) and ``beta``
after its sigmoid; ``q``, ``k``, ``v`` and ``beta`` go in one dtype (the model's, as fla's layers pass
them), the log-gates and the state in float32 (``chunk_kda`` refuses any other initial state). The
state is read by keys, ``[K, V]`` (``state_v_first=False``, said explicitly: fla's own layers now ask
for ``[V, K]``). Both kernels take key widths up to :data:`MAX_K`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["delta_rule_fused", "MAX_K"]

#: the widest key head fla's delta-rule kernels take (their ``assert K <= 256``)
MAX_K = 256


def delta_rule_fused(kernel: Callable, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor,
                     scale: float) -> tuple[Tensor, Tensor]:
    """``(o [b, T, Hv, V] in v's dtype, h_T [b, Hv, K, V] in h0's dtype)`` from ``kernel`` =
    ``chunk_gated_delta_rule`` or ``chunk_kda`` (module docstring for the shapes)."""
    dtype = v.dtype
    o, last = kernel(q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.contiguous(),
                     g.to(torch.float32).contiguous(), beta.to(dtype).contiguous(), scale=scale,
                     initial_state=h0.to(torch.float32).contiguous(), output_final_state=True, state_v_first=False)
    return o, last.to(h0.dtype)
