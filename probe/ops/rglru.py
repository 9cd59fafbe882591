r"""The Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin / RecurrentGemma (De et al. 2024).

Per channel, with input ``x_t``, input gate ``i_t``, recurrence gate ``r_t`` (both in (0, 1)),
a learnt ``Lambda`` and the constant ``c`` (8)::

    a_t = sigma(Lambda)^(c r_t) = exp(-c r_t softplus(p)),   p = -Lambda      (the decay, in (0, 1))

(transformers' ``recurrent_param`` is ``p``; :func:`decay` takes it). Then::

    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)          (an ordinary position)
    h_t = i_t x_t                                           (a reset position: a document start)

A reset position forgets the past (``a_t`` is replaced by 0) and skips the normalisation
``sqrt(1 - a_t^2)``; transformers resets where ``position_ids == 0``, i.e. at the first token.
With a reset flag ``rho_t`` in {0, 1} both cases are one linear recurrence
``h_t = alpha_t h_{t-1} + beta_t`` with::

    alpha_t = (1 - rho_t) a_t
    beta_t  = (rho_t + (1 - rho_t) sqrt(1 - a_t^2)) i_t x_t

:func:`coefficients` builds ``(alpha, beta)``; the mixer runs them through
:func:`probe.ops.fused.hgrn.hgrn_scan` (fla's ``chunk_hgrn`` on CUDA, else the shared linear scan,
:func:`probe.ops.linear_scan.linear_scan`). :func:`rglru_sequential` is
the reference, one position at a time, written as the two cases above.

The gates are block-diagonal linear maps per head (:func:`block_diagonal`): channel block
``h`` of the gate reads only channel block ``h`` of the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = ["block_diagonal", "coefficients", "decay", "rglru_sequential"]


def block_diagonal(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``y[..., h, j] = sum_i x[..., h, i] weight[h, i, j] + bias[h, j]`` with the channels of
    ``x [..., H * w]`` split into ``H`` blocks of width ``w``; ``weight [H, w, w]``, ``bias [H, w]``.
    Returns ``[..., H * w]``."""
    H, w, _ = weight.shape
    blocks = x.unflatten(-1, (H, w))
    return (torch.einsum("...hi,hij->...hj", blocks, weight.to(x.dtype)) + bias.to(x.dtype)).flatten(-2)


def decay(recurrent_gate: Tensor, param: Tensor, c: float) -> Tensor:
    """``a_t = exp(-c r_t softplus(param))`` for ``r [..., W]``, ``param [W]``: the RG-LRU decay."""
    return torch.exp(-c * recurrent_gate * F.softplus(param.to(recurrent_gate.dtype)))


def coefficients(x: Tensor, input_gate: Tensor, a: Tensor, reset: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, beta)`` of ``h_t = alpha_t h_{t-1} + beta_t`` (module docstring).

    ``x, input_gate, a: [batch, T, W]``; ``reset: [batch, T, 1]`` (1 at a document start, else 0).
    The normaliser is ``sqrt(max(0, 1 - a^2))`` (an edited decay above 1 gives 0, not NaN).
    """
    keep = 1 - reset
    norm = torch.sqrt((1 - a * a).clamp_min(0))
    return keep * a, (reset + keep * norm) * (input_gate * x)


def rglru_sequential(x: Tensor, input_gate: Tensor, a: Tensor, reset: Tensor, h0: Tensor) -> Tensor:
    """Reference: the RG-LRU one position at a time: every state ``[batch, T, W]`` from ``x``,
    ``input_gate``, ``a``, ``reset`` ``[batch, T, W]`` (``reset`` may be ``[batch, T, 1]``) and ``h0 [batch, W]``."""
    h, out = h0, []
    for t in range(x.shape[1]):
        gated = input_gate[:, t] * x[:, t]
        ordinary = a[:, t] * h + torch.sqrt(1 - a[:, t] ** 2) * gated
        h = torch.where(reset[:, t].bool(), gated, ordinary)
        out.append(h)
    return torch.stack(out, dim=1)
