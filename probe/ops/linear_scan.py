r"""Kernels for the linear recurrence shared by every linear mixer.

The recurrence, elementwise over the trailing (state) dimensions::

    h_t = a_t * h_{t-1} + b_t,        t = 0 .. T-1,   h_{-1} = h0

with ``a, b: [batch, T, *state]`` (``a`` may broadcast against ``b``, e.g. a per-head
scalar decay ``[batch, T, heads, 1, 1]`` against a matrix state
``[batch, T, heads, d_k, d_v]``) and ``h0: [batch, *state]``. The result holds the state
after every position, ``h: [batch, T, *state]``.

Two forms are kept side by side and tested against each other:

* :func:`linear_scan_sequential` is the obviously-correct reference, one step per token.
* :func:`linear_scan_loop` is the same loop with a hand-written backward (below): one
  autograd node instead of one per token, the form ``"auto"`` picks on CPU for large states.
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

The loop form's backward, with ``g_t = dL/dh_t`` from later layers and ``G_t`` the total
gradient reaching ``h_t`` (directly and through ``h_{t+1}``)::

    G_{T-1} = g_{T-1},        G_t = g_t + a_{t+1} * G_{t+1}       (a reverse linear scan)
    dL/db_t = G_t,            dL/da_t = G_t * h_{t-1},            dL/dh0 = a_0 * G_0

with the gradient of ``a`` summed over the dimensions along which ``a`` was broadcast. The
forward runs one position at a time under ``no_grad`` into a preallocated time-major buffer,
which is what makes training recurrent mixers with large states (Mamba: ``[d_inner, d_state]``
per position) affordable on CPU. First derivatives only (``once_differentiable``): the methods
in this package never differentiate a gradient.

Precision: every scan accumulates in the wider of its inputs' and its initial state's dtype
(:func:`probe.ops.checks.widen`), so the float32 state a half-precision model carries is never
rounded down.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from probe.ops.checks import check_linear_scan, widen

__all__ = ["linear_scan", "linear_scan_sequential", "linear_scan_chunked", "linear_scan_loop", "linear_scan_blocked",
           "force_states"]


def linear_scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Reference form: ``h_t = a_t * h_{t-1} + b_t`` one position at a time. Returns ``[batch, T, *state]``."""
    check_linear_scan(a, b, h0)
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
    check_linear_scan(a, b, h0)
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


def _scan_time_major(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` over the leading (time) axis of ``a, b: [T, batch, *state]``."""
    out = torch.empty_like(b)
    h = h0
    for t in range(b.shape[0]):
        h = torch.addcmul(b[t], a[t], h, out=out[t])
    return out


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        a_t = a.transpose(0, 1).contiguous()  # time-major: every step reads contiguous memory
        h = _scan_time_major(a_t, b.transpose(0, 1).contiguous(), h0)
        ctx.save_for_backward(a_t, h, h0)
        ctx.a_shape = a.shape
        return h.transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        a_t, h, h0 = ctx.saved_tensors
        g = grad.transpose(0, 1).contiguous()
        total = torch.empty_like(g)
        acc = total[-1].copy_(g[-1])
        for t in range(g.shape[0] - 2, -1, -1):
            acc = torch.addcmul(g[t], a_t[t + 1], acc, out=total[t])
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            previous = torch.cat([h0.unsqueeze(0), h[:-1]], dim=0)
            batch, _, *rest = ctx.a_shape
            grad_a = (total * previous).sum_to_size(g.shape[0], batch, *rest).transpose(0, 1)
        if ctx.needs_input_grad[2]:
            grad_h0 = (a_t[0] * total[0]).sum_to_size(h0.shape)
        return grad_a, total.transpose(0, 1), grad_h0


def linear_scan_loop(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The scan one position at a time with the backward of the module docstring. Returns ``[batch, T, *state]``.

    Equal to :func:`linear_scan_sequential` in values and gradients (tested, including
    ``gradcheck``); several times faster to train through on CPU.
    """
    check_linear_scan(a, b, h0)
    a, b = widen(h0, a, b)
    if b.shape[1] == 0:
        return b.clone()
    if a.dim() != b.dim():
        a = a.expand_as(b)
    h0 = b.new_zeros(b.shape[0], *b.shape[2:]) if h0 is None else h0.to(b.dtype)
    return _LinearScan.apply(a.to(b.dtype), b, h0)


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
