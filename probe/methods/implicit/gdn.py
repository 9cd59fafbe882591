r"""Implicit attention of Gated DeltaNet and Kimi Delta Attention, per value head.

``S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` and ``o_t = K^{-1/2} S_t^T q_t``
unroll (from ``S_{-1} = 0``) to::

    o_t = sum_{s<=t} A[h, t, s] v_s,
    A[h, t, s] = K^{-1/2} beta_s q_t^T [ prod_{s<r<=t} a_r (I - beta_r k_r k_r^T) ] k_s

The delta rule is linear in its state and in the values, not in the keys: with ``q, k, a, beta``
fixed (read from the hooks) ``o`` is exactly linear in ``v``. So ``A`` is the rule itself run
with one-hot values ``v_s = e_s`` (``V = T``): row ``t`` of the output is row ``t`` of ``A``
(:func:`probe.ops.delta_rule.gated_delta_rule_chunked`, ``O(T^2 K)`` per head). Unlike a gated
linear attention, ``A[t, s]`` can be negative and can exceed 1: a later key that overlaps
``k_s`` erases part of what ``v_s`` wrote.

Kimi Delta Attention (``kda``) decays per key channel, ``S_t = (I - beta_t k_t k_t^T) diag(alpha_t)
S_{t-1} + beta_t k_t v_t^T``, so its factors are ``(I - beta_r k_r k_r^T) diag(alpha_r)``; the same
one-hot run gives its ``A`` (the kernel takes either gate).

Reads ``hook_q``, ``hook_k`` (before the l2 norm, which is re-applied), ``hook_v``,
``hook_beta``, ``hook_log_decay``, ``hook_gate_input``; the signal is ``hook_recurrence_out``
and the output ``out_proj(RMSNorm(o) * w * act(z))`` (the mixer's own ``readout``).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention
from probe.mixers.gdn import l2_normalise
from probe.ops.delta_rule import gated_delta_rule_chunked


def _size(model, layer) -> tuple[int, int]:
    """Numbers per (batch, t, s) pair: the matrix, and besides it the one-hot values, the rule's
    ``W_v`` and its output (``[b, Hv, t, s]`` each)."""
    heads = model.blocks[layer].mixer.Hv
    return heads, 3 * heads


def _size_per_channel(model, layer) -> tuple[int, int]:
    """As :func:`_size`, plus the chunks' per-channel decays ``[b, Hv, T, L, K]`` (``L`` positions per
    chunk): one number per pair and head once ``T >= L K``, counted so."""
    heads, scratch = _size(model, layer)
    return heads, scratch + heads


HOOKS = ("q", "k", "v", "beta", "log_decay", "gate_input", "recurrence_out")


@register("kda", hooks=HOOKS, size=_size_per_channel)
@register("gdn", hooks=HOOKS, size=_size)
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    wide = torch.promote_types(hooks["v"].dtype, torch.float32)
    q = mixer.expand_heads(l2_normalise(hooks["q"].to(wide)))
    k = mixer.expand_heads(l2_normalise(hooks["k"].to(wide)))
    b, T, H, _ = q.shape
    one_hot = torch.eye(T, dtype=wide, device=q.device).expand(b, H, T, T).transpose(1, 2)  # [b, s, H, e_s]
    rows, _ = gated_delta_rule_chunked(q, k, one_hot, hooks["log_decay"].to(wide), hooks["beta"].to(wide),
                                       scale=mixer.K ** -0.5, chunk=mixer.options["chunk"])
    A = rows.transpose(1, 2).to(hooks["v"].dtype)  # [b, H, t, s]
    project = lambda o: mixer.readout(o, hooks["gate_input"])
    return ImplicitAttention(A, hooks["v"], "bhts,bshd->bthd", hooks["recurrence_out"], project, "head", "v",
                             "o_t = sum_s beta_s q_t^T prod_r (I - beta_r k_r k_r^T) diag(alpha_r) k_s v_s")
