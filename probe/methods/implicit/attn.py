r"""Attention's memory map is its pattern, exactly: ``z_t = sum_s pattern[h, t, s] v_s`` per head,
output ``sum_h z_h W_O[h] + b_O``. Registered so that attention and the recurrences share one code
path (and one reconstruction check). Values: ``hook_v`` (RoPE rotates only q and k). Works on a
TransformerLens bridge through probe's adapter too (``W_O`` / ``b_O`` from the bridge).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention


@register("attn", hooks=("pattern", "v", "z"),
          size=lambda model, layer: (model.cfg.n_heads, 6 * model.cfg.n_heads))  # the forward's scores, mask, softmax
def build(model, layer, hooks, x) -> ImplicitAttention:
    W_O, b_O = model.attention_output(layer)

    def project(z):  # [b, T, head, d_head] -> [b, T, d_model]
        out = torch.einsum("bthe,hed->btd", z, W_O.to(z.dtype))
        return out if b_O is None else out + b_O.to(z.dtype)

    return ImplicitAttention(hooks["pattern"], hooks["v"], "bhts,bshd->bthd", hooks["z"], project, "head",
                             "v", "z_t = sum_s softmax(q_t k_s / sqrt(d)) v_s")
