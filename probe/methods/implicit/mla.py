r"""Multi-head latent attention's memory map is its pattern, exactly, as for attention:
``z_t = sum_s pattern[h, t, s] v_s`` per head, output ``sum_h z_h W_O[h] + b_O``. The values are
not hooked (the cache holds latents): they are decompressed from ``hook_kv_latent``,
``v_s = (W_kvb c_s)[values]`` (:meth:`probe.mixers.mla.MultiHeadLatentAttention.decompress`).
"""
from __future__ import annotations

import torch

from probe.methods.implicit.base import ImplicitAttention
from probe.methods.implicit.registry import register


@register("mla", hooks=("pattern", "kv_latent", "k_rot", "z"),
          size=lambda model, layer: (model.cfg.n_heads, 6 * model.cfg.n_heads))  # the forward's scores, mask, softmax
def build(model, layer, hooks, x) -> ImplicitAttention:
    mixer = model.blocks[layer].mixer
    W_O, b_O = model.attention_output(layer)
    _, v = mixer.decompress(hooks["kv_latent"], hooks["k_rot"])

    def project(z):  # [b, T, head, d_v] -> [b, T, d_model]
        out = torch.einsum("bthe,hed->btd", z, W_O.to(z.dtype))
        return out if b_O is None else out + b_O.to(z.dtype)

    return ImplicitAttention(hooks["pattern"], v, "bhts,bshd->bthd", hooks["z"], project, "head",
                             "v", "z_t = sum_s softmax(q_t k_s / sqrt(d_qk)) v_s, k and v from the latent c_s")
