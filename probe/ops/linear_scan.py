r"""Kernels for the linear recurrence shared by every linear mixer.

The recurrence, elementwise over the trailing (state) dimensions::

    h_t = a_t * h_{t-1} + b_t,        t = 0 .. T-1,   h_{-1} = h0

with ``a, b: [batch, T, *state]`` (``a`` may broadcast against ``b``, e.g. a per-head
scalar decay ``[batch, T, heads, 1, 1]`` against a matrix state
``[batch, T, heads, d_k, d_v]``) and ``h0: [batch, *state]``. The result holds the state
after every position, ``h: [batch, T, *state]``.

Two forms are kept side by side and tested against each other:

* :func:`linear_scan_sequential` is the obviously-correct reference, one step per token.
* :func:`probe.scan_loop.linear_scan_loop` is the same loop with a hand-written backward
  (a reverse scan): one autograd node instead of one per token, the form ``"auto"``
  picks on CPU for large states.
* :func:`linear_scan_chunked` splits the sequence into ``n`` chunks of length ``L``.
  Within every chunk (all chunks at once) it runs the recurrence from a zero state while
  accumulating the decay product ``P_t = a_{c0} * ... * a_t``; a short sequential pass
  over the chunk ends then carries the true state into each chunk, and the final state
  is ``h_t = local_t + P_t * carry_chunk``. That is ``L + n`` small steps instead of
  ``T`` (``2 sqrt(T)`` with the default ``L = ceil(sqrt(T))``), uses only products of the
  decays (no logarithms or divisions), so decays of exactly 0 or 1 are handled exactly.

:func:`linear_scan_blocked` runs the same recurrence block by block along the sequence,
building ``a`` and ``b`` for one block at a time and handing each block's states to a
``readout``: the output of a state-space layer whose state is much larger than its input
(Mamba: ``[d_inner, d_state]`` per position) then never needs every state in memory.

:func:`force_states` turns "the state at some (position, element) is overwritten with a
given value" into the same recurrence (``a = 0, b = value`` there), which is how edited
states propagate through a scan.

Precision: every scan accumulates in the wider of its inputs' and its initial state's dtype
(:func:`widen`), so the float32 state a half-precision model carries is never rounded down.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["linear_scan", "linear_scan_sequential", "linear_scan_chunked", "linear_scan_blocked", "force_states",
           "widen"]


def widen(state: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` cast to the wider of their dtype and ``state``'s (unchanged for ``state=None`` or a
    state no wider): a recurrence carried in float32 by a bfloat16 model accumulates in float32."""
    if state is None:
        return tensors
    return tuple(t.to(torch.promote_types(t.dtype, state.dtype)) for t in tensors)


