r"""Implicit attention of Mamba's selective scan, per inner channel ``d`` (Ali et al. 2024).

``s_t = exp(dt_t A) s_{t-1} + dt_t u_t B_t^T`` and ``y_t = (s_t C_t + D u_t) silu(z_t)``
unroll (from ``s_{-1} = 0``) to::

    y_t[d] = sum_{s<=t} M[d, t, s] u_s[d]
    M[d, t, s] = g_t[d] (sum_N C_t[N] exp(A[d, N] sum_{s<r<=t} dt_r[d]) B_s[N] dt_s[d] + [s = t] D[d])

with ``g = silu(z)``. Values: ``u`` (the conv output, ``hook_input``); read from ``hook_dt``,
``hook_B``, ``hook_C``, ``hook_output`` (the gate) and the parameters ``A_log``, ``D``;
output: ``out_proj(y)`` (``y`` is not hooked; the check is on the mixer output). Built a block of channels at a time (``[b, channels, T, T, N]``).
"""
from __future__ import annotations

import torch

from probe.methods.implicit import register
from probe.methods.implicit.base import ImplicitAttention, causal_mask, segment_sums

CHANNEL_BLOCK = 64


@register("mamba", hooks=("input", "dt", "B", "C", "output"))
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
    M = M + torch.diag_embed(mixer.D.detach().to(u.dtype).expand(b, T, di).transpose(1, 2))
    M = M * gate.transpose(1, 2).unsqueeze(-1)  # row scale g_t
    return ImplicitAttention(M, u, "bdts,bsd->btd", None, mixer.out_proj, "channel", "u (conv output)",
                             "y_t = g_t (sum_s C_t exp(A sum dt) B_s dt_s u_s + D u_t)")
