r"""Multi-head latent attention (MLA; DeepSeek-V2, Kimi Linear's attention layers): attention whose
KV cache is a low-rank latent shared by every head.

``H`` heads; ``r = kv_rank`` latent width; each head's query and key have a no-position part of
width ``d_nope`` and a rotary part of width ``d_rope`` (``d_qk = d_nope + d_rope``); values have
width ``d_v``::

    q_t        = W_q x_t                      or  W_qb RMSNorm(W_qa x_t)   (q_rank set)  [H, d_qk]
    [c~_t; kr_t] = W_kva x_t                                                              [r + d_rope]
    c_t        = RMSNorm(c~_t)                       the latent written to the cache      [r]
    [kn_t,h; v_t,h] = W_kvb c_t                      per head                             [d_nope + d_v]
    k_t,h      = [kn_t,h ; kr_t]                     the rotary key part is shared by every head
    (q_t,h[d_nope:], kr_t) <- RoPE at position t     if positional == "rope" (none: NoPE, Kimi Linear)
    z_t,h      = sum_{s<=t} softmax_s(q_t,h . k_s,h / sqrt(d_qk)) v_s,h
    y_t        = W_o concat_h(z_t,h)

State (the KV cache, growing by one entry per token): ``{"kv_latent": [batch, P, r], "k_rot":
[batch, P, d_rope]}``, the normalised latents and the (rotated) shared key parts of the ``P``
positions seen so far: ``r + d_rope`` numbers per position and layer, against ``H (d_qk + d_v)`` for
the keys and values it stands for (Kimi-Linear-48B: 512 + 64 = 576 against 32 x (192 + 128) = 10,240).
Keys and values are decompressed from it on every forward (:meth:`MultiHeadLatentAttention.decompress`).

Hooks: ``hook_q`` (``[b, pos, H, d_qk]``, before RoPE), ``hook_kv_latent`` (``c_t``, ``[b, pos, r]``)
and ``hook_k_rot`` (``kr_t`` before RoPE, ``[b, pos, d_rope]``): the two cache entries, so an edit to
either at position t changes every later query's read of position t, carried into later segments
as attention's ``hook_k`` / ``hook_v`` edits are; with RoPE ``hook_rot_q`` / ``hook_rot_k_rot``
(rotated); ``hook_attn_scores`` and ``hook_pattern`` (``[b, H, q_pos, k_pos]``, over the cached
positions too), ``hook_z`` (``[b, pos, H, d_v]``). TransformerLens 4 has no MLA model; its attention
names ``hook_q``, ``hook_attn_scores``, ``hook_pattern``, ``hook_z`` mean the same here, and its
``hook_k`` / ``hook_v`` are ``mixer.decompress(kv_latent, k_rot)`` of the cached latents (not hooks:
an edit there could not be carried in the latent cache).

Options: ``kv_rank`` (``None``: ``d_model // 2``), ``q_rank`` (``None``: a full-rank query
projection), ``d_nope`` (``None``: ``d_head``), ``d_rope`` (``None``: ``d_head // 2``), ``d_v``
(``None``: ``d_head``), ``latent_norm_eps`` (1e-6, the latent norms' epsilon), ``bias`` (False:
biases on ``W_qa``, ``W_kva`` and ``W_o``, transformers' ``attention_bias``).
"""
from __future__ import annotations


import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import InputError
from probe.mixers.base import Mixer, check_state_tensors
from probe.mixers.options import Flag, Int, Real
from probe.norm import RMSNorm
from probe.ops.causal_attention import hooked_causal_attention, rope


