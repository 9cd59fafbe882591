r"""Causal multi-head self-attention; its state is the KV cache.

With ``H`` query heads, ``H_kv`` key/value heads (``H_kv`` divides ``H``; query head ``h`` reads
kv head ``h // (H / H_kv)``, grouped-query attention) and head width ``d``::

    q, k, v = W_Q x, W_K x, W_V x                     # [batch, pos, H | H_kv | H_kv, d]
    q, k = norm_q(q), norm_k(k)                        # if qk_norm != "none"
    q, k = rope(q, pos), rope(k, pos)                  # if positional == "rope": the first
                                                       #   rotary_fraction * d channels rotate
    scores[h, i, j] = scale * q_i[h] . k_j[h // (H / H_kv)],  j <= i (causal; scale = d^-1/2 unless set)
    pattern = softmax_j(scores);  z_i[h] = sum_j pattern[h, i, j] v_j[h // (H / H_kv)]
    z_i[h] = z_i[h] * sigmoid(W_G x_i)[h]              # if output_gate (Qwen3-Next's gated attention)
    y = W_O concat_h(z)

State: ``{"k": [batch, P, H_kv, d], "v": [batch, P, H_kv, d]}``, the (normed, rotated) keys and
values of the ``P`` positions seen so far; it grows by one entry per token, unlike a recurrent
mixer's fixed-size state. Edits to ``hook_k`` / ``hook_v`` at position t change every later query's
read of position t, the attention analogue of a state edit: ``hook_k`` / ``hook_v`` at t are the
cache entry written at t (``hook_k`` before RoPE, which depends on the position only).

Hooks, in the order they fire (TransformerLens's names: ``hook_z`` is what ``W_O`` reads, as there):

* ``hook_q`` ``[batch, pos, H, d]``, ``hook_k``, ``hook_v`` ``[batch, pos, H_kv, d]``: the query, key and
  value each head reads, *after* the q / k norm and before RoPE. With a q / k norm, the norm's own
  ``q_norm.hook_scale`` / ``k_norm.hook_scale`` (the RMS divisor: ``[batch, pos, H | H_kv, 1]`` per head,
  ``[batch, pos, 1]`` for ``"projection"``) and ``q_norm.hook_normalized`` fire first.
* ``hook_gate`` ``[batch, pos, H, d]`` (``output_gate`` only): ``sigmoid(W_G x)``.
* ``hook_rot_q``, ``hook_rot_k`` (with RoPE).
* ``hook_attn_scores`` and ``hook_pattern`` ``[batch, H, q_pos, k_pos]`` (over the cached positions too).
* ``hook_z`` ``[batch, pos, H, d]``: what ``W_O`` reads (gated when ``output_gate``), so
  ``y = sum_h z[h] W_O[h] + b_O`` for every option (per-head attribution stays exact).

Options (defaults give plain multi-head attention):

* ``bias`` (False): biases on the q / k / v and output projections (GPT-2); ``qkv_bias`` (False): on
  q / k / v only (Qwen2); with ``output_gate`` the gate projection follows q.
* ``n_kv_heads`` (``None``: ``n_heads``): grouped-query attention, transformers' ``num_key_value_heads``.
* ``qk_norm``: ``"none"``; ``"head"``: RMSNorm over each head's ``d`` channels, one weight ``[d]`` shared
  by the heads (Qwen3); ``"head_offset"``: the same with gain ``1 + w`` (Qwen3-Next, Gemma 3);
  ``"projection"``: RMSNorm over the whole projection (all heads' channels) before the head split, weights
  ``[H d]`` for q and ``[H_kv d]`` for k (OLMo-2, OLMo hybrid). ``qk_norm_eps`` (``None``: the model's
  ``norm_eps``; read only with a q / k norm).
* ``rotary_fraction`` (1.0): the first ``int(fraction * d)`` channels of each head rotate (rounded down
  to an even count), the rest pass; transformers' ``partial_rotary_factor`` (Bamba 0.5, Qwen3-Next 0.25).
* ``output_gate`` (False): ``W_G`` (``[H d, d_model]``), transformers' gate half of Qwen3-Next's
  ``q_proj`` (which emits ``[q_h; gate_h]`` per head; the converter splits it).
* ``scale`` (``None``: ``d^-1/2``): the softmax scale (transformers' ``scaling`` / ``attention_multiplier``).

``torch.nn.functional.scaled_dot_product_attention`` is used when neither the scores nor the
pattern is hooked, without a dense ``T x T`` mask (:func:`causal_sdpa`): 100k tokens need no
10 GB mask. Hooking the scores or the pattern materialises them (``[batch, H, T, P + T]``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import ConfigError, InputError
from probe.mixers.base import Mixer, check_state_tensors
from probe.mixers.options import Choice, Flag, Int, Real
from probe.norm import RMSNorm
from probe.ops.causal_attention import causal_mask, causal_sdpa, hooked_causal_attention, rope  # noqa: F401 (imported from here too)

#: the q / k norms of option ``qk_norm`` (module docstring)
QK_NORMS = ("none", "head", "head_offset", "projection")


class Attention(Mixer):
    NAME = "attn"
    OPTIONS = {"bias": Flag(False), "qkv_bias": Flag(False), "n_kv_heads": Int(None),
               "qk_norm": Choice("none", choices=QK_NORMS), "qk_norm_eps": Real(None),
               "rotary_fraction": Real(1.0), "output_gate": Flag(False), "scale": Real(None)}
    recurrent = False
    is_attention = True

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.n_kv_heads = cfg.n_heads if o["n_kv_heads"] is None else o["n_kv_heads"]
        self.use_rope = cfg.positional == "rope"
        self.rotary_dim = self._check_options()
        self.scale = 1 / math.sqrt(self.d_head) if o["scale"] is None else float(o["scale"])
        inner, kv_inner = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        in_bias = bool(o["bias"] or o["qkv_bias"])
        self.W_q = nn.Linear(cfg.d_model, inner, bias=in_bias)
        self.W_k = nn.Linear(cfg.d_model, kv_inner, bias=in_bias)
        self.W_v = nn.Linear(cfg.d_model, kv_inner, bias=in_bias)
        self.W_gate = nn.Linear(cfg.d_model, inner, bias=in_bias) if o["output_gate"] else None
        self.W_o = nn.Linear(inner, cfg.d_model, bias=bool(o["bias"]))
        self.q_norm, self.k_norm = self._qk_norms()
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())
        if self.W_gate is not None:
            self.hook_gate = HookPoint()
        if self.use_rope:
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()

    def _check_options(self) -> int:
        """Checks that involve several options or the model's widths; returns the rotated channel count."""
        o, H, Hkv = self.options, self.n_heads, self.n_kv_heads
        if H % Hkv:
            raise ConfigError(f"attn n_kv_heads={Hkv} must divide n_heads={H} (each kv head serves "
                              f"n_heads / n_kv_heads query heads); choose a divisor of {H}.")
        fraction = o["rotary_fraction"]
        if fraction > 1:
            raise ConfigError(f"attn rotary_fraction={fraction!r} must be in (0, 1]: the share of each head's "
                              "channels that RoPE rotates.")
        rotary_dim = 2 * (int(fraction * self.d_head) // 2)
        if fraction != 1 and not self.use_rope:
            raise ConfigError(f"attn rotary_fraction={fraction!r} needs positional='rope' (this model's "
                              f"positional is {self.cfg.positional!r}, so nothing rotates).")
        if self.use_rope and rotary_dim == 0:
            raise ConfigError(f"attn rotary_fraction={fraction!r} of d_head={self.d_head} rotates no channel pair; "
                              f"use at least {2 / self.d_head:g}.")
        return rotary_dim

    def _qk_norms(self) -> tuple[RMSNorm | None, RMSNorm | None]:
        kind = self.options["qk_norm"]
        if kind == "none":
            return None, None
        eps = self.cfg.norm_eps if self.options["qk_norm_eps"] is None else self.options["qk_norm_eps"]
        offset = kind == "head_offset"
        if kind == "projection":
            return RMSNorm(self.n_heads * self.d_head, eps), RMSNorm(self.n_kv_heads * self.d_head, eps)
        return RMSNorm(self.d_head, eps, offset), RMSNorm(self.d_head, eps, offset)

    @property
    def W_O(self) -> Tensor:
        """Output weights per head, ``[head, d_head, d_model]`` (TransformerLens layout)."""
        return self.W_o.weight.T.reshape(self.n_heads, self.d_head, -1)

    def state_shapes(self):
        return {"k": (0, self.n_kv_heads, self.d_head), "v": (0, self.n_kv_heads, self.d_head)}

    def check_state(self, state, x):
        if state is None:
            return self.initial_state(x.shape[0], x.device, x.dtype)
        if not isinstance(state, dict) or set(state) != {"k", "v"}:
            raise InputError(f"Layer {self.layer} (attn) expects a KV-cache state {{'k', 'v'}}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.")
        check_state_tensors(self.layer, "attn", state, x)
        want = (x.shape[0], self.n_kv_heads, self.d_head)
        for key in ("k", "v"):
            s = tuple(state[key].shape)
            if len(s) != 4 or (s[0], s[2], s[3]) != want:
                raise InputError(f"Layer {self.layer} (attn) cache {key!r} has shape {s}, expected "
                                 f"[{want[0]}, P, {want[1]}, {want[2]}].")
        return {k: v.to(x.dtype) for k, v in state.items()}

    def output_gate(self, x: Tensor) -> Tensor:
        """``sigmoid(W_G x)`` per head, ``[batch, pos, H, d]`` (``output_gate`` only)."""
        return torch.sigmoid(self.W_gate(x)).unflatten(-1, (self.n_heads, self.d_head))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hooked ``q [b, T, H, d]``, ``k, v [b, T, H_kv, d]``: projected, normed, before RoPE."""
        q, k, v = self.W_q(x), self.W_k(x), self.W_v(x)
        whole = self.options["qk_norm"] == "projection"
        if whole:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.unflatten(-1, (-1, self.d_head)) for t in (q, k, v))
        if self.q_norm is not None and not whole:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.hook_q(q), self.hook_k(k), self.hook_v(v)

    def _attend(self, q: Tensor, k_all: Tensor, v_all: Tensor, P: int) -> Tensor:
        """``z [b, T, H, d]``: each query's softmax read of the cached and new values."""
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k_all, v_all))  # [b, head, pos, d]
        z = hooked_causal_attention(qh, kh, vh, P, self.scale, self.hook_attn_scores, self.hook_pattern)
        return z.transpose(1, 2)

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        state = self.check_state(state, x)
        b, T, _ = x.shape
        P = state["k"].shape[1]
        q, k, v = self._project(x)
        gate = self.hook_gate(self.output_gate(x)) if self.W_gate is not None else None
        if self.use_rope:
            q = self.hook_rot_q(rope(q, P, self.cfg.rope_base, self.rotary_dim))
            k = self.hook_rot_k(rope(k, P, self.cfg.rope_base, self.rotary_dim))
        k_all = torch.cat([state["k"], k], dim=1)
        v_all = torch.cat([state["v"], v], dim=1)
        z = self._attend(q, k_all, v_all, P)
        z = self.hook_z(z * gate if gate is not None else z)  # [b, pos, head, d_head]
        y = self.W_o(z.reshape(b, T, -1))
        return y, {"k": k_all, "v": v_all}
