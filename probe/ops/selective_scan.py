r"""Mamba's selective scan fused step by step, with a hand-written, recomputing backward.

The recurrence (per batch element; ``D = d_inner``, ``N = d_state``)::

    s_t = exp(dt_t[:, None] * A) * s_{t-1} + v_t[:, None] * B_t[None, :]     ([D, N])
    y_t = s_t C_t                                                            ([D])

with ``dt, v: [batch, T, D]`` (``v = dt * u``), ``A: [D, N]``, ``B, C: [batch, T, N]``
and ``s_{-1} = h0: [batch, D, N]``.

Materialising every state costs ``T * D * N`` numbers per layer in every pass over memory,
several times over in training (decays, inputs, states and their gradients); that is what
made training the zoo's Mamba slow on CPU. Here each position is computed from the previous
state alone, in cache-sized pieces, and only every ``checkpoint``-th state is kept. The
backward pass walks the segments from the last, recomputes one segment's states from its
checkpoint, and runs the adjoint recurrence within it. With ``G_t = dL/ds_t`` (total) and
``g_t = dL/dy_t``::

    G_t      = a_{t+1} * G_{t+1} + g_t[:, None] * C_t[None, :]     (G_T = dL/ds_{T-1} from outside)
    dL/dC_t  = s_t^T g_t                 dL/dB_t = G_t^T v_t         dL/dv_t = G_t B_t
    q_t      = G_t * s_{t-1} * a_t       (gradient of dt_t A through the decay)
    dL/ddt_t = q_t A summed over N       dL/dA   = sum_{b,t} q_t * dt_t[:, None]
    dL/dh0   = a_0 * G_0

First derivatives only. Used by :class:`probe.mixers.mamba.Mamba` whenever no state is hooked
or edited (plain forwards and training); the hooked path builds every state with
:mod:`probe.ops.linear_scan`, and both are tested equal in values and gradients.

On the CPU (float32 / float64) the same recurrence and adjoint run in a compiled kernel when
one can be built (``probe/ops/native/selective_scan.cpp``, see :mod:`probe.ops.native`): a block of
8 channels of one batch element keeps its ``N x 8`` state in cache over all positions and its
backward recomputes the block's states (``T x N x 8`` numbers), so nothing of size ``T * D * N``
is stored; about 5x faster than the step-by-step tensor version. ``native_path=False`` forces
the tensor version (elsewhere: GPU, half precision, no compiler, ``PROBE_NATIVE=0``).

:func:`selective_scan_states` is the same step, without autograd, writing every state straight
into the ``[batch, T, D, N]`` result: what a state cache needs, and nothing beyond it but one
``[batch, D, N]`` decay (the blocked scan keeps a block of decays, inputs and states besides).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from probe.ops.native import native

__all__ = ["selective_scan", "selective_scan_states"]

#: positions between two kept states (the backward recomputes at most this many states at once)
CHECKPOINT = 16


def _decay(dt_t: Tensor, A: Tensor, out: Tensor) -> Tensor:
    """``exp(dt_t[:, :, None] * A)`` into ``out: [batch, D, N]``."""
    return torch.mul(dt_t.unsqueeze(-1), A, out=out).exp_()


def _advance(s: Tensor, a: Tensor, v_t: Tensor, B_t: Tensor) -> Tensor:
    """In place: ``s = a * s + v_t[:, :, None] * B_t[:, None, :]``."""
    return s.mul_(a).addcmul_(v_t.unsqueeze(-1), B_t.unsqueeze(1))


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, v: Tensor, h0: Tensor, checkpoint: int):
        dt_, B_, C_, v_ = (x.transpose(0, 1).contiguous() for x in (dt, B, C, v))  # time-major
        T = dt_.shape[0]
        y = dt_.new_empty(T, *dt_.shape[1:])
        s = h0.clone()
        a = torch.empty_like(s)
        kept = []
        for t in range(T):
            if t % checkpoint == 0:
                kept.append(s.clone())
            _advance(s, _decay(dt_[t], A, a), v_[t], B_[t])
            torch.bmm(s, C_[t].unsqueeze(-1), out=y[t].unsqueeze(-1))
        ctx.save_for_backward(dt_, A, B_, C_, v_, torch.stack(kept) if kept else h0.unsqueeze(0))
        ctx.checkpoint = checkpoint
        return y.transpose(0, 1), s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor):
        dt_, A, B_, C_, v_, kept = ctx.saved_tensors
        K, T = ctx.checkpoint, dt_.shape[0]
        g_ = grad_y.transpose(0, 1).contiguous()
        d_dt, d_v = torch.empty_like(dt_), torch.empty_like(v_)
        d_B, d_C = torch.empty_like(B_), torch.empty_like(C_)
        d_A = torch.zeros_like(kept[0])  # per batch element; summed at the end
        G = grad_last.clone() if grad_last is not None else torch.zeros_like(kept[0])
        a_next = torch.ones_like(G)  # a_{t+1}; G already holds the gradient from beyond T-1
        q = torch.empty_like(G)
        for seg in range((T - 1) // K, -1, -1):
            t0, t1 = seg * K, min(T, seg * K + K)
            states = [kept[seg]]  # states[i] = s_{t0 + i - 1}
            decays = []  # decays[i] = a_{t0 + i}, kept from the recomputation for the adjoint pass
            s = kept[seg].clone()
            for t in range(t0, t1):
                decays.append(_decay(dt_[t], A, torch.empty_like(s)))
                states.append(_advance(s, decays[-1], v_[t], B_[t]).clone())
            for t in range(t1 - 1, t0 - 1, -1):
                s_t, s_prev, a = states[t - t0 + 1], states[t - t0], decays[t - t0]
                G.mul_(a_next).addcmul_(g_[t].unsqueeze(-1), C_[t].unsqueeze(1))
                torch.bmm(g_[t].unsqueeze(1), s_t, out=d_C[t].unsqueeze(1))
                torch.bmm(v_[t].unsqueeze(1), G, out=d_B[t].unsqueeze(1))
                torch.bmm(G, B_[t].unsqueeze(-1), out=d_v[t].unsqueeze(-1))
                torch.mul(G, s_prev, out=q).mul_(a)
                torch.sum(q * A, dim=-1, out=d_dt[t])
                d_A.addcmul_(q, dt_[t].unsqueeze(-1))
                a_next = a
        grad_h0 = G * a_next
        back = lambda x: x.transpose(0, 1)  # noqa: E731
        return back(d_dt), d_A.sum(0), back(d_B), back(d_C), back(d_v), grad_h0, None


class _NativeSelectiveScan(torch.autograd.Function):
    """The same recurrence and adjoint through the compiled CPU kernel (``probe/ops/native/selective_scan.cpp``),
    which keeps a block of channels' state in cache over all positions; the backward recomputes states."""

    @staticmethod
    def forward(ctx, kernel, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, v: Tensor, h0: Tensor):
        inputs = [x.contiguous() for x in (dt, A, B, C, v, h0)]
        y, last = kernel.forward(*inputs, False)
        ctx.kernel = kernel
        ctx.save_for_backward(*inputs)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor):
        grad_y = torch.zeros_like(ctx.saved_tensors[0]) if grad_y is None else grad_y.contiguous()
        grads = ctx.kernel.backward(*ctx.saved_tensors, grad_y,
                                    None if grad_last is None else grad_last.contiguous())
        return (None, *grads)


