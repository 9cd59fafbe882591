r"""Implicit attention of the LMU's linear memory, per Legendre order ``i``.

``m_t = Abar m_{t-1} + Bbar u_t`` (per input channel) unrolls (from ``m_{-1} = 0``) to a
convolution with the impulse response ``H_k = Abar^k Bbar``::

    m_t[c, i] = sum_{s<=t} A[i, t, s] u_s[c],   A[i, t, s] = H_{t-s}[i]

the same Toeplitz matrix for every channel and every sequence (the memory is time-invariant;
``sum_i P_i(2r - 1) A[i, t, s]`` is the weight of a delay ``r theta``). Values: ``u``
(``hook_input``); signal: the memory ``m`` (``hook_state``); output:
``gelu(W_m vec(m_t) + W_x x_t + b_x)`` (the readout is nonlinear, so the signal is the memory).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, causal_mask


@register("lmu", hooks=("input", "state"),
          size=lambda model, layer: (model.blocks[layer].mixer.order, 3 * model.blocks[layer].mixer.order))
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    import torch.nn.functional as F

    u, m = hooks["input"], hooks["state"]  # [b, T, d_u], [b, T, d_u, q]
    b, T = u.shape[:2]
    H = mixer.memory.impulse_response(T, u)  # [T(lag), q]
    idx = torch.arange(T, device=u.device)
    lag = (idx[:, None] - idx[None, :]).clamp(min=0)  # [t, s]
    A = torch.where(causal_mask(T, u.device)[..., None], H[lag], H.new_zeros(()))  # [t, s, q]
    A = A.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # [b, q, t, s]
    project = lambda mem: F.gelu(mixer.W_m(mem.flatten(2)) + mixer.W_x(x))
    return ImplicitAttention(A, u, "bqts,bsc->btcq", m, project, "Legendre order", "u (input)",
                             "m_t = sum_s Abar^(t-s) Bbar u_s")
