r"""Normalisation layers with TransformerLens hook names.

RMSNorm::    y = x / sqrt(mean(x^2) + eps) * w          (offset=True: * (1 + w), w starting at 0)
LayerNorm::  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b

``RMSNorm(offset=True)`` is the zero-centred parametrisation of Gemma and Qwen3-Next (their
checkpoints store ``w`` with the gain ``1 + w``); the gain is formed in float32.

Hooks: ``hook_scale`` (the divisor ``sqrt(... + eps)``, ``[batch, pos, 1]``) and
``hook_normalized`` (the output).

Half precision: the statistics and the division run in float32 (``x^2`` overflows float16
past 256) and the output and ``hook_scale`` come back in the input's dtype. Direct logit attribution freezes ``hook_scale`` of the
final norm so the output is linear in the residual stream.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.w = nn.Parameter(torch.zeros(d_model) if offset else torch.ones(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def gain(self, dtype: torch.dtype) -> Tensor:
        """The multiplier of the normalised input, in ``dtype``: ``w``, or ``1 + w`` with ``offset``."""
        return self.w.to(dtype) + 1 if self.offset else self.w.to(dtype)

    def centre(self, x: Tensor) -> Tensor:
        """The part of the norm that is linear before scaling (identity for RMSNorm)."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(_scaled(self, self.centre(_wide(x)), x.dtype))


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def gain(self, dtype: torch.dtype) -> Tensor:
        return self.w.to(dtype)

    def centre(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized((_scaled(self, self.centre(_wide(x)), x.dtype) + self.b).to(x.dtype))


def _wide(x: Tensor) -> Tensor:
    """``x`` in at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _scaled(norm: nn.Module, xc: Tensor, dtype: torch.dtype) -> Tensor:
    """``xc / sqrt(mean(xc^2) + eps) * w`` with ``xc`` wide (float32+), the scale hooked in ``dtype``
    and the result in ``dtype``."""
    scale = norm.hook_scale((xc.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().to(dtype))
    return (xc / scale.to(xc.dtype) * norm.gain(xc.dtype)).to(dtype)


def make_norm(cfg) -> nn.Module:
    return RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.norm == "rmsnorm" else LayerNorm(cfg.d_model, cfg.norm_eps)