def _native_kernel(*tensors: Tensor):
    """The compiled kernel when it applies to these tensors (CPU, float32/float64), else None."""
    if not all(x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) for x in tensors):
        return None
    return native("selective_scan")


def _prepare(caller: str, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, v: Tensor, h0: Tensor,
             native_path: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, object]:
    """Checks the shapes, casts ``A, B, C, h0`` to ``v``'s dtype and picks the compiled kernel
    (None: the PyTorch path). Returns ``(A, B, C, h0, kernel)``."""
    if dt.dim() != 3:
        raise ValueError(f"{caller}: dt must be [batch, T, D], got shape {tuple(dt.shape)}")
    batch, T, D = dt.shape
    N = A.shape[-1]
    expected = {"A": (A, (D, N)), "B": (B, (batch, T, N)), "C": (C, (batch, T, N)), "v": (v, (batch, T, D)),
                "h0": (h0, (batch, D, N))}
    for name, (x, shape) in expected.items():
        if tuple(x.shape) != shape:
            raise ValueError(f"{caller}: {name} has shape {tuple(x.shape)}, expected {shape}")
    dtype = v.dtype
    A, B, C, h0 = A.to(dtype), B.to(dtype), C.to(dtype), h0.to(dtype)
    kernel = _native_kernel(dt, A, B, C, v, h0) if native_path else None
    return A, B, C, h0, kernel


