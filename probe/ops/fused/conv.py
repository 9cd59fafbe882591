r"""The causal depthwise convolution of Mamba, Mamba-2 and Gated DeltaNet: causal-conv1d where it can run.

:func:`depthwise_conv` keeps :func:`probe.ops.conv_window.depthwise_conv`'s contract
(``x [b, T, d]``, ``init [b, k-1, d]``, ``weight [d, k]`` -> ``(y [b, T, d], windows or None,
final window [b, k-1, d])``) and runs causal-conv1d's ``causal_conv1d_fn``
(:func:`probe.ops.fused.mamba.causal_conv_fused`) when all of these hold:

* the windows are neither hooked nor edited (``name`` not in ``keep`` or ``forcing``),
* the kernel is available for ``x`` (:func:`probe.ops.fused.registry.fused_kernel`: CUDA, installed, not off),
* the width ``k`` is one causal-conv1d takes (:data:`FUSED_WIDTHS`: 2 to 4),
* the carried window ``init`` is zero (the library's call starts from a zero window).

Otherwise the PyTorch form runs. The final window is the last ``k - 1`` inputs either way.
"""
from __future__ import annotations

import torch
from torch import Tensor

from probe.ops import conv_window
from probe.ops.fused.mamba import causal_conv_fused
from probe.ops.fused.registry import fused_kernel

__all__ = ["depthwise_conv", "FUSED_WIDTHS"]

#: the conv widths causal-conv1d's kernel takes ("causal_conv1d only supports width between 2 and 4")
FUSED_WIDTHS = (2, 3, 4)


def depthwise_conv(x: Tensor, init: Tensor, weight: Tensor, bias: Tensor | None, forcing: dict, keep: set,
                   name: str = "state_conv") -> tuple[Tensor, Tensor | None, Tensor]:
    """``(y, windows or None, final window)`` of the causal depthwise conv (module docstring)."""
    if name not in keep and name not in forcing and weight.shape[1] in FUSED_WIDTHS:
        kernel = fused_kernel("causal_conv1d", x)
        if kernel is not None and not bool(init.any()):
            w = weight.shape[1] - 1
            final = torch.cat([init.to(x.dtype), x[:, -w:]], dim=1)[:, -w:]
            return causal_conv_fused(kernel, x, weight, bias), None, final
    return conv_window.depthwise_conv(x, init, weight, bias, forcing, keep, name)
