"""Half precision: norm statistics and recurrent states are computed in float32.

A float16 ``x.pow(2)`` overflows past 256 (65504 is float16's largest value), so a norm that
squares in float16 turns one large residual coordinate into ``inf`` and its position into
zeros; a recurrent state stored in bfloat16 (8 bits of mantissa) loses small increments
against a slowly decaying memory, an error that grows along the sequence. Outputs keep the
input's dtype.
"""
from __future__ import annotations

import pytest
import torch

import probe
from probe.norm import LayerNorm, RMSNorm
from probe.selective_scan import selective_scan
from tests.conftest import make_model


@pytest.mark.parametrize("norm", [RMSNorm, LayerNorm])
def test_norm_of_a_large_coordinate_in_float16(norm):
    layer = norm(64)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    x[0, 2, 7] = 300.0  # 300^2 = 90000 > 65504
    ref = layer(x)
    out = layer.half()(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 1e-2 * ref.abs().max()


@pytest.mark.numerical
def test_zoo_qrnn_float16_with_a_large_residual_coordinate_agrees_with_float32():
    """The issue's case: zoo QRNN, one residual coordinate written to 300 by a hook."""
    model = probe.load("zoo:qrnn")
    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n"

    def write(t, hook):
        t[:, :, 3] = 300.0

    hooks = [("blocks.1.hook_resid_post", write)]
    with torch.no_grad():
        ref = model.run_with_hooks(text, fwd_hooks=hooks)
        half = model.half().run_with_hooks(text, fwd_hooks=hooks)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    agree = (half.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9, f"top-1 agreement with float32 {agree:.2f}"
