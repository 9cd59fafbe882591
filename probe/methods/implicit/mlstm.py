r"""Implicit attention of the mLSTM (matrix memory with exponential input gates), per head.

``C_t = f_t C_{t-1} + i_t k_t v_t^T`` (stored stabilised by ``m_t``) and the readout
``h_t = C~_t^T q_t / (max(|n~_t^T q_t|, exp(-m_t)) + eps)`` (``q`` scaled by ``K^{-1/2}``)
unroll (from an empty memory) to::

    h_t = sum_{s<=t} A[h, t, s] v_s
    A[h, t, s] = K^{-1/2} (q_t . k_s) exp(sum_{s<r<=t} log f_r + log i_s - m_t) / N_t
    N_t        = max(|sum_{s<=t} K^{-1/2} (q_t . k_s) exp(...)|, exp(-m_t)) + eps

Every exponent is ``<= 0`` (``m_t`` is the running max). The normaliser ``N_t`` is one number
per (t, head), rebuilt from the same sum with ``v = 1`` (the memory's ``n``), so ``h`` is exactly
linear in the values given it. Reads ``hook_q``, ``hook_k``, ``hook_v``, ``hook_input``
(log i), ``hook_forget`` (log f), ``hook_state_m`` (m) and ``hook_output`` (o); output:
``out_proj(o * headnorm(h))`` for the ``"large"`` layer and ``out_proj((headnorm(h) + s * c) * o)``
for the ``"paper"`` layer (``h`` is not hooked; the check is on the mixer output). The paper
layer's skip input ``c = silu(conv(u))`` is not hooked either: it is recomputed with the mixer's
own input stage (``_inputs_paper``) from the mixer input and a fresh state; it does not involve
the memory, only the layer's output check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, causal_mask, segment_sums


@register("mlstm", hooks=("q", "k", "v", "input", "forget", "state_m", "output"),
          size=lambda model, layer: (model.blocks[layer].mixer.n_heads, 6 * model.blocks[layer].mixer.n_heads))
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    q, k, v = hooks["q"], hooks["k"], hooks["v"]  # [b, T, H, K|V]
    log_i, log_f, m = hooks["input"], hooks["forget"], hooks["state_m"]  # [b, T, H]
    b, T, H, K = q.shape
    V = v.shape[-1]
    expo = segment_sums(log_f.transpose(1, 2))  # [b, H, t, s]
    expo = expo + log_i.transpose(1, 2).unsqueeze(-2) - m.transpose(1, 2).unsqueeze(-1)
    expo = torch.where(causal_mask(T, q.device), expo.clamp(max=0.0), expo.new_full((), float("-inf")))
    raw = torch.einsum("bthk,bshk->bhts", q, k) * K ** -0.5 * expo.exp()
    den = raw.sum(-1)  # [b, H, t]: q_t . n~_t
    norm = torch.maximum(den.abs(), torch.exp(-m.transpose(1, 2))) + mixer.options["eps"]
    A = raw / norm.unsqueeze(-1)

    skip = None
    if getattr(mixer, "paper", False):
        skip = mixer._inputs_paper(x, mixer.initial_state(b, x.device, x.dtype), {}, set())[6]["_skip"]

    def project(h):  # [b, T, H, V] -> mixer output
        hn = F.layer_norm(h, (V,), eps=mixer.options["norm_eps"]).reshape(b, T, H * V) * mixer.head_norm_w
        if mixer.head_norm_b is not None:
            hn = hn + mixer.head_norm_b
        if skip is not None:
            hn = hn + mixer.skip * skip
        return mixer.out_proj(hooks["output"] * hn)

    return ImplicitAttention(A, v, "bhts,bshd->bthd", None, project, "head", "v",
                             "h_t = sum_s (q_t . k_s) exp(sum log f + log i_s - m_t) v_s / N_t")
