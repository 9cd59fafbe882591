r"""Implicit attention of linear-recurrence mixers: one small module per mixer kind.

``REGISTRY`` maps a mixer ``NAME`` to an :class:`Unrolling`: the mixer hooks it reads, a
function ``size(model, layer) -> (kept, scratch)`` (numbers per ``(batch, t, s)`` pair: the matrix's
head count, and the most its build holds besides, so a memory map is sized before it is built) and a
function ``build(model, layer, hooks, x) -> ImplicitAttention`` (``hooks``: ``{suffix: [batch, pos, ...]}``
cached from ``blocks.{layer}.mixer.hook_<suffix>``; ``x``: the mixer's input, ``hook_mixer_in``; the
mixer's parameters are ``model.blocks[layer].mixer``'s).
A new linear mixer gets a file here with ``@register("name", hooks=(...), size=...)``.

Attention is registered too (its pattern is its "implicit" attention, exactly). Mixers with no
unrolling (nonlinear recurrences: LSTM, sLSTM) get a clear error from :func:`unrolling`;
:func:`probe.methods.memory.memory_map` gives them gradient influence instead.
"""
from __future__ import annotations

from probe.methods.implicit.base import ImplicitAttention, causal_mask, decay_products, segment_sums
from probe.methods.implicit.registry import REGISTRY, Unrolling, register, supported, unrolling

# one module per mixer kind; importing registers it
from probe.methods.implicit import attn, gdn, hgrn2, lmu, mamba, mamba2, mla, mlstm, qrnn, rglru, rwkv, rwkv7  # noqa: F401,E501

__all__ = ["REGISTRY", "ImplicitAttention", "Unrolling", "causal_mask", "decay_products", "register",
           "segment_sums", "supported", "unrolling"]
