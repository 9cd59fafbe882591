r"""Implicit attention of the RG-LRU (Griffin / RecurrentGemma recurrent block), per channel ``d``.

``s_t = alpha_t s_{t-1} + beta_t`` with ``alpha_t = (1 - rho_t) a_t`` and
``beta_t = (rho_t + (1 - rho_t) sqrt(1 - a_t^2)) i_t x_t`` (``rho_t = 1`` at a reset), read out as
``y_t = g_t s_t``, unrolls (from ``s_{-1} = 0``) to::

    y_t[d] = sum_{s<=t} M[d, t, s] x_s[d]
    M[d, t, s] = g_t[d] (prod_{s<r<=t} alpha_r[d]) n_s[d] i_s[d],   n_s = rho_s + (1 - rho_s) sqrt(1 - a_s^2)

Values: ``x`` (the conv output, ``hook_input``); read from ``hook_input_gate``, ``hook_decay``,
``hook_output`` (the gate branch g) and ``hook_state_started`` (``rho_t = 1 - started_{t-1}``, the
first token of a fresh run resets); output: ``linear_out(y)``.
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, decay_products
from probe.ops.rglru import coefficients


def size(model, layer) -> tuple[int, int]:
    width = model.blocks[layer].mixer.width
    return width, 6 * width  # decay products (rows, cumsum, exp, mask), the gated product


@register("rglru", hooks=("state_started", "input", "input_gate", "decay", "output"), size=size)
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    started, u, i, a, gate = (hooks[k] for k in ("state_started", "input", "input_gate", "decay", "output"))
    reset = 1 - torch.cat([torch.zeros_like(started[:, :1]), started[:, :-1]], dim=1)  # [b, T, 1]
    alpha, weight = coefficients(torch.ones_like(u), i, a, reset)  # weight = n_s i_s
    P = decay_products(alpha.log().transpose(1, 2))  # [b, d, t, s]
    M = gate.transpose(1, 2).unsqueeze(-1) * P * weight.transpose(1, 2).unsqueeze(-2)
    return ImplicitAttention(M, u, "bdts,bsd->btd", None, mixer.linear_out, "channel", "x (conv output)",
                             "y_t = g_t sum_s (prod alpha) sqrt(1 - a_s^2) i_s x_s")
