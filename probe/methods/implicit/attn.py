r"""Attention's memory map is its pattern, exactly: ``z_t = sum_s pattern[h, t, s] v_s`` per head,
output ``sum_h z_h W_O[h] + b_O``. Registered so that attention and the recurrences share one code
path (and one reconstruction check). Values: ``hook_v`` (RoPE rotates only q and k), each kv head
repeated for the query heads it serves (grouped-query attention). A gated layer (``output_gate``)
multiplies the read by its gate before ``W_O``: ``z_t = g_t * sum_s pattern[h, t, s] v_s`` with
``g_t = sigmoid(W_G x_t)`` recomputed from the layer's input: the matrix stays the pattern, the
gate goes into the projection, and only the output is checked (``hook_z`` is the gated read). Works on a TransformerLens bridge through probe's
adapter too (``W_O`` / ``b_O`` from the bridge).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.registry import register
from probe.methods.implicit.base import ImplicitAttention


@register("attn", hooks=("pattern", "v", "z"),
          size=lambda model, layer: (model.cfg.n_heads, 6 * model.cfg.n_heads))  # the forward's scores, mask, softmax
def build(model, layer, hooks, x) -> ImplicitAttention:
    W_O, b_O = model.attention_output(layer)
    pattern, v = hooks["pattern"], hooks["v"]
    if v.shape[2] != pattern.shape[1]:  # kv head j serves query heads j * group .. (j + 1) * group - 1
        v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
    gate = _output_gate(model, layer, x)

    def project(read):  # [b, T, head, d_head] -> [b, T, d_model]
        z = read if gate is None else read * gate.to(read.dtype)
        out = torch.einsum("bthe,hed->btd", z, W_O.to(z.dtype))
        return out if b_O is None else out + b_O.to(z.dtype)

    signal = hooks["z"] if gate is None else None  # hook_z of a gated layer is the read times the gate
    rule = "z_t = sum_s softmax(q_t k_s / sqrt(d)) v_s" + ("" if gate is None else ", times gate_t")
    return ImplicitAttention(pattern, v, "bhts,bshd->bthd", signal, project, "head", "v", rule)


def _output_gate(model, layer: int, x):
    """``sigmoid(W_G x) [b, T, head, d_head]`` of a gated attention layer, else ``None``."""
    blocks = getattr(model, "blocks", None)
    mixer = getattr(blocks[layer], "mixer", None) if blocks is not None else None
    if getattr(mixer, "W_gate", None) is None:
        return None
    with torch.no_grad():
        return mixer.output_gate(x)
