r"""Implicit attention of the QRNN (fo-pooling), per hidden channel ``c``.

``c_t = f_t c_{t-1} + (1 - f_t) z_t`` and ``h_t = o_t c_t`` unroll (from ``c_{-1} = 0``) to::

    h_t[c] = sum_{s<=t} A[c, t, s] z_s[c],   A[c, t, s] = o_t[c] (prod_{s<r<=t} f_r[c]) (1 - f_s[c])

Values: ``z`` (the candidate, ``hook_z``); signal: ``h = o * c`` (``hook_output * hook_state``);
output: ``out_proj(h)``.
"""
from __future__ import annotations

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention, decay_products


@register("qrnn", hooks=("z", "forget", "output", "state"),
          size=lambda model, layer: (model.blocks[layer].mixer.d_hidden, 4 * model.blocks[layer].mixer.d_hidden))
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    z, f, o = hooks["z"], hooks["forget"], hooks["output"]  # [b, T, C]
    P = decay_products(f.log().transpose(1, 2))  # [b, C, t, s]
    A = o.transpose(1, 2).unsqueeze(-1) * P * (1 - f).transpose(1, 2).unsqueeze(-2)
    return ImplicitAttention(A, z, "bcts,bsc->btc", o * hooks["state"], mixer.out_proj, "channel",
                             "z (candidate)", "h_t = sum_s o_t prod(f) (1 - f_s) z_s")
