r"""Mamba-2's state-space duality (SSD) scan: a scalar decay per head over a matrix state.

Per head ``h`` (``H`` heads of width ``P``), with group ``g(h)`` sharing ``B`` and ``C``
(``G`` groups, ``H / G`` consecutive heads each) and ``N = d_state``::

    a_t[h]  = exp(dt_t[h] A[h])                                    scalar decay, A < 0, dt > 0
    S_t[h]  = a_t[h] S_{t-1}[h] + dt_t[h] x_t[h] B_t[g(h)]^T        [P, N]
    y_t[h]  = S_t[h] C_t[g(h)] + D[h] x_t[h]                        [P]

Shapes: ``x [batch, T, H, P]``, ``dt [batch, T, H]``, ``A [H]``, ``B, C [batch, T, G, N]``,
``D [H]`` (optional), ``S [batch, H, P, N]``.

Two forms, tested against each other:

* :func:`ssd_sequential`: the reference, one step per token; returns every state.
* :func:`ssd_chunked`: the SSD block decomposition (Dao & Gu 2024, section 6). The sequence is
  cut into chunks of ``L`` positions. Inside a chunk the output is a masked attention
  ``y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<r<=t} log a_r) dt_s x_s`` (one matmul); each chunk's
  own contribution to the state at its end is another matmul; the true states at chunk
  boundaries follow from ``S_end(c) = (prod_chunk a) S_end(c-1) + local_c``, the linear scan of
  :mod:`probe.ops.linear_scan` over chunks; and every position adds ``exp(sum_{r<=t} log a_r) C_t S_start``.
  Decay products are exponentials of *segment sums* built by a cumulative sum that never
  subtracts two large numbers (:func:`segment_sums`), so extreme decays stay exact. It returns
  the output and the final state only (no ``[batch, T, H, P, N]`` tensor).

Per-position states with edits go through :func:`probe.ops.linear_scan.linear_scan_blocked` with
``a = a_t[h]`` broadcast over ``[P, N]``: see :mod:`probe.mixers.mamba2`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from probe.ops.linear_scan import linear_scan_sequential

__all__ = ["expand_groups", "segment_sums", "ssd_chunked", "ssd_sequential"]


def expand_groups(t: Tensor, heads: int) -> Tensor:
    """``[batch, T, G, N] -> [batch, T, heads, N]``: head ``h`` reads group ``h // (heads / G)``."""
    groups = t.shape[2]
    if heads % groups:
        raise ValueError(f"{heads} heads cannot be split into {groups} groups of B/C")
    return t.repeat_interleave(heads // groups, dim=2)


def segment_sums(a: Tensor, above: float = -math.inf) -> Tensor:
    """``S[..., t, s] = sum_{s < r <= t} a[..., r]`` for ``s <= t`` (0 on the diagonal), ``above`` for ``s > t``.

    ``a [..., L] -> [..., L, L]``. With ``above = -inf`` (the default) ``exp`` of it is the causal
    decay-product matrix; ``above = 0`` keeps every entry finite for callers that scale the sums
    before masking (``-inf`` entries of ``a`` are allowed either way). Built by a cumulative sum down
    masked rows (never ``cumsum_t - cumsum_s``, which loses every digit when both are large).
    """
    L = a.shape[-1]
    strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)  # r > s, indexed [r, s]
    rows = torch.where(strict, a.unsqueeze(-1), a.new_zeros(()))
    sums = rows.cumsum(dim=-2)  # [..., t, s]: sum over s < r <= t, 0 above the diagonal
    if above == 0:
        return sums
    causal = torch.ones(L, L, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~causal, above)


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, T, H, _ = x.shape
    if dt.shape != (b, T, H) or A.shape != (H,) or B.shape != C.shape or B.shape[:2] != (b, T):
        raise ValueError(f"SSD shapes disagree: x {tuple(x.shape)} [b, T, H, P], dt {tuple(dt.shape)} [b, T, H], "
                         f"A {tuple(A.shape)} [H], B {tuple(B.shape)}, C {tuple(C.shape)} [b, T, G, N]")


def ssd_sequential(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None,
                   D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence one position at a time. Returns ``(y [b, T, H, P], states [b, T, H, P, N])``."""
    _check(x, dt, A, B, C)
    H = x.shape[2]
    Bh, Ch = expand_groups(B, H), expand_groups(C, H)
    decay = torch.exp(dt * A)[..., None, None]  # [b, T, H, 1, 1]
    inc = (dt[..., None] * x)[..., None] * Bh[:, :, :, None, :]  # [b, T, H, P, N]
    states = linear_scan_sequential(decay, inc, h0)
    y = torch.einsum("bthpn,bthn->bthp", states, Ch)
    return (y if D is None else y + D[:, None] * x), states


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None,
                D: Tensor | None = None, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The chunked SSD form (module docstring). Returns ``(y [b, T, H, P], final state [b, H, P, N])``."""
    _check(x, dt, A, B, C)
    b, T, H, P = x.shape
    N = B.shape[-1]
    h0 = x.new_zeros(b, H, P, N) if h0 is None else h0.to(x.dtype)
    if T == 0:
        return x.clone(), h0
    L = max(1, int(chunk))
    n = math.ceil(T / L)
    pad = n * L - T  # padded positions have dt = 0: decay 1, no input, so the final state is unchanged

    def chunks(t: Tensor) -> Tensor:
        t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(b, n, L, *t.shape[2:])

    xdt = chunks(x * dt[..., None])  # [b, n, L, H, P]
    Bh, Ch = chunks(expand_groups(B, H)), chunks(expand_groups(C, H))  # [b, n, L, H, N]
    log_a = chunks(dt * A).permute(0, 1, 3, 2)  # [b, n, H, L]
    decay = torch.exp(segment_sums(log_a))  # [b, n, H, t, s]

    scores = torch.einsum("bcthn,bcshn->bchts", Ch, Bh) * decay
    y = torch.einsum("bchts,bcshp->bcthp", scores, xdt)  # within each chunk, from a zero state
    local = torch.einsum("bchs,bcshn,bcshp->bchpn", decay[..., -1, :], Bh, xdt)  # each chunk's own end state
    ends = linear_scan_sequential(torch.exp(log_a.sum(-1))[..., None, None], local, h0)  # [b, n, H, P, N]
    starts = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)
    y = y + torch.einsum("bcthn,bchpn,bcht->bcthp", Ch, starts, torch.exp(log_a.cumsum(-1)))
    y = y.reshape(b, n * L, H, P)[:, :T]
    return (y if D is None else y + D[:, None] * x), ends[:, -1]
