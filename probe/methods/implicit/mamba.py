r"""Implicit attention of Mamba's selective scan, per inner channel ``d`` (Ali et al. 2024).

``s_t = exp(dt_t A) s_{t-1} + dt_t u_t B_t^T`` and ``y_t = (s_t C_t + D u_t) silu(z_t)``
unroll (from ``s_{-1} = 0``) to::

    y_t[d] = sum_{s<=t} M[d, t, s] u_s[d] + K[d, t] u_t[d]
    M[d, t, s] = g_t[d] sum_N C_t[N] exp(A[d, N] sum_{s<r<=t} dt_r[d]) B_s[N] dt_s[d]
    K[d, t]    = g_t[d] D[d]

with ``g = silu(z)``. ``M`` is Ali et al.'s hidden attention ``alpha`` times the output gate ``g_t``
(a row scale); the ``D`` skip ``K`` reads only the current input and is kept apart (``skip``:
on trained Mambas it holds most of the diagonal, 55-85 % of a zoo layer's mass with it, 12-45 %
without). ``ImplicitAttention.with_skip()`` gives ``M + diag(K)``, the whole linear map.
Values: ``u`` (the conv output, ``hook_input``); read from ``hook_dt``, ``hook_B``, ``hook_C``,
``hook_output`` (the gate) and the parameters ``A_log``, ``D``; output: ``out_proj(y)`` (``y`` is
not hooked; the check is on the mixer output). Built a block of channels at a time
(``[b, channels, T, T, N]``).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, causal_mask, segment_sums

CHANNEL_BLOCK = 64


def size(model, layer) -> tuple[int, int]:
    mixer = model.blocks[layer].mixer
    di, N = mixer.d_inner, mixer.d_state
    return di, 5 * di + N + 3 * CHANNEL_BLOCK * N  # seg, blocks, cat, where, gate; CB; one block's decay terms


@register("mamba", hooks=("input", "dt", "B", "C", "output"), size=size)
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    u, dt, B, C, gate = hooks["input"], hooks["dt"], hooks["B"], hooks["C"], hooks["output"]
    b, T, di = u.shape
    A_neg = -torch.exp(mixer.A_log.detach().to(u.dtype))  # [di, N]
    causal = causal_mask(T, u.device)
    seg = segment_sums(dt.transpose(1, 2))  # [b, di, t, s], >= 0
    CB = torch.einsum("btn,bsn->btsn", C, B)  # [b, t, s, N]
    blocks = []
    for lo in range(0, di, CHANNEL_BLOCK):
        hi = min(di, lo + CHANNEL_BLOCK)
        decay = torch.exp(seg[:, lo:hi, :, :, None] * A_neg[lo:hi, None, None, :])  # [b, c, t, s, N]
        blocks.append(torch.einsum("btsn,bctsn->bcts", CB, decay))
    M = torch.cat(blocks, dim=1) * dt.transpose(1, 2).unsqueeze(-2)  # times dt_s
    M = torch.where(causal, M, M.new_zeros(()))
    M = M * gate.transpose(1, 2).unsqueeze(-1)  # row scale g_t
    skip = gate * mixer.D.detach().to(u.dtype)  # [b, T, di]: g_t D
    return ImplicitAttention(M, u, "bdts,bsd->btd", None, mixer.out_proj, "channel", "u (conv output)",
                             "y_t = g_t (sum_s C_t exp(A sum dt) B_s dt_s u_s) + g_t D u_t (D skip apart)",
                             skip=skip.transpose(1, 2), skip_signal=skip * u)