def selective_scan(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, v: Tensor, h0: Tensor,
                   checkpoint: int = CHECKPOINT, native_path: bool = True) -> tuple[Tensor, Tensor]:
    """``(y [batch, T, D], s_{T-1} [batch, D, N])`` of the recurrence in the module docstring.

    Args:
        dt: step sizes ``[batch, T, D]``; A: ``[D, N]``; B, C: ``[batch, T, N]``;
        v: ``dt * u``, ``[batch, T, D]``; h0: ``[batch, D, N]``.
        checkpoint: positions between kept states (memory vs recomputation) of the PyTorch path.
        native_path: use the compiled CPU kernel (:mod:`probe.ops.native`) for float32/float64 CPU
            tensors when it can be built; ``False`` forces the PyTorch path (the kernel's tests
            compare the two).

    Example::

        y, last = selective_scan(dt, -torch.exp(A_log), B, C, dt * u, torch.zeros(b, D, N))
    """
    A, B, C, h0, kernel = _prepare("selective_scan", dt, A, B, C, v, h0, native_path)
    if dt.shape[1] == 0:
        return v.new_zeros(dt.shape[0], 0, dt.shape[2]), h0.clone()
    if kernel is not None:
        return _NativeSelectiveScan.apply(kernel, dt, A, B, C, v, h0)
    return _SelectiveScan.apply(dt, A, B, C, v, h0, int(checkpoint))


def selective_scan_states(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, v: Tensor,
                          h0: Tensor, native_path: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``(y [batch, T, D], s_{T-1} [batch, D, N], states [batch, T, D, N])``, every state kept.

    Arguments as :func:`selective_scan`. No gradients flow (it refuses inputs that need them):
    state caching under ``torch.no_grad()``. Each state is computed in place in its slot of the
    result from the previous slot, so the working memory beyond the returned states is one
    ``[batch, D, N]`` decay. On the CPU the compiled kernel writes the states (``native_path``
    as in :func:`selective_scan`).
    """
    if torch.is_grad_enabled() and any(x.requires_grad for x in (dt, A, B, C, v, h0)):
        raise RuntimeError("selective_scan_states does not track gradients; "
                           "use probe.ops.linear_scan.linear_scan_blocked.")
    A, B, C, h0, kernel = _prepare("selective_scan_states", dt, A, B, C, v, h0, native_path)
    batch, T, D = dt.shape
    if kernel is not None and T:
        return tuple(kernel.forward(*(x.contiguous() for x in (dt, A, B, C, v, h0)), True))
    states = v.new_empty(batch, T, D, A.shape[-1])
    a = torch.empty_like(h0)
    prev = h0
    for t in range(T):
        s = states[:, t]
        torch.mul(_decay(dt[:, t], A, a), prev, out=s).addcmul_(v[:, t].unsqueeze(-1), B[:, t].unsqueeze(1))
        prev = s
    y = torch.bmm(states.view(batch * T, D, -1), C.reshape(batch * T, -1, 1)).view(batch, T, D)  # no copy of states
    last = states[:, -1].clone() if T else h0.clone()
    return y, last, states
