r"""The mLSTM memory through mlstm_kernels' chunkwise Triton kernel (the xLSTM kernels' ``triton_xl_chunk``).

The recurrence is :class:`probe.mixers.mlstm.MLSTM`'s, per head (key width ``K``, value width ``V``,
``s = K^-1/2``, log input gate ``i~_t``, log forget gate ``log f_t``)::

    m_t  = max(m_{t-1} + log f_t, i~_t)
    C~_t = exp(log f_t + m_{t-1} - m_t) C~_{t-1} + exp(i~_t - m_t) k_t v_t^T       (n~_t alike with v = 1)
    h_t  = s C~_t^T q_t / (max(|s n~_t^T q_t|, exp(-m_t)) + eps)

mlstm_kernels' call: the states at chunk ends by a recurrence over chunks, each chunk's outputs in
parallel from the state at its start, in heads-first layout::

    mlstm_chunkwise__xl_chunk(q, k, v, i, f, c_initial=C0, n_initial=n0, m_initial=m0, return_last_states=True,
                              eps=eps, chunk_size=L, autocast_kernel_dtype=float32) -> (h, (C_T, n_T, m_T))
    q, k: [b, H, T, K]   v, h: [b, H, T, V]   i, f: [b, H, T] float32
    C: [b, H, K, V]   n: [b, H, K]   m: [b, H, 1]   (float32, in and out)

It computes the same cell with the same conventions: the scale ``s = K^-1/2`` (its only choice), the
normaliser ``max(|s n~^T q|, exp(-m)) + eps`` with probe's ``eps``, the state and stabiliser carried
in and out as probe stores them, and ``m`` at every position as the same running max (taken in
chunks). What the mapping adapts:

* **the forget gate.** The kernel takes the pre-activation ``f~`` and applies ``logsigmoid`` itself;
  probe passes ``logit(f) = log f - log(-expm1(log f))`` of probe's ``log f`` (the value hooks see,
  rounded as the PyTorch path rounds it), capped at :data:`NEUTRAL` where ``f`` rounds to 1. An
  edited forget gate may be exactly 0 (``log f = -inf``), which no pre-activation gives: the mixer runs
  its PyTorch form then.
* **the length.** The kernel takes ``T`` of 16, 32, 64 or a multiple of 128 (chunks of up to 128).
  The positions are padded at the end to that length with ``q = k = v = 0``, ``f~ = NEUTRAL``
  (``log f = 0`` exactly) and ``i~ = -NEUTRAL`` (``exp(i~ - m) = 0``): these steps leave ``C~``, ``n~``
  and ``m`` exactly as they were (while ``m > -NEUTRAL``), so the final state is the true one, and
  their outputs are dropped.
* **dtypes.** ``q``, ``k``, ``v`` go in the model's dtype (the kernel's matrix products run in it,
  accumulating in float32; float32 inputs run TF32 tensor-core products on recent GPUs), gates and
  states in float32; ``h`` comes back in the model's dtype, as the PyTorch path rounds it. Under
  ``torch.autocast`` the kernel casts every input to ``autocast_kernel_dtype``: float32, so that gates
  and states are never rounded to half precision there.

One convention differs, irreducibly and harmlessly: in the readout the kernel floors the stabiliser
at -10 (its ``MINIMUM_MAX_VAL``). ``m`` cancels from ``h`` except through ``eps`` (unscaled,
``h = s C^T q / (max(s |n^T q|, 1) + eps exp(m))``), so the floor moves ``h`` by at most
``eps e^-10`` relative (5e-11 at eps = 1e-6). The kernel takes head widths of 16, 32 or a multiple of
64 (:func:`takes`); other widths run the PyTorch form.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mlstm_fused", "takes", "NEUTRAL", "CHUNK"]

#: the pre-activations of a step that changes nothing: forget ``f~ = NEUTRAL`` (``log f`` rounds to 0
#: in float32), input ``i~ = -NEUTRAL`` (``exp(i~ - m)`` rounds to 0)
NEUTRAL = 1e4
#: the kernel's chunk for sequences of at least this length (mlstm_kernels' DEFAULT_CHUNK_SIZE)
CHUNK = 128
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def takes(K: int, V: int, dtype: torch.dtype) -> bool:
    """Whether the kernel takes heads of key width ``K`` and value width ``V`` in ``dtype``: 16, 32 or a
    multiple of 64 (its blocks are ``min(64, next power of two)`` wide, with tensor-core products of
    at least 16), and float32, bfloat16 or float16."""
    return dtype in _DTYPES and all(w in (16, 32) or (w > 0 and w % 64 == 0) for w in (K, V))


def padded_length(T: int) -> tuple[int, int]:
    """``(length, chunk)``: the kernel's length for ``T`` positions (16, 32, 64 or a multiple of
    :data:`CHUNK`) and the chunk it runs with."""
    if T > CHUNK // 2:
        return -(-T // CHUNK) * CHUNK, CHUNK
    L = max(16, 1 << (T - 1).bit_length())
    return L, L


def forget_preactivation(log_f: Tensor) -> Tensor:
    """``f~`` with ``logsigmoid(f~) = log f`` (float32), capped at :data:`NEUTRAL`."""
    log_f = log_f.to(torch.float32)
    return (log_f - torch.log(-torch.expm1(log_f))).clamp(max=NEUTRAL)


def _heads_first(t: Tensor, dtype: torch.dtype, pad: int, value: float = 0.0) -> Tensor:
    """``[b, T, H, ...] -> [b, H, T + pad, ...]`` in ``dtype``, padded at the end with ``value``."""
    t = t.to(dtype).transpose(1, 2)
    if pad:
        widths = (0, 0) * (t.dim() - 3) + (0, pad)
        t = F.pad(t, widths, value=value)
    return t.contiguous()


def mlstm_fused(kernel: Callable, q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, C0: Tensor,
                n0: Tensor, m0: Tensor, eps: float) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``(h [b, T, H, V] in v's dtype, (C~_T [b, H, K, V], n~_T [b, H, K], m_T [b, H]) float32)`` from
    ``q, k [b, T, H, K]``, ``v [b, T, H, V]``, ``log_i, log_f [b, T, H]`` and the carried state ``C0``,
    ``n0``, ``m0`` (probe's layout); ``kernel`` = ``mlstm_chunkwise__xl_chunk``."""
    T = q.shape[1]
    length, chunk = padded_length(T)
    pad, dtype, wide = length - T, v.dtype, torch.float32
    h, (C, n, m) = kernel(_heads_first(q, dtype, pad), _heads_first(k, dtype, pad), _heads_first(v, dtype, pad),
                          _heads_first(log_i, wide, pad, -NEUTRAL),
                          _heads_first(forget_preactivation(log_f), wide, pad, NEUTRAL),
                          c_initial=C0.to(wide).contiguous(), n_initial=n0.to(wide).contiguous(),
                          m_initial=m0.to(wide).unsqueeze(-1).contiguous(), return_last_states=True, eps=eps,
                          chunk_size=chunk, autocast_kernel_dtype=torch.float32)
    return h[:, :, :T].transpose(1, 2).to(dtype), (C.to(wide), n.to(wide), m.squeeze(-1).to(wide))
