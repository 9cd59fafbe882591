r"""Implicit attention of RWKV-7 time mixing, per head.

``S_t = (diag(w_t) + (a_t kk_t)(-kk_t)^T) S_{t-1} + k_t v_t^T`` (state ``[K, V]``) and
``o_t = S_t^T r_t`` unroll (from ``S_{-1} = 0``) to::

    o_t = sum_{s<=t} A[h, t, s] v_s,
    A[h, t, s] = r_t^T [ prod_{s<r<=t} (diag(w_r) - a_r kk_r kk_r^T) ] k_s

The generalised delta rule is linear in its state and in the values: with ``r, k, w, a`` fixed
(read from the hooks) ``o`` is exactly linear in ``v``, so ``A`` is the rule run with one-hot
values ``v_s = e_s`` (:func:`probe.ops.delta_rule.dplr_sequential`, ``V = T``). ``A[t, s]`` can be
negative: a later removal key that overlaps ``k_s`` erases part of what ``v_s`` wrote.

Reads ``hook_r``, ``hook_k`` (``k~``; the removal and write keys are rebuilt with the mixer's
``k_k``, ``k_a``), ``hook_log_decay``, ``hook_iclr``, ``hook_v``, ``hook_gate``; the signal is
``hook_recurrence_out``. The bonus ``(r_t . (k_t * r_k)) v_t`` reads only the current position
and enters after the group norm, so it stays in the projection (the mixer's own ``readout``).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention
from probe.ops.delta_rule import dplr_sequential


def _size(model, layer) -> tuple[int, int]:
    """Numbers per (batch, t, s) pair: the matrix, and besides it the one-hot values, the rule's
    output and its state (``[b, H, t, s]`` each, the state ``K`` times that per position)."""
    mixer = model.blocks[layer].mixer
    return mixer.H, (2 + mixer.K) * mixer.H


@register("rwkv7", hooks=("r", "k", "log_decay", "iclr", "v", "gate", "recurrence_out"), size=_size)
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    wide = torch.promote_types(hooks["v"].dtype, torch.float32)
    r, k, a, log_w = (hooks[n].to(wide) for n in ("r", "k", "iclr", "log_decay"))
    kk, k_write = mixer.keys(k, a)
    b, T, H, _ = r.shape
    one_hot = torch.eye(T, dtype=wide, device=r.device).expand(b, H, T, T).transpose(1, 2)  # [b, s, H, e_s]
    rows, _ = dplr_sequential(r, k_write, one_hot, log_w, kk * a, -kk)
    A = rows.transpose(1, 2).to(hooks["v"].dtype)  # [b, H, t, s]
    project = lambda o: mixer.readout(o, hooks["r"], hooks["k"], hooks["v"], hooks["iclr"], hooks["gate"])  # noqa: E731
    return ImplicitAttention(A, hooks["v"], "bhts,bshd->bthd", hooks["recurrence_out"], project, "head", "v",
                             "o_t = sum_s r_t^T prod_r (diag(w_r) - a_r kk_r kk_r^T) k_s v_s")
