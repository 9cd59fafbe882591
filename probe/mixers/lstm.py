r"""LSTM mixer (Hochreiter & Schmidhuber 1997), hidden size ``d_model``, output ``y_t = h_t``.

::

    [i; f; g; o]_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    i, f, o = sigmoid(.),  g = tanh(.)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

State: ``state`` = c_t and ``state_h`` = h_t, each ``[batch, d_model]`` (per position
``[batch, pos, d_model]``). Hooks: ``hook_input`` (i), ``hook_forget`` (f),
``hook_candidate`` (g), ``hook_output`` (o), ``hook_state`` (c), ``hook_state_h`` (h).

Fast path: ``torch.nn.LSTM`` when no hook of this mixer is active; otherwise a Python loop
over positions (same weights, same gate order i, f, g, o) that honours edits of any
gate or state (see :mod:`probe.mixers.edits` for the nonlinear-recurrence caveat).
"""
from __future__ import annotations

import torch
from torch import nn

from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation


class LSTM(RecurrentMixer):
    NAME = "lstm"
    HOOKED = ("input", "forget", "candidate", "output", "state", "state_h")

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
        if not forcing and not keep:
            y, (hT, cT) = self.lstm(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
            return Computation(y, {}, {"state": cT[0], "state_h": hT[0]})
        return self._loop(x, c0, h0, forcing)

    def _loop(self, x, c, h, forcing):
        """The recurrence one position at a time, with forced gates / states."""
        lstm = self.lstm
        xw = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0  # [b, T, 4d]
        names = ("input", "forget", "candidate", "output", "state", "state_h")
        out = {n: [] for n in names}

        def force(name, value, t):
            if name not in forcing:
                return value
            mask, forced = forcing[name]
            return torch.where(mask[:, t], forced[:, t].to(value.dtype), value)

        for t in range(x.shape[1]):
            gates = xw[:, t] + h @ lstm.weight_hh_l0.T
            i, f, g, o = gates.chunk(4, dim=-1)
            i = force("input", torch.sigmoid(i), t)
            f = force("forget", torch.sigmoid(f), t)
            g = force("candidate", torch.tanh(g), t)
            o = force("output", torch.sigmoid(o), t)
            c = force("state", f * c + i * g, t)
            h = force("state_h", o * torch.tanh(c), t)
            for n, v in zip(names, (i, f, g, o, c, h)):
                out[n].append(v)
        values = {n: torch.stack(v, dim=1) for n, v in out.items()}
        return Computation(values["state_h"], values, {"state": c, "state_h": h})
