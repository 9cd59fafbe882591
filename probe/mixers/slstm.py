r"""sLSTM: the scalar-memory cell of xLSTM (Beck et al. 2024), in the layer design of the paper.

``H`` heads of width ``dh = d_model / H``; every projection is block-diagonal per head
(a head reads only its own slice), recurrent weights included. From the normalised input::

    u_t = silu(conv(x)_t)                   # causal depthwise conv of width k (option conv; 0: u = x)
    [i~; f~]_t = W_{i,f} u_t + R_{i,f} h_{t-1} + b_{i,f}
    [z~; o~]_t = W_{z,o} x_t + R_{z,o} h_{t-1} + b_{z,o}
    log i_t = i~_t                (exponential input gate)
    log f_t = logsigmoid(f~_t)    (sigmoid forget gate, in log space)
    z_t = tanh(z~_t),  o_t = sigmoid(o~_t)

    c_t = f_t c_{t-1} + i_t z_t,      n_t = f_t n_{t-1} + i_t,      h_t = o_t c_t / n_t
    y_t = groupnorm(h_t)              # LayerNorm over each head's dh channels, weight only

stored stabilised (:mod:`probe.ops.max_scan`): ``m_t = max(m_{t-1} + log f_t, log i_t)``,
``c~_t = exp(log f_t + m_{t-1} - m_t) c~_{t-1} + exp(log i_t - m_t) z_t`` (``n~`` alike with
``z = 1``), ``h_t = o_t c~_t / n~_t``. An empty memory has ``c = n = 0`` and ``m = -1e38``
(log 0, kept finite), so ``n~_t >= 1`` after the first token.

The gates read ``h_{t-1}``, so the recurrence is nonlinear and runs one position at a time
(the sequential definition is the implementation). Fast path (no edit of the cell's gates or
states): on CUDA with xlstm installed, its compiled CUDA cell runs the loop from the carried state
(:mod:`probe.ops.fused.slstm`); it returns every state, which hooks read, and hooked gates are
recomputed from them at all positions at once.

State after token ``t`` (per position ``[batch, pos, d_model]``): ``state`` (c~), ``state_n``
(n~), ``state_m`` (m), ``state_h`` (h), and ``state_conv`` (the last ``k - 1`` inputs,
``[batch, k-1, d_model]``) when ``conv > 1``.

Hooks (dependency order): ``hook_state_conv``, ``hook_input`` (log i), ``hook_forget``
(log f), ``hook_candidate`` (z), ``hook_output`` (o), ``hook_state_m``, ``hook_state``,
``hook_state_n``, ``hook_state_h``. An edited ``m_t`` is the stabiliser carried to step
``t + 1`` (``c~_t``, ``n~_t`` keep their scale). Gate hooks after an edited state see pre-edit
values (see :mod:`probe.mixers.edits`).

Half precision: the gates and the cell (``c~, n~, m``, kept float32 between calls:
``WIDE_STATES``) run in float32, as in the reference kernels, so their hooks show float32;
``h`` (what the next step's recurrent product reads) and the output follow the input's dtype.

Options: ``conv`` (kernel width k, default 4; 0 or 1 disables the conv), ``norm_eps`` (1e-5),
``heads`` (default ``n_heads``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Int, Real
from probe.mixers.edits import Computation
from probe.ops import conv_window
from probe.ops.fused import fused_kernel
from probe.ops.fused.slstm import slstm_function, slstm_fused
from probe.ops.max_scan import empty_log

GATES = ("i", "f", "z", "o")
#: the input dtypes xlstm's compiled cell takes (it runs in float32)
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class SLSTM(RecurrentMixer):
    NAME = "slstm"
    nonlinear_state = True
    OPTIONS = {"conv": Int(4, low=0, optional=True), "norm_eps": Real(1e-5), "heads": Int(None)}
    HOOKED = ("state_conv", "input", "forget", "candidate", "output", "state_m", "state", "state_n", "state_h")
    WIDE_STATES = ("state", "state_n", "state_m")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        d, H = cfg.d_model, int(self.options["heads"] or cfg.n_heads)
        if d % H:
            raise ConfigError(f"slstm needs d_model ({d}) divisible by its number of heads ({H}).")
        self.n_heads, self.d_head = H, d // H
        self.k = int(self.options["conv"] or 0)
        if self.k > 1:
            self.W_conv = nn.Parameter(torch.empty(d, self.k))  # tap j reads x_{t-k+1+j}
            self.b_conv = nn.Parameter(torch.zeros(d))
        dh = self.d_head
        self.W_in = nn.Parameter(torch.empty(4, H, dh, dh))  # gate (i f z o), head, out, in
        self.R = nn.Parameter(torch.zeros(4, H, dh, dh))  # recurrent, same layout
        self.bias = nn.Parameter(torch.zeros(4, d))
        self.norm_w = nn.Parameter(torch.ones(d))
        nn.init.normal_(self.W_in, std=cfg.init_std)
        if self.k > 1:
            nn.init.normal_(self.W_conv, std=cfg.init_std)

    def init_special(self) -> None:
        with torch.no_grad():  # forget-gate bias spread over (3, 6): long memory by default
            self.bias[1].copy_(torch.linspace(3.0, 6.0, self.d_head).repeat(self.n_heads))

    def hooked_names(self):
        return self.HOOKED if int(self.options["conv"] or 0) > 1 else self.HOOKED[1:]

    def state_shapes(self):
        d = self.cfg.d_model
        shapes = {"state": (d,), "state_n": (d,), "state_m": (d,), "state_h": (d,)}
        if self.k > 1:
            shapes["state_conv"] = (self.k - 1, d)
        return shapes

    def initial_state(self, batch, device=None, dtype=None):
        state = super().initial_state(batch, device, dtype)
        state["state_m"].fill_(empty_log(state["state_m"].dtype))
        return state

    def _headwise(self, x: Tensor, W: Tensor) -> Tensor:
        """``[b, T, d] -> [b, T, G, d]`` with the block-diagonal weights ``W [G, H, dh, dh]``."""
        b, T, _ = x.shape
        out = torch.einsum("bthi,ghoi->btgho", x.view(b, T, self.n_heads, self.d_head), W)
        return out.reshape(b, T, W.shape[0], -1)

    def compute(self, x, state, forcing, keep):
        b, T, d = x.shape
        final, values = {}, {}
        u = x
        if self.k > 1:
            pre, W, final["state_conv"] = conv_window.depthwise_conv(x, state["state_conv"], self.W_conv, self.b_conv,
                                                                     forcing, keep)
            u = F.silu(pre)
            if W is not None:
                values["state_conv"] = W
        wx = torch.cat([self._headwise(u, self.W_in[:2]), self._headwise(x, self.W_in[2:])], dim=2) + self.bias
        if (function := self._fused(x, forcing)) is not None:
            steps, cell = slstm_fused(function, wx.view(b, T, 4, self.n_heads, self.d_head), self.R, state, x.dtype)
            H_all = steps["state_h"]
            values.update({k: v for k, v in steps.items() if k in keep})
            values.update(self._gates(wx, torch.cat([state["state_h"].unsqueeze(1), H_all[:, :-1]], 1), keep))
            final.update(cell)
        else:
            H_all, cell_values, cell = self._loop(x, wx, state, forcing, keep)
            values.update(cell_values)
            final.update(cell)
        y = F.layer_norm(H_all.view(b, T, self.n_heads, self.d_head), (self.d_head,), eps=self.options["norm_eps"])
        return Computation(y.reshape(b, T, d) * self.norm_w, values, final)

    def _fused(self, x: Tensor, forcing):
        """xlstm's compiled cell for this forward, or ``None`` (the PyTorch loop): no edit of the cell's
        gates or states (hooks that read them are served from the kernel's states), a float32, bfloat16
        or float16 input."""
        if set(self.HOOKED[1:]) & set(forcing) or x.shape[1] == 0 or x.dtype not in FUSED_DTYPES:
            return None
        generator = fused_kernel("slstm_cell", x)
        return None if generator is None else slstm_function(generator, self.cfg.d_model, self.n_heads)

    def _gates(self, wx: Tensor, h_prev: Tensor, keep) -> dict[str, Tensor]:
        """The gate values in ``keep`` at every position at once from ``h_{t-1}`` (``h_prev [b, T, d]``),
        as the loop computes them: ``raw = wx + R h_{t-1}`` in the input's dtype, then float32."""
        names = [nm for nm in ("input", "forget", "candidate", "output") if nm in keep]
        if not names:
            return {}
        raw = (wx + self._headwise(h_prev, self.R)).float()  # [b, T, gate, d]
        gates = {"input": raw[:, :, 0], "forget": F.logsigmoid(raw[:, :, 1]), "candidate": torch.tanh(raw[:, :, 2]),
                 "output": torch.sigmoid(raw[:, :, 3])}
        return {nm: gates[nm] for nm in names}

    def _loop(self, x: Tensor, wx: Tensor, state, forcing, keep):
        """The cell one position at a time: ``(h [b, T, d], per-position values in keep, final cell state)``."""
        b, T, d = x.shape
        # The loop runs head-major ([H, b, ...]): the recurrent product is then one bmm per step,
        # h [H, b, dh] @ R_cat [H, dh, 4 dh] -> [H, b, 4 dh], with no copy of R per batch element
        # (a [b, H, 1, dh] @ [H, dh, 4 dh] broadcast expands R every step) and no transpose of its result.
        H, dh = self.n_heads, self.d_head
        R_cat = self.R.permute(1, 3, 0, 2).reshape(H, dh, 4 * dh)  # [head, in, (gate, out)]
        wx = wx.view(b, T, 4, H, dh).permute(1, 3, 0, 2, 4).contiguous()  # [T, H, b, 4, dh]

        def head_major(v: Tensor) -> Tensor:  # [b, d] -> [H, b, dh]
            return v.view(b, H, dh).transpose(0, 1)

        def batch_major(v: Tensor) -> Tensor:  # [H, b, dh] -> [b, d]
            return v.transpose(0, 1).reshape(b, d)

        def batch_major_steps(steps: list[Tensor]) -> Tensor:  # T x [H, b, dh] -> [b, T, d]
            return torch.stack(steps, dim=2).permute(1, 2, 0, 3).reshape(b, T, d)

        c, n, m, h = (head_major(state[k]).contiguous() for k in ("state", "state_n", "state_m", "state_h"))
        names = ("input", "forget", "candidate", "output", "state_m", "state", "state_n", "state_h")
        record = [nm for nm in names if nm in keep]
        out = {nm: [] for nm in record}
        hs = []

        def force(name, value, t):
            if name not in forcing:
                return value
            mask, forced = forcing[name]
            return torch.where(head_major(mask[:, t]), head_major(forced[:, t]).to(value.dtype), value)

        # unbind, not wx[t]: indexing would make backward allocate and add a full-size gradient per step
        for t, wx_t in enumerate(wx.unbind(0)):
            raw = (wx_t + torch.bmm(h, R_cat).view(H, b, 4, dh)).to(c.dtype)  # [H, b, gate, dh], wide
            log_i = force("input", raw[:, :, 0], t)
            log_f = force("forget", F.logsigmoid(raw[:, :, 1]), t)
            z = force("candidate", torch.tanh(raw[:, :, 2]), t)
            o = force("output", torch.sigmoid(raw[:, :, 3]), t)
            m_new = torch.maximum(m + log_f, log_i)
            f_s = torch.exp((log_f + m - m_new).clamp(max=0.0))
            i_s = torch.exp(log_i - m_new)
            m = force("state_m", m_new, t)
            c = force("state", f_s * c + i_s * z, t)
            n = force("state_n", f_s * n + i_s, t)
            h = force("state_h", (o * c / n).to(x.dtype), t)
            hs.append(h)
            step = {"input": log_i, "forget": log_f, "candidate": z, "output": o, "state_m": m, "state": c,
                    "state_n": n, "state_h": h}
            for nm in record:
                out[nm].append(step[nm])
        values = {nm: batch_major_steps(v) for nm, v in out.items()}
        final = {k: batch_major(v) for k, v in (("state", c), ("state_n", n), ("state_m", m), ("state_h", h))}
        return batch_major_steps(hs), values, final
