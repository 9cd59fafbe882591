r"""Shared blocks: one attention + MLP block whose weights several layers use (Zamba / Zamba2).

``ModelConfig.shared_layout[i]`` names the shared block layer ``i`` reads (``None``: none). The
model holds each shared block's weights once, at ``shared_blocks.{j}``; every layer that uses one
holds a :class:`SharedUse` at ``blocks.{i}.shared`` with what is its own: low-rank adapters, the
output projection, its hooks and its KV cache. With ``e`` the embedding stream (what enters block 0)
and ``r`` the residual entering layer ``i``::

    h    = [r ; e]                                        hook_in        [b, pos, 2 d_model]
    a    = Norm_in(h)                                     (shared weights, width 2 d_model)
    q    = W_q a + U_q D_q a,  k = W_k a + U_k D_k a,  v = W_v a + U_v D_v a     hook_q / hook_k / hook_v
    q, k = rope(q), rope(k)                               hook_rot_q / hook_rot_k (positional "rope")
    z    = softmax(scale q k^T + causal mask) v           hook_attn_scores, hook_pattern, hook_z
    o    = W_o z                                          hook_attn_out  [b, pos, d_model]
    m    = Norm_mlp(o)                                    hook_mlp_in
    g, u = W_gu m + U_gu D_gu m   (split in halves)
    s    = W_down (act(g) * u)                            hook_mlp_post [b, pos, d_mlp], hook_mlp_out
    c    = W_out s                                        hook_out       [b, pos, d_model]

``W_*``, ``Norm_*`` are the shared block's (one copy, used by every layer that names it);
``D_* [rank, in]``, ``U_* [out, rank]`` (the adapters, rank ``adapter_rank``; 0: none, and q/k/v
adapters only with ``attn_adapters``) and ``W_out`` belong to the use. There is no residual
inside the shared block. The layer's block then reads ``c`` as part of its mixer input:
``mixer_in = Norm_1(r + c)`` while the residual stream continues from ``r`` (Zamba2's hybrid layer:
the shared block writes only into the mixer's input, never into the residual stream, so the
residual decomposition of direct logit attribution is unchanged).

Heads: ``n_heads`` query heads of ``d_head = 2 d_model / n_heads``; ``n_kv_heads`` key / value
heads (grouped-query attention: query head ``h`` reads kv head ``h // (n_heads / n_kv_heads)``).
``scale`` defaults to ``1 / sqrt(d_head)`` (Zamba2: ``1 / sqrt(d_head / 2)``).

State: each use has its own KV cache, in the layer's state beside the mixer's:
``ModelState.layers[i]["shared"] = {"k": [b, P, n_kv_heads, d_head], "v": ...}`` (the rotated
keys; ``ModelState.hook_items`` names them ``blocks.{i}.shared.cache_k`` / ``cache_v``). As for
attention mixers, an edit of ``hook_k`` / ``hook_v`` (or ``hook_rot_k``) at position ``t`` changes
every later query's read of position ``t``.

Every hook is per use (``blocks.{i}.shared.hook_*``), so the shared block's output can be read or
patched at each layer separately; the shared norms have no hooks of their own (their outputs are
``Norm_in`` inside ``hook_q/k/v`` and ``hook_mlp_in``). TransformerLens 4's Zamba2 adapter hooks a
hybrid layer only as a whole (``blocks.{i}.hook_in`` / ``hook_out``, probe's ``hook_resid_pre`` /
``hook_resid_post``): it has no hook inside the shared block nor on a hybrid layer's Mamba-2 mixer,
so there is nothing to alias.

The embedding ``e`` is ``hook_embed``'s output (transformers' ``original_hidden_states``), kept apart
from the residual stream: patching ``blocks.0.hook_resid_pre`` leaves what the shared blocks read
unchanged; patch ``hook_embed`` to change both.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import ConfigError, InputError
from probe.ops.causal_attention import hooked_causal_attention, rope
from probe.mixers.base import check_state_tensors
from probe.mixers.options import Choice, Flag, Int, Real, resolve
from probe.mlp import GATED
from probe.norm import LayerNorm, RMSNorm

#: the options of every shared block (``ModelConfig.shared_options``), checked like mixer options
OPTIONS = {"n_heads": Int(None), "n_kv_heads": Int(None), "d_mlp": Int(None),
           "mlp": Choice("geglu", choices=tuple(GATED)), "adapter_rank": Int(0, low=0),
           "attn_adapters": Flag(False), "scale": Real(None)}

#: the hooks of one use, in the order its forward fires them (``rot_*`` with rope only; as in
#: :mod:`probe.mixers.attention`, ``attn_scores`` / ``pattern`` are computed only when one is hooked)
USE_SITES = ("in", "q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "attn_out", "mlp_in",
             "mlp_post", "mlp_out", "out")


def shared_options(cfg) -> dict[str, Any]:
    """The shared blocks' options: declared defaults updated with ``cfg.shared_options`` (checked),
    with the widths derived from the model filled in."""
    o = resolve("shared block", OPTIONS, cfg.shared_options)
    o["n_heads"] = o["n_heads"] or cfg.n_heads
    o["n_kv_heads"] = o["n_kv_heads"] or o["n_heads"]
    o["d_mlp"] = o["d_mlp"] or cfg.d_mlp
    return o


def check_shared_layout(cfg) -> None:
    """A :class:`ConfigError` unless ``cfg.shared_layout`` / ``cfg.shared_options`` describe
    usable shared blocks (one entry per layer, block indices ``0 .. n - 1`` each used, widths
    that divide into heads)."""
    layout = cfg.shared_layout
    if not isinstance(cfg.shared_options, dict):
        raise ConfigError(f"shared_options must be a dict of options, e.g. {{'adapter_rank': 128}}; got "
                          f"{type(cfg.shared_options).__name__}.")
    if layout is None:
        if cfg.shared_options:
            raise ConfigError("shared_options is given but no layer uses a shared block; set shared_layout "
                              "(e.g. [None, 0, None, 0]) or drop shared_options.")
        return
    if not isinstance(layout, (list, tuple)) or len(layout) != cfg.n_layers:
        raise ConfigError(f"shared_layout needs one entry per layer ({cfg.n_layers}): the index of the shared "
                          f"block the layer reads, or None; got {layout!r}.")
    bad = [j for j in layout if j is not None and (not isinstance(j, int) or isinstance(j, bool) or j < 0)]
    if bad:
        raise ConfigError(f"shared_layout entries are shared-block indices (integers >= 0) or None, got {bad[0]!r}.")
    cfg.shared_layout = list(layout)  # a tuple (or JSON's list) compares equal after save / load
    used = sorted({j for j in layout if j is not None})
    if not used:
        raise ConfigError("shared_layout names no shared block; use None instead of a list of Nones.")
    if used != list(range(len(used))):
        raise ConfigError(f"shared_layout uses blocks {used}: number the shared blocks 0 .. n-1 with every one "
                          "used (an unused block would hold weights nothing reads).")
    o = shared_options(cfg)
    width = 2 * cfg.d_model
    if width % o["n_heads"]:
        raise ConfigError(f"shared block n_heads={o['n_heads']} must divide its input width 2 * d_model = {width} "
                          "(d_head = 2 d_model / n_heads).")
    if o["n_heads"] % o["n_kv_heads"]:
        raise ConfigError(f"shared block n_kv_heads={o['n_kv_heads']} must divide n_heads={o['n_heads']}.")
    if o["d_mlp"] < 1:
        raise ConfigError("the shared block's MLP needs a width: set shared_options['d_mlp'] (the model's d_mlp "
                          "is 0).")
    if o["attn_adapters"] and not o["adapter_rank"]:
        raise ConfigError("shared block attn_adapters=True needs adapter_rank >= 1.")


def _unhooked_norm(cfg, width: int) -> nn.Module:
    """The model's norm kind at ``width`` without hook points: a shared module's hooks would fire once
    per use under one name, so the uses carry the hooks."""
    norm = RMSNorm(width, cfg.norm_eps) if cfg.norm == "rmsnorm" else LayerNorm(width, cfg.norm_eps)
    norm.hook_scale, norm.hook_normalized = nn.Identity(), nn.Identity()
    return norm


class SharedBlock(nn.Module):
    """The weights of one shared attention + MLP block (module docstring); it has no forward of its
    own: each :class:`SharedUse` runs it with its adapters and hooks."""

    def __init__(self, cfg, index: int):
        super().__init__()
        self.index = index
        o = shared_options(cfg)
        self.n_heads, self.n_kv_heads, self.d_mlp = o["n_heads"], o["n_kv_heads"], o["d_mlp"]
        width = 2 * cfg.d_model
        self.d_head = width // self.n_heads
        self.scale = o["scale"] if o["scale"] is not None else 1 / math.sqrt(self.d_head)
        self.act = GATED[o["mlp"]]
        self.ln_in = _unhooked_norm(cfg, width)
        self.W_q = nn.Linear(width, self.n_heads * self.d_head, bias=False)
        self.W_k = nn.Linear(width, self.n_kv_heads * self.d_head, bias=False)
        self.W_v = nn.Linear(width, self.n_kv_heads * self.d_head, bias=False)
        self.W_o = nn.Linear(self.n_heads * self.d_head, cfg.d_model, bias=False)
        self.ln_mlp = _unhooked_norm(cfg, cfg.d_model)
        self.W_gate_up = nn.Linear(cfg.d_model, 2 * self.d_mlp, bias=False)  # rows: [gate; up]
        self.W_down = nn.Linear(self.d_mlp, cfg.d_model, bias=False)


class Adapter(nn.Module):
    """A low-rank map ``x -> U (D x)`` (``D [rank, d_in]``, ``U [d_out, rank]``): one use's own
    correction to a shared projection (LoRA form, Zamba2's adapters)."""

    def __init__(self, d_in: int, rank: int, d_out: int):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class SharedUse(nn.Module):
    """Layer ``layer``'s use of shared block ``block`` (module docstring): its adapters, its output
    projection ``W_out``, its hooks; ``forward`` returns the contribution ``c`` to the mixer input
    and the new KV cache.

    The shared block is referenced, not registered here: its weights appear once in the state dict
    (``shared_blocks.{j}.*``), and ``parameters()`` yields them once."""

    def __init__(self, cfg, layer: int, block: SharedBlock):
        super().__init__()
        self.layer = layer
        self._block = (block,)  # a tuple: not a registered submodule (see the class docstring)
        o = shared_options(cfg)
        rank, width = o["adapter_rank"], 2 * cfg.d_model
        kv = block.n_kv_heads * block.d_head
        adapters = {"q": (width, block.n_heads * block.d_head), "k": (width, kv), "v": (width, kv)}
        for name, (d_in, d_out) in adapters.items():
            setattr(self, f"adapter_{name}", Adapter(d_in, rank, d_out) if o["attn_adapters"] else None)
        self.adapter_gate_up = Adapter(cfg.d_model, rank, 2 * block.d_mlp) if rank else None
        self.W_out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.use_rope = cfg.positional == "rope"
        self.rope_base = cfg.rope_base
        for site in USE_SITES:
            if self.use_rope or not site.startswith("rot_"):
                setattr(self, f"hook_{site}", HookPoint())

    @property
    def block(self) -> SharedBlock:
        """The shared block this layer reads."""
        return self._block[0]

    def initial_state(self, batch: int, device=None, dtype=None) -> dict[str, Tensor]:
        """An empty KV cache ``{"k", "v": [batch, 0, n_kv_heads, d_head]}``."""
        shape = (batch, 0, self.block.n_kv_heads, self.block.d_head)
        return {key: torch.zeros(shape, device=device, dtype=dtype) for key in ("k", "v")}

    def check_state(self, state: dict | None, x: Tensor) -> dict[str, Tensor]:
        if state is None:
            return self.initial_state(x.shape[0], x.device, x.dtype)
        where = f"Layer {self.layer} (shared block {self.block.index})"
        if not isinstance(state, dict) or set(state) != {"k", "v"}:
            raise InputError(f"{where} expects a KV-cache state {{'k', 'v'}}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.")
        check_state_tensors(self.layer, "shared block", state, x)
        want = (x.shape[0], self.block.n_kv_heads, self.block.d_head)
        for key in ("k", "v"):
            s = tuple(state[key].shape)
            if len(s) != 4 or (s[0], s[2], s[3]) != want:
                raise InputError(f"{where} cache {key!r} has shape {s}, expected [{want[0]}, P, {want[1]}, "
                                 f"{want[2]}].")
        return {k: v.to(x.dtype) for k, v in state.items()}

    def forward(self, resid: Tensor, embed: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        """``resid, embed [b, pos, d_model]`` -> ``(c [b, pos, d_model], {"k", "v"})``."""
        state = self.check_state(state, resid)
        blk = self.block
        a = blk.ln_in(self.hook_in(torch.cat([resid, embed], dim=-1)))
        z, cache = self._attend(a, state)
        o = self.hook_attn_out(blk.W_o(z.flatten(2)))
        m = self.hook_mlp_in(blk.ln_mlp(o))
        gate_up = blk.W_gate_up(m)
        if self.adapter_gate_up is not None:
            gate_up = gate_up + self.adapter_gate_up(m)
        gate, up = gate_up.chunk(2, dim=-1)
        s = self.hook_mlp_out(blk.W_down(self.hook_mlp_post(blk.act(gate) * up)))
        return self.hook_out(self.W_out(s)), cache

    def _project(self, a: Tensor, name: str, heads: int) -> Tensor:
        """``(W_name + U D) a`` as ``[b, pos, heads, d_head]``, hooked."""
        y = getattr(self.block, f"W_{name}")(a)
        adapter = getattr(self, f"adapter_{name}")
        if adapter is not None:
            y = y + adapter(a)
        return getattr(self, f"hook_{name}")(y.unflatten(-1, (heads, self.block.d_head)))

    def _attend(self, a: Tensor, state: dict) -> tuple[Tensor, dict]:
        """Causal attention of the new positions over the cache and themselves: ``(z [b, pos, head,
        d_head], new cache)``."""
        blk = self.block
        P = state["k"].shape[1]
        q = self._project(a, "q", blk.n_heads)
        k = self._project(a, "k", blk.n_kv_heads)
        v = self._project(a, "v", blk.n_kv_heads)
        if self.use_rope:
            q = self.hook_rot_q(rope(q, P, self.rope_base))
            k = self.hook_rot_k(rope(k, P, self.rope_base))
        k_all, v_all = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k_all, v_all))  # [b, head, pos, d]
        z = hooked_causal_attention(qh, kh, vh, P, blk.scale, self.hook_attn_scores, self.hook_pattern)
        return self.hook_z(z.transpose(1, 2)), {"k": k_all, "v": v_all}


def make_shared_blocks(cfg) -> nn.ModuleList:
    """One :class:`SharedBlock` per index ``cfg.shared_layout`` uses (empty without shared blocks)."""
    n = 0 if cfg.shared_layout is None else 1 + max(j for j in cfg.shared_layout if j is not None)
    return nn.ModuleList(SharedBlock(cfg, j) for j in range(n))


def make_shared_use(cfg, layer: int, blocks: nn.ModuleList | None) -> SharedUse | None:
    """Layer ``layer``'s :class:`SharedUse` of its shared block, or ``None`` when it uses none."""
    j = None if cfg.shared_layout is None else cfg.shared_layout[layer]
    return None if j is None else SharedUse(cfg, layer, blocks[j])
