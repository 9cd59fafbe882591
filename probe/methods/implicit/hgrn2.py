r"""Implicit attention of HGRN2 (gated linear attention with a per-key-channel forget gate), per head.

``S_t = diag(f_t) S_{t-1} + k_t^T v_t`` and ``o_t = e^{-1/2} q_t S_t`` unroll (from ``S_{-1} = 0``) to::

    o_t = sum_{s<=t} A[h, t, s] v_s,   A[h, t, s] = e^{-1/2} sum_K q_t[K] k_s[K] prod_{s<r<=t} f_r[K]

Values: ``v`` (``hook_value``); keys ``k = 1 - f`` (``hook_input``), queries ``q`` (``hook_q``),
forget ``f`` (``hook_forget``); output: ``o_proj(g_norm(o))`` (``o`` itself is not hooked, so the
check is on the mixer output).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, decay_products


@register("hgrn2", hooks=("q", "forget", "input", "value"),
          size=lambda model, layer: (model.blocks[layer].mixer.heads, 2 * model.blocks[layer].mixer.heads
                                     + 11 * model.blocks[layer].mixer.e))  # one head's [b, e, t, s] at a time
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    q, f, k, v = hooks["q"], hooks["forget"], hooks["input"], hooks["value"]  # [b, T, H, e]
    b, T, H, e = q.shape
    rows = []
    for h in range(H):  # one head at a time bounds memory to [b, e, T, T]
        P = decay_products(f[:, :, h].log().transpose(1, 2))  # [b, K, t, s]
        rows.append(torch.einsum("btk,bsk,bkts->bts", q[:, :, h], k[:, :, h], P))
    A = torch.stack(rows, dim=1) * e ** -0.5
    project = lambda sig: mixer.o_proj(mixer.g_norm(sig.flatten(2)))
    return ImplicitAttention(A, v, "bhts,bshd->bthd", None, project, "head", "v (input)",
                             "o_t = sum_s e^-1/2 (q_t * prod(f) . k_s) v_s")
