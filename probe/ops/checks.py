r"""What every kernel in :mod:`probe.ops` does to its inputs before the recurrence runs.

* :func:`widen`: the precision rule. A scan accumulates in the wider of its inputs' and its
  initial state's dtype, so the float32 state a half-precision model carries is never rounded
  down inside a scan.
* :func:`check_initial_state`: an initial state of the wrong shape is named with the shape the
  kernel expected (``ValueError``), before it can broadcast into a silently wrong result.
* :func:`check_linear_scan`: the shapes of the linear recurrence ``h_t = a_t * h_{t-1} + b_t``
  (``a, b: [batch, T, *state]``, ``a`` broadcasting against ``b``; ``h0: [batch, *state]``).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_initial_state", "check_linear_scan", "widen"]


def widen(state: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` cast to the wider of their dtype and ``state``'s (unchanged for ``state=None`` or a
    state no wider): a recurrence carried in float32 by a bfloat16 model accumulates in float32."""
    if state is None:
        return tensors
    return tuple(t.to(torch.promote_types(t.dtype, state.dtype)) for t in tensors)


def check_initial_state(h0: Tensor | None, expected: tuple[int, ...], layout: str) -> None:
    """Raise ``ValueError`` unless ``h0`` is ``None`` or has shape ``expected`` (``layout`` names its axes,
    e.g. ``"[batch, heads, K, V]"``)."""
    if h0 is not None and tuple(h0.shape) != tuple(expected):
        raise ValueError(f"initial state h0 has shape {tuple(h0.shape)}, expected {tuple(expected)} ({layout})")


def check_linear_scan(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    """Raise ``ValueError`` unless ``a, b: [batch, T, ...]`` broadcast together and ``h0`` is ``[batch, *state]``."""
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"scan inputs need shape [batch, T, ...]; got a {tuple(a.shape)}, b {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"decay a {tuple(a.shape)} does not broadcast to input b {tuple(b.shape)}") from exc
    check_initial_state(h0, (b.shape[0], *b.shape[2:]), "[batch, *state]")
