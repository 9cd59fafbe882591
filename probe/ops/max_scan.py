r"""The running-max stabiliser of exponential gates (mLSTM, sLSTM, RWKV).

Recurrences with exponential gates keep their memory in log-space-stabilised form: the
memory ``M_t`` is stored as ``M_t * exp(-m_t)`` next to a stabiliser ``m_t``, the running
maximum of the log-weights of everything the memory holds::

    m_t = max(m_{t-1} + g_t, x_t)            t = 0 .. T-1,   m_{-1} = m0

``g_t <= 0`` is the log-decay applied to the old memory (mLSTM: ``log f_t``; RWKV: ``-w``)
and ``x_t`` the log-weight of the new entry (mLSTM: the log input gate; RWKV: ``k_t``). The
stored memory then follows a plain linear recurrence with factors ``exp(m_{t-1} + g_t - m_t)``
and ``exp(x_t - m_t)``, both ``<= 1``, so nothing overflows however long the sequence.

Shapes: ``g, x: [batch, T, *state]`` (``g`` may broadcast against ``x``), ``m0: [batch, *state]``.

Two forms, tested against each other:

* :func:`max_scan_sequential`: one step per token; the only form that takes edits
  (``force``) and decays of exactly zero (``g = -inf``).
* :func:`max_scan_chunked`: within a chunk of ``L`` positions, with ``G_t`` the cumulative
  log-decay from the chunk start, ``m_t = G_t + max(m_start, cummax_{s<=t}(x_s - G_s))``; a
  pass over the ``T / L`` chunk ends carries ``m_start``. ``G`` spans at most one chunk, so
  the rounding of ``x_s - G_s`` stays at the scale of one chunk's decay.

**Edits.** ``force = (mask, values)`` sets the *carried* stabiliser: where ``mask`` is True,
``m_t`` becomes ``values_t`` after step ``t`` has been computed, so the memory stored at ``t``
was scaled by the unedited ``m_t`` (returned as ``m_step``) and every later step reads the
edited value, exactly as if a state with that stabiliser had been carried into a new segment.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from probe.ops.checks import widen

__all__ = ["empty_log", "max_scan", "max_scan_sequential", "max_scan_chunked"]

#: log of an empty memory (finite, so that arithmetic on it never produces NaN)
EMPTY = -1e38


def empty_log(dtype: torch.dtype) -> float:
    """:data:`EMPTY` in ``dtype``: -1e38 where it is finite (float32, bfloat16, float64); in float16
    (largest finite 65504) half its range, so that adding a log-decay to it stays finite too."""
    return max(EMPTY, -torch.finfo(dtype).max / 2)


def max_scan_sequential(g: Tensor, x: Tensor, m0: Tensor,
                        force: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Reference form. Returns ``(m, m_step)``, both ``[batch, T, *state]``: ``m`` the carried
    stabiliser (edited where forced), ``m_step`` the value each step scaled its memory with."""
    g = g.expand_as(x) if g.shape != x.shape else g
    m = m0.to(x.dtype)
    carried, step = [], []
    # unbind, not g[:, t]: indexing would make backward allocate a full-size gradient per step
    for t, (g_t, x_t) in enumerate(zip(g.unbind(1), x.unbind(1))):
        raw = torch.maximum(m + g_t, x_t)
        step.append(raw)
        m = raw if force is None else torch.where(force[0][:, t], force[1][:, t].to(x.dtype), raw)
        carried.append(m)
    if not carried:
        return x.clone(), x.clone()
    m_all = torch.stack(carried, dim=1)
    return m_all, (m_all if force is None else torch.stack(step, dim=1))


def max_scan_chunked(g: Tensor, x: Tensor, m0: Tensor, chunk: int = 32) -> Tensor:
    """Chunked form (no edits, finite ``g``). Returns ``m [batch, T, *state]``."""
    batch, T = x.shape[:2]
    if T == 0:
        return x.clone()
    g = g.expand_as(x) if g.shape != x.shape else g
    L = max(1, min(chunk, T))
    n = math.ceil(T / L)
    pad = n * L - T
    if pad:
        g = torch.cat([g, g.new_zeros(batch, pad, *g.shape[2:])], dim=1)
        x = torch.cat([x, x.new_full((batch, pad, *x.shape[2:]), empty_log(x.dtype))], dim=1)
    g = g.reshape(batch, n, L, *g.shape[2:])
    x = x.reshape(batch, n, L, *x.shape[2:])
    G = g.cumsum(dim=2)  # decay from the chunk start through t
    best = torch.cummax(x - G, dim=2).values  # max_{s<=t} (x_s - G_s)
    start = m0.to(x.dtype)
    starts = []
    for j in range(n):  # carry the stabiliser across chunk ends
        starts.append(start)
        start = G[:, j, -1] + torch.maximum(start, best[:, j, -1])
    m = G + torch.maximum(torch.stack(starts, dim=1).unsqueeze(2), best)
    return m.reshape(batch, n * L, *m.shape[3:])[:, :T]


def max_scan(g: Tensor, x: Tensor, m0: Tensor, force: tuple[Tensor, Tensor] | None = None,
             method: str = "auto") -> tuple[Tensor, Tensor]:
    """``(m, m_step)`` by the chunked form when possible, else the sequential one (edits, ``g = -inf``)."""
    if method not in ("auto", "chunked", "sequential"):
        raise ValueError(f"Unknown scan method {method!r}; use 'auto', 'chunked' or 'sequential'.")
    g, x = widen(m0, g, x)  # a float32 stabiliser is never rounded down to the inputs' dtype
    if method == "sequential" or force is not None or not bool(torch.isfinite(g).all()):
        return max_scan_sequential(g, x, m0, force)
    m = max_scan_chunked(g, x, m0)
    return m, m
