r"""The sLSTM recurrence through xlstm's compiled CUDA cell (its ``backend="cuda"``).

The recurrence is :class:`probe.mixers.slstm.SLSTM`'s, per head (``H`` heads of width ``dh``,
``d = H dh``), from the input projections ``wx_t = [i; f; z; o]`` (bias included) and the
block-diagonal recurrent weights ``R_g`` (gate ``g``, ``[dh out, dh in]`` per head)::

    [i~; f~; z~; o~]_t = wx_t + R h_{t-1}
    m_t = max(m_{t-1} + logsigmoid(f~_t), i~_t)
    c~_t = exp(logsigmoid(f~_t) + m_{t-1} - m_t) c~_{t-1} + exp(i~_t - m_t) tanh(z~_t)   (n~_t alike with tanh(z~) = 1)
    h_t = sigmoid(o~_t) c~_t / n~_t

xlstm's call, one C++ loop over positions (a batched matrix product and a pointwise kernel per step)::

    function = sLSTMCellFuncGenerator(training, config)        # compiled once per (d, H) by torch's cpp_extension
    s = function.apply(training, x, s0, R, b)
    x: [T, b, H * 4 * dh] (position, batch, head, gate i f z o, channel)     b: [H * 4 * dh] (head, gate, channel)
    R: [H, dh in, 4 * dh (gate, out)]      s0: [4, b, d] (h, c~, n~, m)      s: [4, T + 1, b, d] (s[:, 0] = s0)

It computes the same cell: the same gates, the stabiliser ``m`` carried in and out as probe stores it,
``exp(.)`` of the stabilised gates capped at 1 (the exponents are <= 0: probe clamps them at 0). Its
one special case, a zero normaliser ``n~ = 0`` meaning an empty memory (``m_t = i~_t``), is what
probe's empty state (``m = -1e38``) gives too. The bias goes inside ``wx`` (added where the PyTorch
path adds it) and ``b`` is zero. xlstm builds it with ``--use_fast_math`` (its exp, log and tanh are
approximations within a few float32 ulp). ``s`` holds the state after every position, so hooks that
read states cost no extra pass.

dtypes: the kernel's states share one type with its recurrent product (``blas<R>::gemmsb`` reads them
as ``R``'s type), so the cell runs in float32 for every model dtype, keeping ``c~, n~, m`` float32 as
probe does; ``h`` comes back in the model's dtype. In a bfloat16 model the PyTorch path rounds ``h``
to bfloat16 at every step before the recurrent product, the kernel does not: the two differ by
bfloat16 rounding. The build needs a CUDA toolkit (nvcc) and ninja on the machine; a build that fails
is said once, in a warning, and the PyTorch form runs.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

__all__ = ["slstm_function", "slstm_fused", "NAMES"]

#: the cell's states in the order of its state tensor ``s``: probe's names for h, c~, n~, m
NAMES = ("state_h", "state", "state_n", "state_m")

_functions: dict[tuple, object | None] = {}


def slstm_function(generator: Callable, d: int, heads: int):
    """xlstm's compiled cell for width ``d`` and ``heads`` heads in float32 (built on first use, then
    cached), or ``None`` where the build failed; ``generator`` = ``sLSTMCellFuncGenerator``."""
    key = (generator, d, heads)
    if key not in _functions:
        from xlstm.blocks.slstm.cell import sLSTMCellConfig  # the library the generator came from

        config = sLSTMCellConfig(hidden_size=d, num_heads=heads, function="slstm", backend="cuda", dtype="float32",
                                 dtype_b="float32", enable_automatic_mixed_precision=False)
        try:
            _functions[key] = generator(False, config)
        except Exception as exc:  # no CUDA toolkit or compiler: the PyTorch form runs
            warnings.warn(f"probe: xlstm's sLSTM CUDA kernel did not build ({type(exc).__name__}: {exc}); sLSTM runs "
                          "its slower PyTorch loop on CUDA. The build needs the CUDA toolkit (nvcc) and ninja.",
                          RuntimeWarning, stacklevel=2)
            _functions[key] = None
    return _functions[key]


def slstm_fused(function, wx: Tensor, R: Tensor, state: dict[str, Tensor],
                dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(every state, final state)`` from ``wx [b, T, 4, H, dh]`` (bias included), ``R [4, H, dh out,
    dh in]`` and probe's carried ``state`` (``[b, d]`` each): ``{"state_h": h [b, T, d] in dtype,
    "state", "state_n", "state_m": [b, T, d] float32}`` after each position, and the same names
    ``[b, d]`` after the last; ``function`` from :func:`slstm_function`."""
    b, T, _, H, dh = wx.shape
    wide = torch.float32
    x = wx.to(wide).permute(1, 0, 3, 2, 4).reshape(T, b, 4 * H * dh).contiguous()
    R_k = R.to(wide).permute(1, 3, 0, 2).reshape(H, dh, 4 * dh).contiguous()
    s0 = torch.stack([state[k].to(wide) for k in NAMES]).contiguous()
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (x, R_k, s0))
    s = function.apply(training, x, s0, R_k, x.new_zeros(4 * H * dh))
    steps = {k: s[j, 1:].transpose(0, 1) for j, k in enumerate(NAMES)}
    steps["state_h"] = steps["state_h"].to(dtype)
    return steps, {k: v[:, -1] for k, v in steps.items()}
