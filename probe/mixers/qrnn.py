r"""QRNN: quasi-recurrent layer (Bradbury et al. 2017), as used by Lindenmaier et al. 2025.

A causal convolution of width ``k`` over the input gives, for every position at once::

    [z_t; f_t; o_t] = sum_{j=0}^{k-1} W_j x_{t-k+1+j} + b
    z_t = tanh(z_t),  f_t = sigmoid(f_t),  o_t = sigmoid(o_t)

then fo-pooling, a linear recurrence run by :func:`probe.ops.fused.hgrn.hgrn_scan` (on CUDA with
flash-linear-attention installed its fused ``chunk_hgrn``, which returns every state; else, and
whenever ``hook_state`` is edited, :mod:`probe.ops.linear_scan`)::

    c_t = f_t * c_{t-1} + (1 - f_t) * z_t
    h_t = o_t * c_t
    y_t = W_out h_t

State (the memory after token ``t``):
    ``state``       c_t, ``[batch, d_hidden]``  (``hook_state``: ``[batch, pos, d_hidden]``)
    ``state_conv``  the last ``k - 1`` inputs, ``[batch, k-1, d_model]`` (only when ``k > 1``)

Hooks: ``hook_state_conv``, ``hook_z``, ``hook_forget``, ``hook_output``, ``hook_state``.

Half precision: the gates (from the convolution's output), the scan and ``c`` run in float32 and
the carried ``state`` stays float32 (``WIDE_STATES``), as a reference kernel keeps its
accumulator: a float16/bfloat16 ``f`` near 1 and a ``c`` that adds ``(1 - f) z`` to itself lose
a slow memory's increments. Their hooks show float32; the output returns in the input's dtype.
Options: ``window`` (k, default 2), ``d_hidden`` (default ``d_model``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Int
from probe.mixers.edits import Computation, Forcing, apply_forcing
from probe.ops import conv_window
from probe.ops.fused.hgrn import hgrn_scan


class QRNN(RecurrentMixer):
    NAME = "qrnn"
    OPTIONS = {"window": Int(2), "d_hidden": Int(None)}
    HOOKED = ("state_conv", "z", "forget", "output", "state")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        window, d_hidden = self.options["window"], self.options["d_hidden"]  # checked by OPTIONS
        self.k = window
        self.d_hidden = d_hidden or cfg.d_model
        # conv weight [3 * d_hidden, d_model, k]: kernel tap j reads x_{t-k+1+j}
        self.W_conv = nn.Parameter(torch.empty(3 * self.d_hidden, cfg.d_model, self.k))
        self.b_conv = nn.Parameter(torch.zeros(3 * self.d_hidden))
        self.out_proj = nn.Linear(self.d_hidden, cfg.d_model, bias=False)
        nn.init.normal_(self.W_conv, std=cfg.init_std)

    def init_special(self) -> None:
        with torch.no_grad():  # forget gate bias +1: remember by default
            self.b_conv[self.d_hidden : 2 * self.d_hidden].fill_(1.0)

    def hooked_names(self):
        return self.HOOKED if int(self.options["window"]) > 1 else self.HOOKED[1:]

    def state_shapes(self):
        shapes = {"state": (self.d_hidden,)}
        if self.k > 1:
            shapes["state_conv"] = (self.k - 1, self.cfg.d_model)
        return shapes

    def _gate_inputs(self, x: Tensor, state: dict, forcing: Forcing, keep: set):
        """Pre-activations ``[batch, T, 3 d_hidden]``, conv windows (or None) and the final conv state."""
        if self.k == 1:
            return F.linear(x, self.W_conv[:, :, 0], self.b_conv), None, {}
        init = state["state_conv"]
        if "state_conv" in keep or "state_conv" in forcing:
            W = conv_window.windows(x, init)
            if "state_conv" in forcing:
                W = conv_window.force_windows(W, x, init, *forcing["state_conv"])
            taps = conv_window.conv_inputs(conv_window.previous_windows(W, init), x)  # [b, T, k, d]
            pre = torch.einsum("btkd,odk->bto", taps, self.W_conv) + self.b_conv
            return pre, W, {"state_conv": W[:, -1]}
        padded = torch.cat([init, x], dim=1)  # [b, k-1+T, d]
        pre = F.conv1d(padded.transpose(1, 2), self.W_conv, self.b_conv).transpose(1, 2)
        return pre, None, {"state_conv": padded[:, -(self.k - 1):]}

    def compute(self, x, state, forcing, keep):
        pre, W, final = self._gate_inputs(x, state, forcing, keep)
        z_pre, f_pre, o_pre = pre.to(self.state_dtype("state", x.dtype)).split(self.d_hidden, dim=-1)
        z = apply_forcing("z", torch.tanh(z_pre), forcing)
        f = apply_forcing("forget", torch.sigmoid(f_pre), forcing)
        o = apply_forcing("output", torch.sigmoid(o_pre), forcing)
        c = hgrn_scan(f, (1 - f) * z, state["state"], forcing.get("state"), edited=bool(forcing))
        y = self.out_proj((o * c).to(x.dtype))
        values = {"z": z, "forget": f, "output": o, "state": c}
        if W is not None:
            values["state_conv"] = W
        return Computation(y, values, {"state": c[:, -1], **final})
