r"""Gated linear attention (GLA): the matrix-state linear recurrence of HGRN2 and mLSTM.

Signatures (all tensors batch first, then position; ``H`` heads, key width ``K``, value width ``V``)::

    gla_chunked(q, k, v, log_decay, h0=None, scale=1.0, chunk=16) -> (o, h_T)
    gla_sequential(q, k, v, log_decay, h0=None, scale=1.0)        -> (o, h_T)
    gla_states(k, v, decay, h0=None, force=None, method="auto")    -> S
    gla_readout(q, S, scale=1.0)                                   -> o

    q, k:       [b, T, H, K]
    v:          [b, T, H, V]
    log_decay:  [b, T, H, K] (a per-key-channel decay, HGRN2 / GLA) or [b, T, H, 1]
                (one scalar per head, mLSTM); log of the decay, so <= 0; -inf means decay 0
    decay:      exp(log_decay), same shapes (gla_states takes the decay itself)
    h0:         [b, H, K, V] the state before the first position (zeros if None)
    o:          [b, T, H, V];  h_T: [b, H, K, V] the state after the last position
    S:          [b, T, H, K, V] the state after every position
    force:      optional (mask, values), both [b, T, H, K, V]: the state takes ``values``
                wherever ``mask`` is True and the recurrence carries on from it

The recurrence, per head::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          (g_t = log_decay_t, k_t^T v_t an outer product)
    o_t = scale * q_t S_t

**Chunked form** (:func:`gla_chunked`, the fast path; it never builds ``S`` at every
position). The sequence is cut into chunks of ``L`` positions. With ``c`` the state before
a chunk and, for positions ``s <= t`` of that chunk, ``b_t = sum_{r<=t} g_r`` (inclusive
cumulative log-decay from the chunk start) and ``seg(t, s) = sum_{s<r<=t} g_r``::

    o_t   = scale * [ (q_t * exp(b_t)) c  +  sum_{s<=t} (sum_K q_t k_s exp(seg(t, s))) v_s ]
    c'    = diag(exp(b_L)) c + sum_s (k_s * exp(b_L - b_s))^T v_s

The first term is one matmul per chunk, the second an ``L x L`` intra-chunk "attention"
matrix, and the chunk-boundary states ``c`` follow the elementwise recurrence above, run
with :func:`probe.ops.linear_scan.linear_scan` (a scan over ``T / L`` chunks). Every ``exp(...)`` is a
product of decays over a forward range (``exp(seg(t, s)) = prod_{s<r<=t} a_r``, built by
cumulative products, never by dividing or subtracting cumulative sums), so every factor is
in ``[0, 1]``: decays of exactly 0 or 1 and long sequences are exact, with no overflow and
no ``inf - inf``. The intra-chunk term grows ``R_t[s] = k_s prod_{s<r<=t} a_r`` one row
``t`` at a time (``R_t = [R_{t-1} a_t ; k_t]``) and contracts it with ``q_t``, so it costs
``L^2 K / 2`` multiply-adds per chunk and head and never holds an ``[L, L, K]`` tensor
(``L = 16`` by default); all of it is differentiable.

**Reference** (:func:`gla_sequential`): the recurrence one position at a time.

A normaliser state ``n_t = diag(exp(g_t)) n_{t-1} + k_t`` (mLSTM) is the same recurrence
with a column of ones appended to ``v`` (``V + 1``): its last output column is ``q_t n_t``.

**All states** (:func:`gla_states`): when a state hook is active the states themselves are
wanted; they come from the elementwise scan of :mod:`probe.ops.linear_scan` on ``a = decay`` and
``b = k^T v`` (with :func:`probe.ops.linear_scan.force_states` for edited states), and
:func:`gla_readout` gives ``o`` from them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.ops.checks import check_initial_state, widen
from probe.ops.linear_scan import force_states, linear_scan, linear_scan_blocked

__all__ = ["gla_chunked", "gla_sequential", "gla_states", "gla_readout"]


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [batch, T, heads, K]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [batch, T, heads, V] matching q {tuple(q.shape)}; got {tuple(v.shape)}")
    if g.shape[:3] != q.shape[:3] or g.shape[3] not in (1, q.shape[3]):
        raise ValueError(f"log_decay must be [batch, T, heads, K] or [batch, T, heads, 1]; got {tuple(g.shape)} "
                         f"for q {tuple(q.shape)}")
    check_initial_state(h0, (q.shape[0], q.shape[2], q.shape[3], v.shape[3]), "[batch, heads, K, V]")


def gla_sequential(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, h0: Tensor | None = None,
                   scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference: ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``, one step at a time."""
    _check(q, k, v, log_decay, h0)
    q, k, v, log_decay = widen(h0, q, k, v, log_decay)  # accumulate in a wider state's dtype
    b, T, H, K = q.shape
    S = q.new_zeros(b, H, K, v.shape[-1]) if h0 is None else h0.to(q.dtype)
    decay = log_decay.exp()
    out = []
    for q_t, k_t, v_t, a_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), decay.unbind(1)):  # unbind: no
        S = a_t[..., None] * S + k_t[..., None] * v_t[..., None, :]  # per-step full-size gradient in backward
        out.append(torch.einsum("bhk,bhkv->bhv", q_t, S) * scale)
    o = torch.stack(out, dim=1) if out else v.new_zeros(b, 0, H, v.shape[-1])
    return o, S


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, h0: Tensor | None = None,
                scale: float = 1.0, chunk: int = 16) -> tuple[Tensor, Tensor]:
    """Chunked form of the same recurrence (see the module docstring). Returns ``(o, h_T)``."""
    _check(q, k, v, log_decay, h0)
    q, k, v, log_decay = widen(h0, q, k, v, log_decay)  # accumulate in a wider state's dtype
    b, T, H, K = q.shape
    V = v.shape[-1]
    if h0 is None:
        h0 = q.new_zeros(b, H, K, V)
    if T == 0:
        return v.new_zeros(b, 0, H, V), h0.to(q.dtype)
    L = max(1, min(int(chunk), T))
    n = math.ceil(T / L)
    pad = n * L - T

    def split(x: Tensor, fill: float = 0.0) -> Tensor:  # [b, T, H, d] -> [b, n, H, L, d]
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad), value=fill)
        return x.reshape(b, n, L, H, x.shape[-1]).transpose(2, 3)

    qc, kc, vc = split(q), split(k), split(v)
    a = split(log_decay.exp(), fill=1.0)  # decays in [0, 1] [b, n, H, L, K']; padding: zero input, decay 1
    incl = a.cumprod(dim=3)  # exp(b_t): decay from the chunk start through t
    rev = a.flip(3).cumprod(3).flip(3)  # prod_{r >= s}
    tail = torch.cat([rev[:, :, :, 1:], torch.ones_like(rev[:, :, :, :1])], dim=3)  # prod_{r > s}
    total = incl[:, :, :, -1]  # [b, n, H, K']

    # chunk-boundary states: c_j = diag(total_j) c_{j-1} + (k * tail)^T v
    h0 = h0.to(q.dtype)
    U = (kc * tail).transpose(-1, -2) @ vc  # [b, n, H, K, V]
    ends = linear_scan(total.unsqueeze(-1), U, h0)  # state after each chunk
    qi = qc * incl
    o = torch.empty_like(qi[..., :1].expand(*qi.shape[:-1], V))
    o[:, :1] = qi[:, :1] @ h0.unsqueeze(1)  # inter-chunk part: (q_t exp(b_t)) c
    o[:, 1:] = qi[:, 1:] @ ends[:, :-1]

    # intra-chunk: A[t, s] = sum_K q_t k_s exp(seg(t, s)) for s <= t, exp(seg) as a product of decays
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if a.shape[-1] == 1:  # scalar decay per head: a plain masked matmul
        P = torch.where(causal.tril(-1), a, a.new_ones(())).cumprod(3)  # a [b,n,H,L,1] -> [b, n, H, L(t), L(s)]
        A = (qc @ kc.transpose(-1, -2)).mul_(P).masked_fill_(~causal, 0.0)
    else:
        # row t of A is R_t q_t with R_t[s] = k_s prod_{s<r<=t} a_r (s <= t), grown one row at a time:
        # R_t = [R_{t-1} * a_t ; k_t]; no [L, L, K] tensor is ever built
        R, rows = kc[:, :, :, :1], []
        for t in range(L):
            if t:
                R = torch.cat([R * a[:, :, :, t : t + 1], kc[:, :, :, t : t + 1]], dim=3)  # [b, n, H, t+1, K]
            rows.append(F.pad((R @ qc[:, :, :, t, :, None])[..., 0], (0, L - 1 - t)))
        A = torch.stack(rows, dim=3)  # [b, n, H, L(t), L(s)], zero above the diagonal
    o = o + A @ vc
    o = (o * scale).transpose(2, 3).reshape(b, n * L, H, V)[:, :T]
    return o, ends[:, -1]


