r"""Implicit attention of Mamba-2's SSD scan, per head ``h`` (Dao & Gu 2024: SSD *is* a masked attention).

``S_t[h] = exp(dt_t[h] A[h]) S_{t-1}[h] + dt_t[h] x_t[h] B_t[g]^T`` and ``y_t[h] = S_t[h] C_t[g] + D[h] x_t[h]``
(``g = g(h)``, the head's B/C group) unroll (from ``S_{-1} = 0``) to::

    y_t[h] = sum_{s<=t} M[h, t, s] x_s[h] + D[h] x_t[h]
    M[h, t, s] = (C_t[g] . B_s[g]) exp(A[h] sum_{s<r<=t} dt_r[h]) dt_s[h]

one scalar per (head, t, s), shared by the head's ``P`` channels. The ``D`` skip reads only the
current input and is kept apart (``skip``; ``ImplicitAttention.with_skip()`` puts it on the
diagonal), as for Mamba. Values: ``x`` (the conv output,
``hook_input``); read from ``hook_dt``, ``hook_B``, ``hook_C`` and the parameters ``A_log``, ``D``;
signal: ``hook_y``; output: ``out_proj(readout(y, silu(z)))`` (the mixer's ``project``: gated RMSNorm, or its
``norm`` option) with the gate from ``hook_output``.
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention
from probe.ops.ssd import expand_groups, segment_sums


def size(model, layer) -> tuple[int, int]:
    heads = model.blocks[layer].mixer.heads
    return heads, 5 * heads  # segment sums (rows, cumsum), decay, C.B, their product


@register("mamba2", hooks=("input", "dt", "B", "C", "output", "y"), size=size)
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    u, dt, gate = hooks["input"], hooks["dt"], hooks["output"]
    T, H = u.shape[1], u.shape[2]
    B, C = expand_groups(hooks["B"], H), expand_groups(hooks["C"], H)  # [b, T, H, N]
    A = -torch.exp(mixer.A_log.detach().to(u.dtype))  # [H]
    decay = torch.exp(segment_sums((dt * A).transpose(1, 2)))  # [b, H, t, s], 0 above the diagonal
    M = torch.einsum("bthn,bshn->bhts", C, B) * decay * dt.transpose(1, 2).unsqueeze(-2)  # times dt_s
    D = mixer.D.detach().to(u.dtype)  # [H]

    def project(y):
        return mixer.project(y.flatten(2), gate.to(y.dtype))

    return ImplicitAttention(M, u, "bhts,bshp->bthp", hooks["y"], project, "head", "x (conv output)",
                             "y_t = sum_s (C_t . B_s) exp(A sum dt) dt_s x_s + D x_t (D skip apart)",
                             skip=D[:, None].expand(u.shape[0], H, T), skip_signal=D[:, None] * u)
