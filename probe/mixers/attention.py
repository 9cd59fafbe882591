r"""Causal multi-head self-attention; its state is the KV cache.

::

    q, k, v = W_Q x, W_K x, W_V x                     # [batch, pos, head, d_head]
    q, k = rope(q, pos), rope(k, pos)                  # if positional == "rope"
    scores[h, i, j] = q_i . k_j / sqrt(d_head),  j <= i (causal)
    pattern = softmax_j(scores);  z_i = sum_j pattern[h, i, j] v_j
    y = W_O concat_h(z)

State: ``{"k": [batch, P, head, d_head], "v": [batch, P, head, d_head]}``, the (rotated) keys
and values of the ``P`` positions seen so far; it grows by one entry per token, unlike a
recurrent mixer's fixed-size state. Edits to ``hook_k`` / ``hook_v`` at position t
change every later query's read of position t, the attention analogue of a state edit.

Hooks: ``hook_q``, ``hook_k``, ``hook_v`` (before RoPE), ``hook_rot_q``, ``hook_rot_k``
(with RoPE), ``hook_attn_scores`` and ``hook_pattern`` (``[batch, head, q_pos, k_pos]``,
over the cached positions too), ``hook_z`` (``[batch, pos, head, d_head]``).
Option ``bias`` (default False): biases on the q/k/v/output projections (GPT-2).
``torch.nn.functional.scaled_dot_product_attention`` is used when neither the scores nor
the pattern is hooked, without a dense ``T x T`` mask (:func:`causal_sdpa`): 100k tokens need
no 10 GB mask. Hooking the scores or the pattern materialises them (``[batch, head, T, P + T]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import InputError
from probe.mixers.base import Mixer, check_state_tensors
from probe.mixers.options import Flag


def rope(x: Tensor, start: int, base: float) -> Tensor:
    """Rotary embedding (half-split pairs) of ``x [batch, pos, head, d]`` at positions ``start..``."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(start, start + x.shape[1], device=x.device, dtype=torch.float32)
    angles = pos[:, None] * inv_freq[None, :]  # [pos, half]
    cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1) if d % 2 else rotated


#: the most entries of a boolean causal mask built at once (16 MB); longer inputs are split by queries
MASK_ENTRIES = 1 << 24


def causal_mask(P: int, start: int, stop: int, device=None) -> Tensor:
    """``[stop - start, P + stop]`` bool: query ``i`` (absolute position ``P + i``) sees key ``j`` iff
    ``j <= P + i``, for the queries ``start <= i < stop`` after ``P`` cached positions."""
    queries = torch.arange(P + start, P + stop, device=device)
    return torch.arange(P + stop, device=device)[None, :] <= queries[:, None]


def causal_sdpa(qh: Tensor, kh: Tensor, vh: Tensor, P: int) -> Tensor:
    """Causal ``scaled_dot_product_attention`` of ``T`` new queries ``qh [b, head, T, d]`` over
    ``P + T`` keys / values ``kh, vh [b, head, P + T, d]`` (``P`` cached positions first).

    No dense ``T x (P + T)`` mask is built: without a cache SDPA applies its own causal mask
    (``is_causal``), a single query sees every key, and otherwise the queries run in chunks whose
    masks hold at most :data:`MASK_ENTRIES` entries (query ``i`` reads keys ``0 .. P + i``).
    """
    T = qh.shape[-2]
    if P == 0:
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    if T == 1:
        return F.scaled_dot_product_attention(qh, kh, vh)
    rows = max(1, MASK_ENTRIES // (P + T))
    out = []
    for start in range(0, T, rows):
        stop = min(T, start + rows)
        mask = causal_mask(P, start, stop, qh.device)
        out.append(F.scaled_dot_product_attention(qh[..., start:stop, :], kh[..., : P + stop, :],
                                                  vh[..., : P + stop, :], attn_mask=mask))
    return torch.cat(out, dim=-2)


class Attention(Mixer):
    NAME = "attn"
    OPTIONS = {"bias": Flag(False)}
    recurrent = False
    is_attention = True

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        inner = self.n_heads * self.d_head
        bias = bool(self.options["bias"])
        self.W_q = nn.Linear(cfg.d_model, inner, bias=bias)
        self.W_k = nn.Linear(cfg.d_model, inner, bias=bias)
        self.W_v = nn.Linear(cfg.d_model, inner, bias=bias)
        self.W_o = nn.Linear(inner, cfg.d_model, bias=bias)
        self.use_rope = cfg.positional == "rope"
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())
        if self.use_rope:
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()

    @property
    def W_O(self) -> Tensor:
        """Output weights per head, ``[head, d_head, d_model]`` (TransformerLens layout)."""
        return self.W_o.weight.T.reshape(self.n_heads, self.d_head, -1)

    def state_shapes(self):
        return {"k": (0, self.n_heads, self.d_head), "v": (0, self.n_heads, self.d_head)}

    def check_state(self, state, x):
        if state is None:
            return self.initial_state(x.shape[0], x.device, x.dtype)
        if not isinstance(state, dict) or set(state) != {"k", "v"}:
            raise InputError(f"Layer {self.layer} (attn) expects a KV-cache state {{'k', 'v'}}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.")
        check_state_tensors(self.layer, "attn", state, x)
        want = (x.shape[0], self.n_heads, self.d_head)
        for key in ("k", "v"):
            s = tuple(state[key].shape)
            if len(s) != 4 or (s[0], s[2], s[3]) != want:
                raise InputError(f"Layer {self.layer} (attn) cache {key!r} has shape {s}, expected "
                                 f"[{want[0]}, P, {want[1]}, {want[2]}].")
        return {k: v.to(x.dtype) for k, v in state.items()}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        state = self.check_state(state, x)
        b, T, _ = x.shape
        P = state["k"].shape[1]
        split = lambda t: t.view(b, T, self.n_heads, self.d_head)
        q = self.hook_q(split(self.W_q(x)))
        k = self.hook_k(split(self.W_k(x)))
        v = self.hook_v(split(self.W_v(x)))
        if self.use_rope:
            q = self.hook_rot_q(rope(q, P, self.cfg.rope_base))
            k = self.hook_rot_k(rope(k, P, self.cfg.rope_base))
        k_all = torch.cat([state["k"], k], dim=1)
        v_all = torch.cat([state["v"], v], dim=1)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k_all, v_all))  # [b, head, pos, d]
        if self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = qh @ kh.transpose(-1, -2) / math.sqrt(self.d_head)
            scores = self.hook_attn_scores(scores.masked_fill(~causal_mask(P, 0, T, x.device), float("-inf")))
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = pattern @ vh
        else:
            z = causal_sdpa(qh, kh, vh, P)
        z = self.hook_z(z.transpose(1, 2))  # [b, pos, head, d_head]
        y = self.W_o(z.reshape(b, T, -1))
        return y, {"k": k_all, "v": v_all}
