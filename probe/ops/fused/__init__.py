r"""Fused library kernels for the recurrences (GPU), behind one dispatch seam.

:mod:`probe.ops.fused.registry` decides whether a kernel runs (CUDA inputs, the library installed,
not switched off). One module per recurrence maps probe's tensors onto its library's call:
:mod:`~probe.ops.fused.gla` (HGRN2), :mod:`~probe.ops.fused.mamba` (Mamba), :mod:`~probe.ops.fused.ssd`
(Mamba-2), :mod:`~probe.ops.fused.delta_rule` (Gated DeltaNet, Kimi Delta Attention),
:mod:`~probe.ops.fused.hgrn` (RG-LRU, QRNN), :mod:`~probe.ops.fused.rwkv7` (RWKV-7),
:mod:`~probe.ops.fused.rwkv4` (RWKV-4), :mod:`~probe.ops.fused.mlstm` (mLSTM) and
:mod:`~probe.ops.fused.slstm` (sLSTM); :mod:`~probe.ops.fused.conv` picks the causal convolution and
:mod:`~probe.ops.fused.capture` sizes the blocks in which a GPU materialises every state. Without a
kernel every recurrence runs its PyTorch form with the same results.
"""
from probe.ops.fused.capture import capture_block
from probe.ops.fused.conv import depthwise_conv
from probe.ops.fused.delta_rule import MAX_K, delta_rule_fused
from probe.ops.fused.gla import gla_fused
from probe.ops.fused.hgrn import hgrn_fused, hgrn_scan
from probe.ops.fused.mamba import carried_state_response, causal_conv_fused, selective_scan_fused
from probe.ops.fused.mlstm import mlstm_fused
from probe.ops.fused.registry import KERNELS, Kernel, fused_disabled, fused_kernel, swapped_kernel
from probe.ops.fused.rwkv4 import rwkv4_fused
from probe.ops.fused.rwkv7 import rwkv7_fused
from probe.ops.fused.slstm import slstm_fused
from probe.ops.fused.ssd import ssd_fused

__all__ = ["KERNELS", "Kernel", "fused_kernel", "fused_disabled", "swapped_kernel", "capture_block", "gla_fused",
           "selective_scan_fused", "carried_state_response", "causal_conv_fused", "depthwise_conv", "ssd_fused", "delta_rule_fused", "MAX_K",
           "hgrn_fused", "hgrn_scan", "rwkv7_fused", "rwkv4_fused", "mlstm_fused", "slstm_fused"]
