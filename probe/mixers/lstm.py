r"""LSTM mixer (Hochreiter & Schmidhuber 1997), hidden size ``d_model``, output ``y_t = h_t``.

::

    [i; f; g; o]_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    i, f, o = sigmoid(.),  g = tanh(.)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

State: ``state`` = c_t and ``state_h`` = h_t, each ``[batch, d_model]`` (per position
``[batch, pos, d_model]``). Hooks: ``hook_input`` (i), ``hook_forget`` (f),
``hook_candidate`` (g), ``hook_output`` (o), ``hook_state`` (c), ``hook_state_h`` (h).

Three paths, equal to float rounding (tested):

* no hook active: ``torch.nn.LSTM`` alone (without cuDNN in eval mode when autograd is on:
  cuDNN's RNN backward needs training mode);
* hooks that only read: ``torch.nn.LSTM`` gives every ``h_t``; all gates then follow in one
  batched matmul (``W_ih x_t + W_hh h_{t-1}``) and ``c`` from the *linear* recurrence
  ``c_t = f_t c_{t-1} + i_t g_t`` (:func:`probe.ops.linear_scan.linear_scan`), so caching costs little;
* an edit of any gate or state: a Python loop from the first edited position on, starting
  from the unedited states before it, that honours every edit (see
  :mod:`probe.mixers.edits` for the nonlinear-recurrence caveat).

Half precision: the cell runs with float32 copies of the weights and ``h``, ``c`` (and the gates)
are float32, the carried ``state`` and ``state_h`` too (``WIDE_STATES``), as cuDNN accumulates; a
bfloat16 ``c`` loses a slow memory's increments. Hooks show float32; the output returns in the
input's dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation
from probe.ops.linear_scan import linear_scan

NAMES = ("input", "forget", "candidate", "output", "state", "state_h")


class LSTM(RecurrentMixer):
    NAME = "lstm"
    nonlinear_state = True
    HOOKED = ("input", "forget", "candidate", "output", "state", "state_h")
    WIDE_STATES = ("state", "state_h")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, batch_first=True)

    def init_special(self) -> None:
        d = self.cfg.d_model
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if name.startswith("weight"):
                    nn.init.uniform_(p, -d ** -0.5, d ** -0.5)
                else:
                    p.zero_()
            self.lstm.bias_ih_l0[d : 2 * d].fill_(1.0)  # forget-gate bias

    def state_shapes(self):
        return {"state": (self.cfg.d_model,), "state_h": (self.cfg.d_model,)}

    def compute(self, x, state, forcing, keep):
        c0, h0 = state["state"], state["state_h"]
        h_all, (hT, cT) = self._torch_lstm(x, h0, c0)
        if not forcing and not keep:
            return Computation(h_all.to(x.dtype), {}, {"state": cT[0], "state_h": hT[0]})
        values = self._reconstruct(x, h_all, c0, h0)
        if not forcing:
            return Computation(h_all.to(x.dtype), values, {"state": cT[0], "state_h": hT[0]})
        start = min(int(mask.flatten(2).any(-1).any(0).nonzero()[0]) for mask, _ in forcing.values())
        if start > 0:
            c0, h0 = values["state"][:, start - 1], values["state_h"][:, start - 1]
        tail = self._loop(x[:, start:], c0, h0, {k: (m[:, start:], v[:, start:]) for k, (m, v) in forcing.items()})
        values = {k: torch.cat([values[k][:, :start], tail[k]], dim=1) for k in NAMES}
        h = values["state_h"]
        return Computation(h.to(x.dtype), values, {"state": values["state"][:, -1], "state_h": h[:, -1]})

    def _torch_lstm(self, x, h0, c0):
        """``torch.nn.LSTM`` from ``(h0, c0)``, in their dtype (the weights cast when the model is in
        half precision). In eval mode with autograd on it runs without cuDNN: cuDNN's RNN backward
        exists only in training mode, PyTorch's own LSTM kernel differentiates in both (the gradient
        methods run the model in eval mode)."""
        state = (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous())
        if not x.is_cuda or self.training or not torch.is_grad_enabled():
            return self._run_lstm(x, state)
        cudnn = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False  # this flag alone: benchmark / deterministic / TF32 stay the user's
        try:
            return self._run_lstm(x, state)
        finally:
            torch.backends.cudnn.enabled = cudnn

    def _run_lstm(self, x, state):
        """``self.lstm(x, state)``; with float32 weights and input when ``state`` is wider than the model."""
        if state[0].dtype == self.lstm.weight_ih_l0.dtype:
            return self.lstm(x, state)
        weights = self._weights(state[0].dtype)
        out, h, c = torch.lstm(x.to(state[0].dtype), state, weights, True, 1, 0.0, self.training, False, True)
        return out, (h, c)

    def _weights(self, dtype):
        """``[W_ih, W_hh, b_ih, b_hh]`` in ``dtype`` (the states' dtype)."""
        lstm = self.lstm
        return [p.to(dtype) for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]

    def _gates(self, pre):
        i, f, g, o = pre.chunk(4, dim=-1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)

    def _reconstruct(self, x, h_all, c0, h0):
        """Every gate and ``c`` from the ``h_t`` that torch.nn.LSTM returned, without a loop."""
        W_ih, W_hh, b_ih, b_hh = self._weights(h0.dtype)
        h_prev = torch.cat([h0.unsqueeze(1), h_all[:, :-1]], dim=1)
        pre = x.to(h0.dtype) @ W_ih.T + h_prev @ W_hh.T + b_ih + b_hh
        i, f, g, o = self._gates(pre)
        c = linear_scan(f, i * g, c0)
        return dict(zip(NAMES, (i, f, g, o, c, h_all)))

    def _loop(self, x, c, h, forcing):
        """The recurrence one position at a time, with forced gates / states. Returns ``{name: [b, T, d]}``."""
        W_ih, W_hh, b_ih, b_hh = self._weights(h.dtype)
        xw = x.to(h.dtype) @ W_ih.T + b_ih + b_hh  # [b, T, 4d]
        out = {n: [] for n in NAMES}

        def force(name, value, t):
            if name not in forcing:
                return value
            mask, forced = forcing[name]
            return torch.where(mask[:, t], forced[:, t].to(value.dtype), value)

        # unbind, not xw[:, t]: indexing would make backward allocate and add a full-size gradient per step
        for t, xw_t in enumerate(xw.unbind(1)):
            i, f, g, o = self._gates(xw_t + h @ W_hh.T)
            i = force("input", i, t)
            f = force("forget", f, t)
            g = force("candidate", g, t)
            o = force("output", o, t)
            c = force("state", f * c + i * g, t)
            h = force("state_h", o * torch.tanh(c), t)
            for n, v in zip(NAMES, (i, f, g, o, c, h)):
                out[n].append(v)
        return {n: torch.stack(v, dim=1) for n, v in out.items()}
