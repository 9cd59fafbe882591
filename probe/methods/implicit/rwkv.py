r"""Implicit attention of RWKV-4 time mixing, per channel ``c``: a softmax over the past.

``wkv_t = (sum_{s<t} e^{w_{t,s} + k_s} v_s + e^{u + k_t} v_t) / (sum_{s<t} e^{w_{t,s} + k_s} + e^{u + k_t})``
with ``w_{t,s} = sum_{s<r<t} log d_r`` (the decay applied at each step since ``s``; ``-(t-1-s) w`` for a
constant decay) is exactly::

    r_t wkv_t[c] = sum_{s<=t} A[c, t, s] v_s[c]
    A[c, t, s]   = r_t[c] softmax_{s'<=t}(L[c, t, s'])_s,   L[t, s] = w_{t,s} + k_s (s < t),  u + k_t (s = t)

Rows of ``A / r_t`` sum to 1: RWKV's memory is an attention whose logits are the keys plus a
position bias that decays linearly with distance. Reads ``hook_r``, ``hook_k``, ``hook_v``,
``hook_decay`` (``d`` per step, so edits to it are honoured) and the parameter ``time_first``
(``u``); output: ``W_o(r * wkv)`` (``wkv`` is not hooked; the check is on the mixer output).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, causal_mask, segment_sums


@register("rwkv", hooks=("r", "k", "v", "decay"),
          size=lambda model, layer: (model.blocks[layer].mixer.d_attn, 6 * model.blocks[layer].mixer.d_attn))
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    r, k, v, d = hooks["r"], hooks["k"], hooks["v"], hooks["decay"]  # [b, T, D]
    b, T, D = k.shape
    kT = k.transpose(1, 2)  # [b, D, T]
    S = segment_sums(d.log().transpose(1, 2))  # [b, D, t, s]: sum_{s<r<=t} log d_r
    past = torch.full((b, D, T, T), float("-inf"), dtype=k.dtype, device=k.device)
    strict = causal_mask(T, k.device).tril(-1)  # s < t
    past[:, :, 1:, :] = S[:, :, :-1, :]  # row t holds sum_{s<r<=t-1}
    L = torch.where(strict, past + kT.unsqueeze(-2), past.new_full((), float("-inf")))
    diag = (mixer.time_first.detach().to(k.dtype) + k).transpose(1, 2)  # [b, D, T]
    L = torch.where(torch.eye(T, dtype=torch.bool, device=k.device), diag.unsqueeze(-1), L)  # s = t: u + k_t
    A = torch.softmax(L, dim=-1) * r.transpose(1, 2).unsqueeze(-1)
    return ImplicitAttention(A, v, "bcts,bsc->btc", None, mixer.W_o, "channel", "v",
                             "r_t wkv_t = r_t sum_s softmax_s(sum log d + k_s; u + k_t at s = t) v_s")
