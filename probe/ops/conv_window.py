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
    """All windows ``W_t`` for ``t = 0 .. T-1``: ``u [batch, T, d]``, ``init [batch, w, d]`` -> ``[batch, T, w, d]``.

    An overlapping view of one ``[batch, w + T, d]`` buffer (no copy): writing ``W_t`` through it
    would rewrite ``W_{t+1} .. W_{t+w-1}``. Hooks never see it: :func:`probe.mixers.edits.run_hooked`
    hands them a copy (:func:`probe.mixers.edits.owned_copy`)."""
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


def depthwise_conv(x: Tensor, init: Tensor, weight: Tensor, bias: Tensor | None, forcing: dict, keep: set,
                   name: str = "state_conv") -> tuple[Tensor, Tensor | None, Tensor]:
    """Causal depthwise convolution carrying its window as state ``name``.

    ``y_t = sum_j weight[:, j] * u_{t-k+1+j} + bias`` for ``x = u [batch, T, d]``, ``weight [d, k]``,
    ``init [batch, k-1, d]`` (``k > 1``). Returns ``(y [batch, T, d], windows or None, final window)``;
    the windows ``[batch, T, k-1, d]`` are built (and edits to them honoured) only when ``name`` is
    in ``keep`` or ``forcing``, otherwise one ``conv1d`` runs.
    """
    k = weight.shape[1]
    if name in keep or name in forcing:
        W = windows(x, init)
        if name in forcing:
            W = force_windows(W, x, init, *forcing[name])
        y = torch.einsum("btkd,dk->btd", conv_inputs(previous_windows(W, init), x), weight)
        final = W[:, -1]
    else:
        padded = torch.cat([init.to(x.dtype), x], dim=1)  # [batch, k-1+T, d]
        y = torch.nn.functional.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), groups=x.shape[-1]).transpose(1, 2)
        W, final = None, padded[:, -(k - 1):]
    return (y if bias is None else y + bias), W, final
