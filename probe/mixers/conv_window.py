r"""Causal convolution windows as a recurrent state.

A causal convolution of width ``k`` over inputs ``u_t`` remembers the last ``w = k - 1``
inputs. As a state, after token ``t``::

    W_t = (u_{t-w+1}, ..., u_t)            # [batch, w, d]
    W_t = shift(W_{t-1}) with u_t appended  # the recurrence

and the convolution output at ``t`` reads ``(W_{t-1}, u_t)``. Used by QRNN (width-k
convolution for z, f, o), Mamba (depthwise conv) and RWKV token shift (``k = 2``).

Edits propagate: forcing ``W_p`` changes the windows ``W_{p+1} .. W_{p+w-1}`` (the edited
entries shift through them) and so the convolution outputs up to ``p + w``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def windows(u: Tensor, init: Tensor) -> Tensor:
    """All windows ``W_t`` for ``t = 0 .. T-1``: ``u [batch, T, d]``, ``init [batch, w, d]`` -> ``[batch, T, w, d]``."""
    w = init.shape[1]
    padded = torch.cat([init.to(u.dtype), u], dim=1)  # [batch, w + T, d]
    return padded.unfold(1, w, 1)[:, 1:].transpose(-1, -2)  # window ending at t (inclusive)


def force_windows(W: Tensor, u: Tensor, init: Tensor, mask: Tensor, values: Tensor) -> Tensor:
    """Windows with ``W[mask] = values`` and the edited entries shifted through later windows."""
    w = W.shape[2]
    changed = mask.flatten(2).any(-1)  # [batch, T]
    positions = sorted({int(p) + j for p in torch.nonzero(changed.any(0)).flatten() for j in range(w)})
    T = W.shape[1]
    W = W.clone()
    for t in positions:
        if t >= T:
            break
        prev = init.to(W.dtype) if t == 0 else W[:, t - 1]
        carried = torch.cat([prev[:, 1:], u[:, t : t + 1]], dim=1)
        W[:, t] = torch.where(mask[:, t], values[:, t].to(W.dtype), carried)
    return W


def previous_windows(W: Tensor, init: Tensor) -> Tensor:
    """``W_{t-1}`` for every t (``init`` at t = 0): ``[batch, T, w, d]``."""
    return torch.cat([init.to(W.dtype).unsqueeze(1), W[:, :-1]], dim=1)


def conv_inputs(W_prev: Tensor, u: Tensor) -> Tensor:
    """The ``k = w + 1`` inputs the convolution reads at each position: ``[batch, T, k, d]``."""
    return torch.cat([W_prev, u.unsqueeze(2)], dim=2)
