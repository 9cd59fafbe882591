r"""The recurrent block of Griffin / RecurrentGemma: a gated branch times a conv + RG-LRU branch.

With ``W = lru_width`` channels in ``H`` heads of width ``W / H`` and a conv of width ``k``::

    g_t   = gelu_tanh(W_y h_t + b_y)                                (linear_y: the gate branch, [W])
    v_t   = W_x h_t + b_x                                           (linear_x, [W])
    x_t   = conv_b + sum_{j=0}^{k-1} w_j * v_{t-k+1+j}              (causal depthwise conv, width k)
    i_t   = sigmoid(blockdiag(W_i) x_t + b_i)                       (input gate, one block per head)
    r_t   = sigmoid(blockdiag(W_r) x_t + b_r)                       (recurrence gate)
    a_t   = exp(-c r_t softplus(p))                                 (decay: sigma(Lambda)^(c r_t), c = 8)
    s_t   = a_t s_{t-1} + sqrt(1 - a_t^2) (i_t x_t)                 (the RG-LRU, :mod:`probe.ops.rglru`)
    s_t   = i_t x_t                                                 (at a reset: a document's first token)
    out_t = W_out (g_t * s_t) + b_out                               (linear_out)

State (the memory after token ``t``):
    ``state``          s_t, ``[batch, W]`` (``hook_state``: ``[batch, pos, W]``); float32 in a
                       half-precision model (``WIDE_STATES``), as transformers keeps it.
    ``state_conv``     the last ``k - 1`` conv inputs v, ``[batch, k - 1, W]``.
    ``state_started``  ``[batch, 1]``: 1 once a token has been read (the next token continues the
                       document), 0 in the initial state: the next token starts a document and the
                       RG-LRU resets there (decay 0, no ``sqrt(1 - a^2)`` normalisation), as
                       transformers does at ``position_ids == 0``. Every token writes 1; writing 0 at
                       position t makes token t + 1 start afresh. The zero state is a fresh start.
Memory per position when every state is cached: ``W * k + 1`` numbers (recurrentgemma-2b: 2560 * 4
+ 1 = 10,241 per recurrent layer, 40 KiB in float32).

Hooks, in dependency order: ``hook_state_conv``, ``hook_state_started``, ``hook_input`` (x, the conv
output, ``[b, pos, W]``), ``hook_input_gate`` (i), ``hook_recurrent_gate`` (r), ``hook_decay`` (a),
``hook_output`` (the gate branch g), ``hook_state`` (s). TransformerLens 4 wraps RecurrentGemma
layers with residual hooks only (``hook_resid_pre`` / ``hook_resid_post``): it has no RG-LRU state;
``hook_state`` is what its Mamba bridge calls ``hook_ssm_state``, ``hook_state_conv`` its conv state.

The recurrence ``s_t = alpha_t s_{t-1} + beta_t`` (:func:`probe.ops.rglru.coefficients`) runs through
:func:`probe.ops.fused.hgrn.hgrn_scan`: on CUDA with flash-linear-attention installed, its fused
``chunk_hgrn`` (which returns every state, so reading ``hook_state`` costs nothing extra), else the
shared chunked linear scan; edits of ``hook_state`` take the latter and propagate through
:func:`probe.ops.linear_scan.force_states`. The block owns no norms: its block's ``ln1`` is
RecurrentGemma's ``temporal_pre_norm``.

Options: ``lru_width`` (``None``: ``d_model``), ``n_heads`` (``None``: the model's ``n_heads``),
``d_conv`` (4, RecurrentGemma's ``conv1d_width``), ``c`` (8.0).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation, apply_forcing
from probe.mixers.options import Int, Real
from probe.ops import conv_window
from probe.ops.fused.hgrn import hgrn_scan
from probe.ops.rglru import block_diagonal, coefficients, decay


class RGLRU(RecurrentMixer):
    NAME = "rglru"
    OPTIONS = {"lru_width": Int(None), "n_heads": Int(None), "d_conv": Int(4, low=2), "c": Real(8.0)}
    HOOKED = ("state_conv", "state_started", "input", "input_gate", "recurrent_gate", "decay", "output", "state")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        self.width = cfg.d_model if o["lru_width"] is None else o["lru_width"]
        self.n_heads = cfg.n_heads if o["n_heads"] is None else o["n_heads"]
        if self.width % self.n_heads:
            raise ConfigError(f"rglru lru_width={self.width} is not divisible by n_heads={self.n_heads}; set "
                              "mixer_options={'rglru': {'n_heads': ...}} to a divisor of the width.")
        self.d_conv, self.c = o["d_conv"], float(o["c"])
        W, H, w = self.width, self.n_heads, self.width // self.n_heads
        self.linear_x = nn.Linear(cfg.d_model, W)
        self.linear_y = nn.Linear(cfg.d_model, W)
        self.conv_weight = nn.Parameter(torch.empty(W, self.d_conv))  # tap j reads v_{t-k+1+j}
        self.conv_bias = nn.Parameter(torch.zeros(W))
        self.input_gate_weight = nn.Parameter(torch.empty(H, w, w))
        self.input_gate_bias = nn.Parameter(torch.zeros(H, w))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(H, w, w))
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(H, w))
        self.recurrent_param = nn.Parameter(torch.empty(W))
        self.linear_out = nn.Linear(W, cfg.d_model)
        self.init_special()

    def init_special(self) -> None:
        """Griffin's initialisation: ``a^c`` uniform in [0.9^2, 0.999^2] at ``r = 1``, gates and conv
        normal with variance 0.01 / fan-in, zero biases."""
        with torch.no_grad():
            w = self.width // self.n_heads
            for weight in (self.input_gate_weight, self.recurrent_gate_weight):
                weight.normal_(0.0, math.sqrt(0.01 / w))
            self.conv_weight.normal_(0.0, math.sqrt(0.01 / self.d_conv))
            for bias in (self.conv_bias, self.input_gate_bias, self.recurrent_gate_bias):
                bias.zero_()
            u = torch.empty(self.width).uniform_(0.9 ** 2, 0.999 ** 2)
            self.recurrent_param.copy_(torch.log(u.rsqrt() - 1))  # softplus(p) = -log(u) / 2

    def state_shapes(self):
        return {"state": (self.width,), "state_conv": (self.d_conv - 1, self.width), "state_started": (1,)}

    def _resets(self, x: Tensor, state: dict, forcing) -> tuple[Tensor, Tensor]:
        """``(started flags after each token [b, T, 1], the reset flag each token reads [b, T, 1])``."""
        after = apply_forcing("state_started", x.new_ones(x.shape[0], x.shape[1], 1), forcing)
        before = torch.cat([state["state_started"].to(after.dtype).unsqueeze(1), after[:, :-1]], dim=1)
        return after, 1 - before

    def compute(self, x, state, forcing, keep):
        pre, windows, conv_state = conv_window.depthwise_conv(self.linear_x(x), state["state_conv"],
                                                              self.conv_weight, self.conv_bias, forcing, keep)
        after, reset = self._resets(x, state, forcing)
        u = apply_forcing("input", pre, forcing)
        i = apply_forcing("input_gate", torch.sigmoid(block_diagonal(u, self.input_gate_weight,
                                                                     self.input_gate_bias)), forcing)
        r = apply_forcing("recurrent_gate", torch.sigmoid(block_diagonal(u, self.recurrent_gate_weight,
                                                                         self.recurrent_gate_bias)), forcing)
        a = apply_forcing("decay", decay(r, self.recurrent_param, self.c), forcing)
        gate = apply_forcing("output", F.gelu(self.linear_y(x), approximate="tanh"), forcing)
        wide = self.state_dtype("state", x.dtype)
        alpha, beta = coefficients(u.to(wide), i.to(wide), a.to(wide), reset.to(wide))
        states = hgrn_scan(alpha, beta, state["state"], forcing.get("state"), edited=bool(forcing))
        y = self.linear_out(states.to(x.dtype) * gate)
        values = {"state_started": after, "input": u, "input_gate": i, "recurrent_gate": r, "decay": a,
                  "output": gate, "state": states}
        if windows is not None:
            values["state_conv"] = windows
        final = {"state": states[:, -1], "state_conv": conv_state, "state_started": after[:, -1]}
        return Computation(y, values, final)