def gla_states(k: Tensor, v: Tensor, decay: Tensor, h0: Tensor | None = None,
               force: tuple[Tensor, Tensor] | None = None, method: str = "auto", block: int = 128) -> Tensor:
    """The state after every position, ``[b, T, H, K, V]``, via the elementwise scan (edits honoured).

    Runs block by block (:func:`probe.ops.linear_scan.linear_scan_blocked`): the outer products
    ``k^T v`` exist for one block at a time and each block's states go straight into the result.
    """
    k, v, decay = widen(h0, k, v, decay)  # accumulate in a wider state's dtype
    b, T, H, K = k.shape
    if h0 is None:
        h0 = k.new_zeros(b, H, K, v.shape[-1])
    if T == 0:
        return k.new_zeros(b, 0, H, K, v.shape[-1])
    a = decay.unsqueeze(-1)  # [b, T, H, K', 1]

    def coefficients(t0: int, t1: int) -> tuple[Tensor, Tensor]:
        a_blk, inc = a[:, t0:t1], k[:, t0:t1, :, :, None] * v[:, t0:t1, :, None, :]
        if force is not None:
            a_blk, inc = force_states(a_blk, inc, force[0][:, t0:t1], force[1][:, t0:t1])
        return a_blk, inc

    S, _, _ = linear_scan_blocked(coefficients, T, h0.to(k.dtype), lambda t0, t1, states: states,
                                  block=block, method=method)
    return S


def gla_readout(q: Tensor, S: Tensor, scale: float = 1.0) -> Tensor:
    """``o_t = scale q_t S_t``: ``q [b, T, H, K]``, ``S [b, T, H, K, V]`` -> ``[b, T, H, V]``."""
    return torch.einsum("bthk,bthkv->bthv", q, S) * scale
