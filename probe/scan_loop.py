r"""The sequential linear scan with a hand-written backward pass.

Same recurrence as :mod:`probe.scan` (``h_t = a_t * h_{t-1} + b_t``, ``a`` broadcasting
against ``b: [batch, T, *state]``, ``h0: [batch, *state]``), run one position at a time
under ``no_grad`` into a preallocated time-major buffer. Autograd then holds one node for
the whole scan instead of one per position, which is what makes training recurrent
mixers with large states (Mamba: ``[d_inner, d_state]`` per position) affordable on CPU.

Backward, with ``g_t = dL/dh_t`` from later layers and ``G_t`` the total gradient
reaching ``h_t`` (directly and through ``h_{t+1}``)::

    G_{T-1} = g_{T-1},        G_t = g_t + a_{t+1} * G_{t+1}       (a reverse linear scan)
    dL/db_t = G_t,            dL/da_t = G_t * h_{t-1},            dL/dh0 = a_0 * G_0

with the gradient of ``a`` summed over the dimensions along which ``a`` was broadcast.
First derivatives only (``once_differentiable``): the methods in this package never
differentiate a gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear_scan_loop"]


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
    """The scan one position at a time with the backward above. Returns ``[batch, T, *state]``.

    Equal to :func:`probe.scan.linear_scan_sequential` in values and gradients (tested,
    including ``gradcheck``); several times faster to train through on CPU.
    """
    from probe.scan import _check, widen

    _check(a, b, h0)
    a, b = widen(h0, a, b)
    if b.shape[1] == 0:
        return b.clone()
    if a.dim() != b.dim():
        a = a.expand_as(b)
    h0 = b.new_zeros(b.shape[0], *b.shape[2:]) if h0 is None else h0.to(b.dtype)
    return _LinearScan.apply(a.to(b.dtype), b, h0)
