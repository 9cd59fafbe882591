r"""Normalisation layers with TransformerLens hook names.

RMSNorm::    y = x / sqrt(mean(x^2) + eps) * w
LayerNorm::  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b

Hooks: ``hook_scale`` (the divisor ``sqrt(... + eps)``, ``[batch, pos, 1]``) and
``hook_normalized`` (the output). Direct logit attribution freezes ``hook_scale`` of the
final norm so the output is linear in the residual stream.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def centre(self, x: Tensor) -> Tensor:
        """The part of the norm that is linear before scaling (identity for RMSNorm)."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w)


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def centre(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.centre(x)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


def make_norm(cfg) -> nn.Module:
    return RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.norm == "rmsnorm" else LayerNorm(cfg.d_model, cfg.norm_eps)
