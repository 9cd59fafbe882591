r"""The implicit attention of a linear recurrence, and the helpers every mixer's unrolling shares.

A linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0`` unrolls to
``h_t = sum_{s<=t} (prod_{s<r<=t} a_r) b_s``. When ``b_s`` is a value ``v_s`` times a
coefficient and the readout is linear in ``h_t``, the mixer's output (or the signal just
before its output projection) is ``y_t = sum_s A[t, s] v_s``: an attention matrix that is
never formed by the mixer itself (Ali et al. 2024, *The Hidden Attention of Mamba*;
Zimerman et al. 2024, *A Unified Implicit Attention Formulation for Gated-Linear
Recurrent Sequence Models*). Each mixer's unrolling lives in its own module
(``probe/methods/implicit/<name>.py``) and builds an :class:`ImplicitAttention` from the
mixer's cached hooks, which :meth:`ImplicitAttention.reconstruct` checks against the
output the mixer actually produced.

Products of decays are computed as ``exp`` of *segment sums* of log-decays
(:func:`segment_sums`), accumulated per (t, s) pair by a cumulative sum that never
subtracts two large numbers, so decays of 0 (``log = -inf``) and long inputs are exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from probe.ops.ssd import segment_sums as ops_segment_sums


def segment_sums(x: Tensor) -> Tensor:
    """``S[..., t, s] = sum_{s < r <= t} x[..., r]`` for ``t >= s`` (0 on the diagonal), 0 above it.

    ``x [..., T] -> [..., T, T]``: :func:`probe.ops.ssd.segment_sums` with finite entries above the
    diagonal, which the caller masks (see :func:`causal_mask`); ``-inf`` entries of ``x`` are allowed.
    """
    return ops_segment_sums(x, above=0.0)


def causal_mask(T: int, device=None) -> Tensor:
    """``[T, T]`` bool, True where ``s <= t`` (query t may read key s)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def decay_products(log_decay: Tensor) -> Tensor:
    """``P[..., t, s] = prod_{s < r <= t} exp(log_decay[..., r])`` for ``s <= t``, 0 for ``s > t``:
    ``[..., T] -> [..., T, T]``."""
    T = log_decay.shape[-1]
    P = segment_sums(log_decay).exp()
    return torch.where(causal_mask(T, log_decay.device), P, P.new_zeros(()))


@dataclass
class ImplicitAttention:
    """The implicit attention of one mixer layer on one batch.

    Attributes:
        matrix: ``[batch, head, t, s]``; ``A[b, h, t, s]`` is how much position ``t`` reads
            value ``s`` in "head" ``h`` (a channel, a head, or a Legendre order: ``head_label``).
        values: what is read, ``[batch, s, ...]`` (layout fixed by ``equation``).
        equation: the einsum ``(matrix, values) -> signal``, e.g. ``"bhts,bshd->bthd"``.
        signal: the mixer's own pre-output signal the mix should equal, from its hooks (``None``
            where the mixer does not hook it; the output check still applies).
        project: maps the signal to the mixer's output ``[batch, t, d_model]``.
        head_label / value_label: names for figures (``"channel"``, ``"z (candidate)"``).
        description: one line of math, shown in figures and frames.
        skip: ``[batch, head, t]`` or ``None``: a term that reads only the current position and is
            kept out of ``matrix`` (Mamba's gated ``D`` skip), so that ``matrix`` is the recurrence's
            own reading of the past; :meth:`with_skip` puts it on the diagonal.
        skip_signal: the skip's contribution to the signal (layout of :meth:`mix`'s result).
    """

    matrix: Tensor
    values: Tensor
    equation: str
    signal: Tensor | None
    project: Callable[[Tensor], Tensor]
    head_label: str
    value_label: str
    description: str
    skip: Tensor | None = None
    skip_signal: Tensor | None = None

    def mix(self) -> Tensor:
        """``sum_s A[t, s] value_s`` (plus the skip term): the signal rebuilt from the matrix."""
        mixed = torch.einsum(self.equation, self.matrix, self.values)
        return mixed if self.skip_signal is None else mixed + self.skip_signal

    def with_skip(self) -> Tensor:
        """``matrix`` with the skip term on its diagonal (``matrix`` when there is none)."""
        return self.matrix if self.skip is None else self.matrix + torch.diag_embed(self.skip)

    def reconstruct(self) -> Tensor:
        """The mixer output ``[batch, t, d_model]`` rebuilt from the matrix."""
        return self.project(self.mix())

    def errors(self, mixer_out: Tensor) -> dict[str, float]:
        """Relative max-abs errors of the rebuilt mixer output (and of the signal, when hooked)."""
        mixed = self.mix()
        rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        out = {"output": rel(self.project(mixed), mixer_out)}
        if self.signal is not None:
            out["signal"] = rel(mixed, self.signal)
        return out
