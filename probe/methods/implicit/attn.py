r"""Attention's memory map is its pattern, exactly: ``z_t = sum_s pattern[h, t, s] v_s`` per head,
output ``W_O concat_h(z)``. Registered so that attention and the recurrences share one code
path (and one reconstruction check). Values: ``hook_v`` (RoPE rotates only q and k).
"""
from __future__ import annotations

from probe.methods.implicit import register
from probe.methods.implicit.base import ImplicitAttention


@register("attn", hooks=("pattern", "v", "z"))
def build(mixer, hooks, x) -> ImplicitAttention:
    b, T = hooks["z"].shape[:2]
    project = lambda z: mixer.W_o(z.reshape(b, T, -1))
    return ImplicitAttention(hooks["pattern"], hooks["v"], "bhts,bshd->bthd", hooks["z"], project, "head",
                             "v", "z_t = sum_s softmax(q_t k_s / sqrt(d)) v_s")
