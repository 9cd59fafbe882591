r"""Reading the residual stream out as logits: the final norm and the unembedding.

The model's readout is ``logits = norm(x) W_U + b_U`` (then ``cap * tanh(logits / cap)`` for a
model with a logit soft cap) with (RMSNorm / LayerNorm)::

    norm(x) = centre(x) / scale(x) * w (+ b)        scale(x) = sqrt(mean(centre(x)^2) + eps)

where ``centre`` is the identity for RMSNorm and mean-subtraction for LayerNorm. Both are
linear in ``x`` once ``scale`` is held fixed, which is what direct logit attribution uses:
with the scale frozen at its value on the full residual stream (``ln_final.hook_scale``),
the (pre-cap) logits are a sum over the parts of the residual stream plus a constant bias.

These functions apply the model's own norm parameters to tensors the caller already
has; they add no hooks and never change the model.
"""
from __future__ import annotations

import torch
from torch import Tensor


def unembed(model, normalized: Tensor, soft_cap: bool = True) -> Tensor:
    """``normalized [..., d_model] -> logits [..., vocab]``: ``x W_U + b_U``, then the model's logit
    soft cap ``cap * tanh(. / cap)`` if it has one (``soft_cap=False``: the linear, pre-cap logits)."""
    logits = normalized @ model.unembed_matrix + model.b_U
    cap = getattr(model.cfg, "logit_soft_cap", None)
    return cap * torch.tanh(logits / cap) if soft_cap and cap is not None else logits


def final_norm(model, resid: Tensor) -> Tensor:
    """The final norm applied to ``resid [..., d_model]`` with its own scale (the logit lens readout).

    Computed from the norm's parameters, so hooks attached to ``ln_final`` do not fire.
    """
    ln = model.ln_final
    x = ln.centre(resid)
    scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    out = x / scale * ln.w
    return out + ln.b if hasattr(ln, "b") else out


def readout(model, resid: Tensor) -> Tensor:
    """Logits the model would produce if ``resid [..., d_model]`` were its final residual stream."""
    return unembed(model, final_norm(model, resid))


def frozen_norm_linear(model, part: Tensor, scale: Tensor) -> Tensor:
    """The linear part of the final norm applied to one *part* of the residual stream with a fixed
    ``scale [..., 1]``: ``centre(part) / scale * w`` (no bias). Summing it over all parts and adding
    :func:`norm_bias` gives ``ln_final(resid)`` exactly."""
    ln = model.ln_final
    return ln.centre(part) / scale * ln.w


def norm_bias(model) -> Tensor | None:
    """The final norm's additive bias ``[d_model]`` (LayerNorm), or ``None`` (RMSNorm)."""
    return getattr(model.ln_final, "b", None)
