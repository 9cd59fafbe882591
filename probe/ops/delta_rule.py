r"""The (gated) delta rule: a matrix memory that overwrites what a key reads, as Gated DeltaNet
(Yang et al. 2025) and Kimi Delta Attention compute it, and the generalised (diagonal plus low-rank)
form RWKV-7 uses.

Signatures (batch first, then position; ``H`` heads, key width ``K``, value width ``V``)::

    gated_delta_rule_sequential(q, k, v, log_decay, beta, h0=None, scale=1.0)   -> (o, h_T)
    gated_delta_rule_chunked(q, k, v, log_decay, beta, h0=None, scale=1.0, chunk=16) -> (o, h_T)
    gated_delta_rule_states(k, v, log_decay, beta, h0=None, force=None, chunk=16)   -> S
    dplr_sequential(q, k, v, log_w, a, b, h0=None, scale=1.0)                    -> (o, h_T)
    dplr_states(k, v, log_w, a, b, h0=None, force=None)                          -> S

    q, k:       [b, T, H, K]     v: [b, T, H, V]
    log_decay:  [b, T, H]        log of the scalar gate a_t = exp(g_t) in [0, 1] (-inf: forget all),
                                 Gated DeltaNet; or [b, T, H, K]: one gate per key channel,
                                 alpha_t = exp(g_t) in [0, 1]^K, Kimi Delta Attention
    beta:       [b, T, H]        the write strength beta_t (in [0, 1] for a contraction)
    h0:         [b, H, K, V]     the state before the first position (zeros if None)
    o:          [b, T, H, V]     h_T: [b, H, K, V]     S: [b, T, H, K, V] (the state after every position)
    force:      optional (mask, values), both [b, T, H, K, V]: the state takes ``values`` wherever
                ``mask`` is True and the recurrence carries on from it

**The gated delta rule**, per head, in the orientation of transformers' Qwen3-Next and
flash-linear-attention (state ``S [K, V]``, read by keys)::

    S'_t = a_t S_{t-1}                                  decay
    u_t  = beta_t (v_t - S'_t^T k_t)                    what the memory gets wrong about k_t
    S_t  = S'_t + k_t u_t^T
         = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t  = scale S_t^T q_t

(The papers write the transpose, ``S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``
with ``S [V, K]``.) With a gate per key channel (Kimi Delta Attention, Kimi Team 2025) the decay
scales the rows of ``S`` (the channels a key reads) before the delta step, as transformers'
``KimiLinearDeltaAttention`` and fla's ``naive_recurrent_kda`` order it::

    S_t  = (I - beta_t k_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t v_t^T

(a scalar gate commutes with the delta step, so both are the same code: ``S'_t = diag(alpha_t)
S_{t-1}``, then the correction). The output is linear in the values ``v`` for fixed ``q, k, a, beta``:
``o_t = sum_{s<=t} A[t, s] v_s`` (with ``h0 = 0``), so running the rule with ``v = I_T`` (one-hot
values) gives the implicit attention matrix ``A`` itself.

**Chunked form** (:func:`gated_delta_rule_chunked`; the WY / UT-transform form of Yang et al.
2024). Cut the sequence into chunks of ``L`` positions; in a chunk with start state ``S_0``
write ``gamma_t = prod_{r<=t} a_r`` and ``D[t, s] = prod_{s<r<=t} a_r`` (``s <= t``), each a
scalar or, with per-channel gates, a vector over the ``K`` key channels (``*`` elementwise,
``diag(gamma) S`` scales rows). Unrolling, ``S_t = diag(gamma_t) S_0 + sum_{s<=t} (D[t, s] * k_s) u_s^T``,
and the corrections ``u`` solve a unit lower-triangular system::

    u_t + beta_t sum_{s<t} <k_t, D[t, s] * k_s> u_s = beta_t (v_t - S_0^T (gamma_t * k_t))
    (I + M) U = diag(beta) V - diag(beta) (gamma * K) S_0,   M[t, s] = beta_t <k_t, D[t, s] * k_s>  (s < t)

so ``U = W_v - W_k S_0`` with ``W_v = (I + M)^{-1} diag(beta) V`` and ``W_k = (I + M)^{-1}
diag(beta) (gamma * K)`` (one triangular solve per chunk, all chunks at once). A short loop over
chunks then carries the state::

    o_t   = scale [ (gamma_t * q_t)^T S_0 + sum_{s<=t} <q_t, D[t, s] * k_s> u_s ]
    S_L   = diag(gamma_L) S_0 + sum_s (D[L, s] * k_s) u_s^T

Per-channel gates hold ``D`` as ``[L, L, K]`` per chunk and head (``L K`` numbers per position, as
transformers' ``chunk_kimi_delta_attention``); a scalar gate holds ``[L, L]``.

Every decay factor is a product of gates over a forward range (built by cumulative products,
never by dividing), so gates of exactly 0 or 1 are exact.

**All states** (:func:`gated_delta_rule_states`): the same chunks with
``S_t = diag(gamma_t) S_0 + sum_{s<=t} (D[t, s] * k_s) u_s^T`` at every position; a forced state ends a
segment and the next segment starts from it.

**Generalised delta rule** (:func:`dplr_sequential`, the reference RWKV-7 reuses): a
diagonal-plus-rank-one transition with per-channel decay ``w_t = exp(log_w_t) [K]``::

    S_t = (diag(w_t) + a_t b_t^T) S_{t-1} + k_t v_t^T,     o_t = scale S_t^T q_t

The gated delta rule (either gate) is the case ``w_t = alpha_t``, ``a = -beta_t k_t``,
``b = alpha_t * k_t`` with key ``beta_t k_t``: ``diag(alpha) - beta k (alpha * k)^T = (I - beta k k^T) diag(alpha)``. RWKV-7 writes ``S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T`` with
``S [V, K]``; transposed into this orientation its ``a`` and ``b`` swap places.
:func:`dplr_states` keeps the state after every position (the same loop; a forced state replaces
``S_t`` and the recurrence carries on from it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.ops.checks import check_initial_state

__all__ = ["dplr_sequential", "dplr_states", "gated_delta_rule_chunked", "gated_delta_rule_sequential",
           "gated_delta_rule_states"]


def _check(k: Tensor, v: Tensor, log_decay: Tensor | None, beta: Tensor | None, h0: Tensor | None,
           q: Tensor | None = None) -> None:
    if k.dim() != 4 or (q is not None and q.shape != k.shape):
        got = f"q {tuple(q.shape)}, " if q is not None else ""
        raise ValueError(f"q and k must be [batch, T, heads, K]; got {got}k {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be [batch, T, heads, V] matching k {tuple(k.shape)}; got {tuple(v.shape)}")
    if log_decay is not None and tuple(log_decay.shape) not in (tuple(k.shape[:3]), tuple(k.shape)):
        raise ValueError(f"log_decay must be [batch, T, heads] = {tuple(k.shape[:3])} (a gate per head) or "
                         f"[batch, T, heads, K] = {tuple(k.shape)} (a gate per key channel); "
                         f"got {tuple(log_decay.shape)}")
    if beta is not None and tuple(beta.shape) != tuple(k.shape[:3]):
        raise ValueError(f"beta must be [batch, T, heads] = {tuple(k.shape[:3])}; got {tuple(beta.shape)}")
    check_initial_state(h0, (k.shape[0], k.shape[2], k.shape[3], v.shape[3]), "[batch, heads, K, V]")


def _channels(log_decay: Tensor) -> Tensor:
    """The gate as ``[b, T, H, C]``: ``C = 1`` for a scalar gate per head, ``C = K`` per channel."""
    return log_decay.unsqueeze(-1) if log_decay.dim() == 3 else log_decay


def _start(k: Tensor, v: Tensor, h0: Tensor | None) -> Tensor:
    b, _, H, K = k.shape
    return k.new_zeros(b, H, K, v.shape[-1]) if h0 is None else h0.to(k.dtype)


def gated_delta_rule_sequential(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor,
                                h0: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference: the gated delta rule one position at a time (module docstring). Returns ``(o, h_T)``."""
    _check(k, v, log_decay, beta, h0, q)
    S, out = _start(k, v, h0), []
    for q_t, k_t, v_t, g_t, b_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), _channels(log_decay).unbind(1),
                                       beta.unbind(1)):
        S = S * g_t.exp()[..., None]  # diag(alpha_t) S: row c scaled by alpha_t[c] (all rows for a scalar)
        u = b_t[..., None] * (v_t - torch.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., :, None] * u[..., None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", S, q_t) * scale)
    o = torch.stack(out, dim=1) if out else v.new_zeros(v.shape)
    return o, S


def _check_dplr(k: Tensor, v: Tensor, log_w: Tensor, a: Tensor, b: Tensor, h0: Tensor | None,
                q: Tensor | None = None) -> None:
    _check(k, v, None, None, h0, q)
    for name, x in (("log_w", log_w), ("a", a), ("b", b)):
        if x.shape != k.shape:
            raise ValueError(f"{name} must be [batch, T, heads, K] = {tuple(k.shape)}; got {tuple(x.shape)}")


def _dplr_step(S: Tensor, k: Tensor, v: Tensor, log_w: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """One step ``(diag(exp(log_w)) + a b^T) S + k v^T``: ``S [b, H, K, V]``, the rest one position."""
    read = torch.einsum("bhk,bhkv->bhv", b, S)  # b_t^T S_{t-1}
    return log_w.exp()[..., None] * S + a[..., None] * read[..., None, :] + k[..., None] * v[..., None, :]


def dplr_sequential(q: Tensor, k: Tensor, v: Tensor, log_w: Tensor, a: Tensor, b: Tensor,
                    h0: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference: ``S_t = (diag(exp(log_w_t)) + a_t b_t^T) S_{t-1} + k_t v_t^T``, ``o_t = scale S_t^T q_t``.

    ``q, k, log_w, a, b: [batch, T, heads, K]``, ``v: [batch, T, heads, V]``. Returns ``(o, h_T)``."""
    _check_dplr(k, v, log_w, a, b, h0, q)
    S, out = _start(k, v, h0), []
    for t in range(k.shape[1]):
        S = _dplr_step(S, k[:, t], v[:, t], log_w[:, t], a[:, t], b[:, t])
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * scale)
    o = torch.stack(out, dim=1) if out else v.new_zeros(v.shape)
    return o, S


def dplr_states(k: Tensor, v: Tensor, log_w: Tensor, a: Tensor, b: Tensor, h0: Tensor | None = None,
                force: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Every state ``S_t [batch, T, heads, K, V]`` of the generalised delta rule (one position at a
    time); ``force = (mask, values)`` (both ``[batch, T, heads, K, V]``) replaces ``S_t`` where
    ``mask`` is True and the rule carries on from the replaced state."""
    _check_dplr(k, v, log_w, a, b, h0)
    S, states = _start(k, v, h0), []
    for t in range(k.shape[1]):
        S = _dplr_step(S, k[:, t], v[:, t], log_w[:, t], a[:, t], b[:, t])
        if force is not None:
            S = torch.where(force[0][:, t], force[1][:, t].to(S.dtype), S)
        states.append(S)
    if not states:
        return S.new_zeros(k.shape[0], 0, *S.shape[1:])
    return torch.stack(states, dim=1)


def _decay_products(a: Tensor) -> Tensor:
    """``D[t, s] = prod_{s<r<=t} a_r`` for ``s <= t``, else 0: ``a [..., L, C]`` -> ``[..., L, L, C]``.

    Row by row, ``D[t] = a_t D[t-1] + e_t`` (``e_t`` one at ``s = t``): forward products only, never a
    division, so gates of exactly 0 stay exact."""
    L = a.shape[-2]
    eye = torch.eye(L, dtype=a.dtype, device=a.device)[..., None]  # [t, s, 1]
    row = eye[0].expand_as(a)
    rows = [row]
    for t in range(1, L):
        row = a[..., t, None, :] * row + eye[t]
        rows.append(row)
    return torch.stack(rows, dim=-3)


class _Chunks:
    """The per-chunk quantities of the chunked form that do not depend on the carried state.

    Attributes (``n`` chunks of ``L`` positions, heads before positions; ``C`` gate channels, 1 for a
    scalar gate per head, ``K`` for a gate per key channel):
        k, q: ``[b, H, n, L, K]`` (q None when only states are wanted);
        D: ``[b, H, n, L, L, C]`` with ``D[t, s] = prod_{s<r<=t} a_r`` for ``s <= t``, else 0;
        gamma: ``[b, H, n, L, C]`` the gate product from the chunk start through ``t``;
        W_v ``[b, H, n, L, V]``, W_k ``[b, H, n, L, K]``: ``U = W_v - W_k S_0``;
        QK: ``[b, H, n, L, L]``, ``QK[t, s] = <q_t, D[t, s] * k_s>`` (None without q).
    """

    def __init__(self, q: Tensor | None, k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor, chunk: int):
        b, T, H, K = k.shape
        self.T, L = T, max(1, min(int(chunk), T))
        n = math.ceil(T / L)
        pad = n * L - T  # padding: zero key, value and beta, gate 1: the state passes unchanged

        def split(x: Tensor, fill: float = 0.0) -> Tensor:  # [b, T, H, ...] -> [b, H, n, L, ...]
            x = x if x.dim() == 4 else x.unsqueeze(-1)
            x = F.pad(x, (0, 0, 0, 0, 0, pad), value=fill) if pad else x
            return x.reshape(b, n, L, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

        self.k, self.q = split(k), (split(q) if q is not None else None)
        a = split(_channels(log_decay).exp(), fill=1.0)  # [b, H, n, L, C]
        bt = split(beta)
        self.D = _decay_products(a)
        self.gamma = a.cumprod(3)
        M = (bt * self.pair(self.k, self.k, self.D)).tril(-1)
        eye = torch.eye(L, dtype=k.dtype, device=k.device)
        rhs = torch.cat([bt * split(v), bt * self.gamma * self.k], dim=-1)
        W = torch.linalg.solve_triangular(eye + M, rhs, upper=False, unitriangular=True)
        self.W_v, self.W_k = W.split([v.shape[-1], K], dim=-1)
        self.QK = self.pair(self.q, self.k, self.D) if q is not None else None

    @staticmethod
    def pair(x: Tensor, y: Tensor, D: Tensor) -> Tensor:
        """``P[t, s] = <x_t, D[t, s] * y_s>``: ``x, y [..., L, K]``, ``D [..., L, L, C]`` -> ``[..., L, L]``."""
        if D.shape[-1] == 1:
            return (x @ y.transpose(-1, -2)) * D[..., 0]
        return torch.einsum("...tc,...sc,...tsc->...ts", x, y, D)

    def corrections(self, j: int, S0: Tensor) -> Tensor:
        """``U [b, H, L, V]`` of chunk ``j`` from its start state ``S0 [b, H, K, V]``."""
        return self.W_v[:, :, j] - self.W_k[:, :, j] @ S0

    def end_state(self, j: int, S0: Tensor, U: Tensor) -> Tensor:
        """``S_L = diag(gamma_L) S_0 + sum_s (D[L, s] * k_s) u_s^T``."""
        tail = self.D[:, :, j, -1]  # [b, H, L, C]: prod_{s<r<=L} a_r
        return self.gamma[:, :, j, -1, :, None] * S0 + (self.k[:, :, j] * tail).transpose(-1, -2) @ U

    def outputs(self, j: int, S0: Tensor, U: Tensor, scale: float) -> Tensor:
        """``o [b, H, L, V]`` of chunk ``j``."""
        q = self.q[:, :, j]
        inter = (q * self.gamma[:, :, j]) @ S0
        intra = self.QK[:, :, j] @ U
        return (inter + intra) * scale

    def states(self, j: int, S0: Tensor, U: Tensor) -> Tensor:
        """Every state ``S_t [b, H, L, K, V]`` of chunk ``j``."""
        Dk = self.D[:, :, j] * self.k[:, :, j, None]  # [b, H, t, s, K]: D[t, s] * k_s
        own = torch.einsum("bhtsk,bhsv->bhtkv", Dk, U)
        return self.gamma[:, :, j, :, :, None] * S0[:, :, None] + own


def gated_delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor,
                             h0: Tensor | None = None, scale: float = 1.0, chunk: int = 16) -> tuple[Tensor, Tensor]:
    """The chunked (WY) form of the gated delta rule (module docstring). Returns ``(o, h_T)``."""
    _check(k, v, log_decay, beta, h0, q)
    S = _start(k, v, h0)
    if k.shape[1] == 0:
        return v.new_zeros(v.shape), S
    c = _Chunks(q, k, v, log_decay, beta, chunk)
    outs = []
    for j in range(c.k.shape[2]):
        U = c.corrections(j, S)
        outs.append(c.outputs(j, S, U, scale))
        S = c.end_state(j, S, U)
    o = torch.cat(outs, dim=2)[:, :, : c.T].transpose(1, 2)  # [b, T, H, V]
    return o, S


def _states_unforced(k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor, S: Tensor, chunk: int) -> Tensor:
    c = _Chunks(None, k, v, log_decay, beta, chunk)
    out = []
    for j in range(c.k.shape[2]):
        U = c.corrections(j, S)
        out.append(c.states(j, S, U))
        S = c.end_state(j, S, U)
    return torch.cat(out, dim=2)[:, :, : c.T].transpose(1, 2)  # [b, T, H, K, V]


def gated_delta_rule_states(k: Tensor, v: Tensor, log_decay: Tensor, beta: Tensor, h0: Tensor | None = None,
                            force: tuple[Tensor, Tensor] | None = None, chunk: int = 16) -> Tensor:
    """The state after every position, ``[b, T, H, K, V]``, with forced states honoured.

    A position where any element is forced ends a segment: the segment's last state takes the
    forced values and the next segment starts from it."""
    _check(k, v, log_decay, beta, h0)
    S = _start(k, v, h0)
    T = k.shape[1]
    if T == 0:
        return k.new_zeros(*k.shape, v.shape[-1])
    cuts = [] if force is None else torch.nonzero(force[0].flatten(2).any(-1).any(0)).flatten().tolist()
    pieces, start = [], 0
    for end in [*cuts, T - 1]:
        if end < start:
            continue
        part = _states_unforced(k[:, start:end + 1], v[:, start:end + 1], log_decay[:, start:end + 1],
                                beta[:, start:end + 1], S, chunk)
        if force is not None and end in cuts:
            last = torch.where(force[0][:, end], force[1][:, end].to(part.dtype), part[:, -1])
            part = torch.cat([part[:, :-1], last[:, None]], dim=1)
        pieces.append(part)
        S, start = part[:, -1], end + 1
    return torch.cat(pieces, dim=1)