def _check(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"scan inputs need shape [batch, T, ...]; got a {tuple(a.shape)}, b {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"decay a {tuple(a.shape)} does not broadcast to input b {tuple(b.shape)}") from exc
    if h0 is not None and (h0.shape[0] != b.shape[0] or h0.shape[1:] != b.shape[2:]):
        raise ValueError(f"initial state h0 has shape {tuple(h0.shape)}, expected "
                         f"{(b.shape[0], *b.shape[2:])} ([batch, *state])")


def linear_scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Reference form: ``h_t = a_t * h_{t-1} + b_t`` one position at a time. Returns ``[batch, T, *state]``."""
    _check(a, b, h0)
    a, b = widen(h0, a, b)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    out = []
    # unbind, not a[:, t]: indexing would make backward allocate a full-size gradient per step
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = torch.addcmul(b_t, a_t, h)
        out.append(h)
    return torch.stack(out, dim=1) if out else b.clone()


def linear_scan_chunked(a: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Chunked form of the same recurrence (see the module docstring). Returns ``[batch, T, *state]``."""
    _check(a, b, h0)
    a, b = widen(h0, a, b)
    batch, T = b.shape[:2]
    if T == 0:
        return b.clone()
    L = chunk or max(1, math.ceil(math.sqrt(T)))
    n = math.ceil(T / L)
    pad = n * L - T
    a = a.expand(batch, T, *a.shape[2:]) if a.shape[:2] != b.shape[:2] else a
    if pad:
        a = torch.cat([a, a.new_ones(batch, pad, *a.shape[2:])], dim=1)
        b = torch.cat([b, b.new_zeros(batch, pad, *b.shape[2:])], dim=1)
    a = a.reshape(batch, n, L, *a.shape[2:])
    b = b.reshape(batch, n, L, *b.shape[2:])

    # 1. every chunk from a zero state, all chunks in parallel; P_t = decay product so far
    decay = a.cumprod(dim=2)  # [batch, n, L, *a_state]
    a_steps, b_steps = a.unbind(2), b.unbind(2)  # (see linear_scan_sequential: no per-step slicing)
    h = b_steps[0]
    local = [h]
    for i in range(1, L):
        h = torch.addcmul(b_steps[i], a_steps[i], h)
        local.append(h)
    local_t = torch.stack(local, dim=2)  # [batch, n, L, *state]

    # 2. carry the true state across chunk boundaries (n sequential steps)
    carry = torch.zeros_like(b[:, 0, 0]) if h0 is None else h0.to(b.dtype)
    carries = []
    for last, prod in zip(local[-1].unbind(1), decay[:, :, -1].unbind(1)):
        carries.append(carry)
        carry = torch.addcmul(last, prod, carry)
    carry_t = torch.stack(carries, dim=1).unsqueeze(2)  # [batch, n, 1, *state]

    # 3. h_t = local_t + P_t * carry
    out = torch.addcmul(local_t, decay, carry_t)
    return out.reshape(batch, n * L, *out.shape[3:])[:, :T]


#: per-step element count from which the sequential form is faster on CPU (memory bound;
#: measured in benchmarks/): below it the per-step overhead dominates and chunks win.
SEQUENTIAL_FROM_ELEMENTS = 8192


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, method: str = "auto") -> Tensor:
    """Run the recurrence with the ``"chunked"``, ``"sequential"``, ``"loop"`` or ``"auto"`` form.

    ``"auto"`` uses the chunked form on GPU and, on CPU, whenever one step's state is
    smaller than ``SEQUENTIAL_FROM_ELEMENTS`` elements, else the loop with its hand-written
    backward; all forms give the same result to float rounding (tested).
    """
    if method == "auto":
        step = b[:, 0].numel() if b.shape[1] else 0
        method = "chunked" if (b.is_cuda or step < SEQUENTIAL_FROM_ELEMENTS) else "loop"
    if method == "chunked":
        return linear_scan_chunked(a, b, h0)
    if method == "sequential":
        return linear_scan_sequential(a, b, h0)
    if method == "loop":
        from probe.scan_loop import linear_scan_loop

        return linear_scan_loop(a, b, h0)
    raise ValueError(f"Unknown scan method {method!r}; use 'auto', 'chunked', 'sequential' or 'loop'.")


def force_states(a: Tensor, b: Tensor, mask: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Rewrite ``(a, b)`` so that the scan's state equals ``values`` wherever ``mask`` is True.

    ``h_t = 0 * h_{t-1} + value_t`` at a forced (position, element); every later position
    follows the recurrence from the forced value. ``mask, values: [batch, T, *state]``.
    """
    a = a.expand_as(b) if a.shape != b.shape else a
    return torch.where(mask, torch.zeros_like(a), a), torch.where(mask, values.to(b.dtype), b)


def linear_scan_blocked(coefficients, T: int, h0: Tensor, readout, block: int = 64,
                        keep_states: bool = False, method: str = "auto") -> tuple[Tensor, Tensor, Tensor | None]:
    """The recurrence run block by block, each block's states consumed by ``readout``.

    Args:
        coefficients: ``(t0, t1) -> (a, b)``, the decays and inputs of positions ``t0 .. t1-1``
            (``[batch, t1 - t0, *state]``, already forced where edits apply).
        T: sequence length; h0: the state before position 0, ``[batch, *state]``.
        readout: ``(t0, t1, h) -> out`` with ``h`` the states ``[batch, t1 - t0, *state]``;
            ``out`` is ``[batch, t1 - t0, ...]``.
        block: positions per block (peak memory is a few ``block``-long state tensors).
        keep_states: also return every state ``[batch, T, *state]``.
        method: the form of :func:`linear_scan` used within each block.

    Returns ``(out [batch, T, ...], h_T, states or None)``.
    """
    out = kept = None
    h, step = h0, max(1, int(block))
    for t0 in range(0, T, step):  # preallocated results: no second copy of every state
        t1 = min(T, t0 + step)
        a, b = coefficients(t0, t1)
        states = linear_scan(a, b, h, method=method)
        piece = readout(t0, t1, states)
        if out is None:
            out = piece.new_empty(piece.shape[0], T, *piece.shape[2:])
            kept = states.new_empty(states.shape[0], T, *states.shape[2:]) if keep_states else None
        out[:, t0:t1] = piece
        if keep_states:
            kept[:, t0:t1] = states
        h = states[:, -1]
    return out, h, kept