class MultiHeadLatentAttention(Mixer):
    NAME = "mla"
    OPTIONS = {"kv_rank": Int(None), "q_rank": Int(None), "d_nope": Int(None), "d_rope": Int(None),
               "d_v": Int(None), "latent_norm_eps": Real(1e-6), "bias": Flag(False)}
    recurrent = False
    is_attention = True

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o, d = self.options, cfg.d_model
        self.n_heads = cfg.n_heads
        self.r = d // 2 if o["kv_rank"] is None else o["kv_rank"]
        self.d_nope = cfg.d_head if o["d_nope"] is None else o["d_nope"]
        self.d_rope = cfg.d_head // 2 if o["d_rope"] is None else o["d_rope"]
        self.d_v = cfg.d_head if o["d_v"] is None else o["d_v"]
        self.d_qk = self.d_nope + self.d_rope
        H, bias, eps = self.n_heads, bool(o["bias"]), o["latent_norm_eps"]
        if o["q_rank"] is None:
            self.W_q = nn.Linear(d, H * self.d_qk, bias=False)
        else:
            self.W_qa = nn.Linear(d, o["q_rank"], bias=bias)
            self.q_norm = RMSNorm(o["q_rank"], eps)
            self.W_qb = nn.Linear(o["q_rank"], H * self.d_qk, bias=False)
        self.W_kva = nn.Linear(d, self.r + self.d_rope, bias=bias)
        self.kv_norm = RMSNorm(self.r, eps)
        self.W_kvb = nn.Linear(self.r, H * (self.d_nope + self.d_v), bias=False)
        self.W_o = nn.Linear(H * self.d_v, d, bias=bias)
        self.use_rope = cfg.positional == "rope"
        names = ("q", "kv_latent", "k_rot", "attn_scores", "pattern", "z")
        for name in names + (("rot_q", "rot_k_rot") if self.use_rope else ()):
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def W_O(self) -> Tensor:
        """Output weights per head, ``[head, d_v, d_model]`` (TransformerLens layout)."""
        return self.W_o.weight.T.reshape(self.n_heads, self.d_v, -1)

    # -- the cache -------------------------------------------------------------------
    def state_shapes(self):
        """One cache entry per position: the latent ``[r]`` and the shared rotary key part ``[d_rope]``."""
        return {"kv_latent": (self.r,), "k_rot": (self.d_rope,)}

    def initial_state(self, batch: int, device=None, dtype=None) -> dict[str, Tensor]:
        """The empty cache: ``{"kv_latent": [batch, 0, r], "k_rot": [batch, 0, d_rope]}``."""
        p = self.W_kva.weight
        return {k: torch.zeros(batch, 0, *s, device=device or p.device, dtype=dtype or p.dtype)
                for k, s in self.state_shapes().items()}

    def check_state(self, state, x):
        if state is None:
            return self.initial_state(x.shape[0], x.device, x.dtype)
        if not isinstance(state, dict) or set(state) != set(self.state_shapes()):
            raise InputError(f"Layer {self.layer} (mla) expects a latent cache {{'kv_latent', 'k_rot'}}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.")
        check_state_tensors(self.layer, "mla", state, x)
        P = state["kv_latent"].shape[1] if state["kv_latent"].dim() == 3 else -1
        for key, (width,) in self.state_shapes().items():
            if tuple(state[key].shape) != (x.shape[0], P, width):
                raise InputError(f"Layer {self.layer} (mla) cache {key!r} has shape {tuple(state[key].shape)}, "
                                 f"expected [{x.shape[0]}, P, {width}] with the same P for both entries.")
        return {k: v.to(x.dtype) for k, v in state.items()}

    def decompress(self, kv_latent: Tensor, k_rot: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``[b, P, H, d_qk]`` and values ``[b, P, H, d_v]`` of cached latents ``[b, P, r]`` and
        (rotated) shared key parts ``[b, P, d_rope]``."""
        kv = self.W_kvb(kv_latent).unflatten(-1, (self.n_heads, self.d_nope + self.d_v))
        k_nope, v = kv.split([self.d_nope, self.d_v], dim=-1)
        k = torch.cat([k_nope, k_rot[:, :, None, :].expand(-1, -1, self.n_heads, -1)], dim=-1)
        return k, v

    # -- forward ---------------------------------------------------------------------
    def _query(self, x: Tensor) -> Tensor:
        q = self.W_q(x) if hasattr(self, "W_q") else self.W_qb(self.q_norm(self.W_qa(x)))
        return self.hook_q(q.unflatten(-1, (self.n_heads, self.d_qk)))

    def _rotate(self, q: Tensor, k_rot: Tensor, P: int) -> tuple[Tensor, Tensor]:
        """RoPE on the rotary parts (``q[..., d_nope:]`` and the shared ``k_rot``) at positions ``P..``."""
        if not self.use_rope:
            return q, k_rot
        q_nope, q_rot = q.split([self.d_nope, self.d_rope], dim=-1)
        q = self.hook_rot_q(torch.cat([q_nope, rope(q_rot, P, self.cfg.rope_base)], dim=-1))
        k_rot = self.hook_rot_k_rot(rope(k_rot[:, :, None, :], P, self.cfg.rope_base)[:, :, 0])
        return q, k_rot

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        state = self.check_state(state, x)
        b, T, _ = x.shape
        P = state["kv_latent"].shape[1]
        q = self._query(x)
        latent, k_rot = self.W_kva(x).split([self.r, self.d_rope], dim=-1)
        latent = self.hook_kv_latent(self.kv_norm(latent))
        k_rot = self.hook_k_rot(k_rot.clone())  # a tensor the hook owns, not a view of the projection
        q, k_rot = self._rotate(q, k_rot, P)
        cache = {"kv_latent": torch.cat([state["kv_latent"], latent], dim=1),
                 "k_rot": torch.cat([state["k_rot"], k_rot], dim=1)}
        k, v = self.decompress(cache["kv_latent"], cache["k_rot"])
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [b, head, pos, d]
        z = hooked_causal_attention(qh, kh, vh, P, None, self.hook_attn_scores, self.hook_pattern)
        z = self.hook_z(z.transpose(1, 2))  # [b, pos, head, d_v]
        return self.W_o(z.reshape(b, T, -1)), cache
