r"""Mamba-1 selective state-space block (Gu & Dao 2023), computed as transformers' ``MambaMixer``.

With ``d_inner = expand * d_model``, ``N = d_state`` and ``R = dt_rank``::

    [x_t; z_t]  = W_in h_t                                   (in_proj, 2 d_inner, no bias by default)
    u_t         = silu(conv_bias + sum_{j=0}^{k-1} w_j * x_{t-k+1+j})   (causal depthwise conv, width k = d_conv)
    [r_t; B_t; C_t] = W_x u_t                                (x_proj: R + 2N, no bias)
    dt_t        = softplus(W_dt r_t + b_dt)                  ([d_inner])
    A           = -exp(A_log)                                ([d_inner, N])
    s_t         = exp(dt_t A) * s_{t-1} + (dt_t u_t) B_t^T   ([d_inner, N], elementwise decay)
    y_t         = (s_t C_t + D * u_t) * silu(z_t)
    out_t       = W_out y_t                                  (out_proj)

With ``inner_norms`` (Jamba), ``r_t``, ``B_t`` and ``C_t`` are each RMS-normalised (own weight,
epsilon the model's ``norm_eps``, in float32) right after ``x_proj``; ``hook_dt``, ``hook_B`` and
``hook_C`` show the values after the norms.

State (the memory after token ``t``):
    ``state``       s_t, ``[batch, d_inner, d_state]`` (``hook_state``: ``[batch, pos, d_inner, d_state]``)
    ``state_conv``  the last ``k - 1`` conv inputs x, ``[batch, d_conv - 1, d_inner]``
Memory per position when every state is cached: ``d_inner * (d_state + d_conv - 1)`` numbers
(mamba-130m: 1536 * 19 = 29,184 per layer, 114 KiB in float32 — ~2.7 GiB for 1024 tokens
and 24 layers; use ``run_with_cache(state_positions=...)`` or a names filter for less).

Hooks, in dependency order: ``hook_state_conv``, ``hook_input`` (u, ``[b, pos, d_inner]``),
``hook_dt`` (``[b, pos, d_inner]``), ``hook_B``, ``hook_C`` (``[b, pos, d_state]``),
``hook_output`` (the gate silu(z), ``[b, pos, d_inner]``), ``hook_state``.

Fast path (no state hook, no state edit, ``mixer.method == "auto"``): the selective scan is
fused step by step (:func:`probe.ops.selective_scan.selective_scan`: no ``[batch, pos, d_inner,
d_state]`` tensor is ever built, and its backward recomputes states from checkpoints), which is
how the zoo's Mamba trains on CPU. On CUDA with mamba-ssm and causal-conv1d installed, the forward
runs their fused ``selective_scan_fn`` and ``causal_conv1d_fn`` instead (:mod:`probe.ops.fused.mamba`:
the scan starts from zeros, so a carried state's free response is added; the conv only from a zero
window and when ``hook_state_conv`` is not hooked, :mod:`probe.ops.fused.conv`). When ``hook_state`` is only read without gradients (a state cache),
the same fused step writes every state straight into the cached tensor (:func:`probe.ops.selective_scan.selective_scan_states`; on a
GPU, where a step per position costs kernel launches, the blocked chunked scan below in long blocks,
:mod:`probe.ops.fused.capture`). When states are edited or gradients are
needed, every state is materialised block by block (:func:`probe.ops.linear_scan.linear_scan_blocked`) and
edits to it propagate through :func:`probe.ops.linear_scan.force_states`. Setting ``mixer.method`` to
"chunked", "sequential" or "loop" forces the blocked path with that form of the scan (for
benchmarks and tests).

Half precision: the scan (decays, increments, states ``s_t`` and ``y``) runs in float32 and the
carried ``state`` stays float32 (``WIDE_STATES``), as in the reference kernels; the block's
output returns in the input's dtype.

Options: ``d_state`` (16), ``d_conv`` (4), ``expand`` (2), ``dt_rank`` (``None``:
``ceil(d_model / 16)``), ``conv_bias`` (True), ``proj_bias`` (False), ``dt_min`` / ``dt_max``
(initial time-step range, 0.001 / 0.1), ``inner_norms`` (False; weights ``dt_norm`` ``[R]``,
``B_norm``, ``C_norm`` ``[N]``). A Mamba block in transformers has no MLP: the
converter :func:`probe.io.convert_mamba.mamba_from_hf` sets ``mlp_layout`` to ``"none"``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Flag, Int, Real
from probe.mixers.edits import Computation, apply_forcing
from probe.ops.fused import (capture_block, carried_state_response, depthwise_conv, fused_kernel,
                             selective_scan_fused)
from probe.ops.linear_scan import force_states, linear_scan_blocked
from probe.ops.selective_scan import selective_scan, selective_scan_states

#: positions per block of the selective scan's fast path
BLOCK = 128


class Mamba(RecurrentMixer):
    NAME = "mamba"
    OPTIONS = {"d_state": Int(16), "d_conv": Int(4), "expand": Int(2), "dt_rank": Int(None), "conv_bias": Flag(True),
               "proj_bias": Flag(False), "dt_min": Real(0.001), "dt_max": Real(0.1), "inner_norms": Flag(False)}
    HOOKED = ("state_conv", "input", "dt", "B", "C", "output", "state")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options  # each value checked by OPTIONS; only the relation of dt_min and dt_max is checked here
        self.d_state, self.d_conv = o["d_state"], o["d_conv"]
        self.d_inner = o["expand"] * cfg.d_model
        self.dt_rank = math.ceil(cfg.d_model / 16) if o["dt_rank"] is None else o["dt_rank"]
        if not 0 < o["dt_min"] <= o["dt_max"]:
            raise ConfigError(f"mamba needs 0 < dt_min <= dt_max, got {o['dt_min']!r}, {o['dt_max']!r}.")
        di, n = self.d_inner, self.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=o["proj_bias"])
        self.conv_weight = nn.Parameter(torch.empty(di, self.d_conv))  # tap j reads x_{t-k+1+j}
        self.conv_bias = nn.Parameter(torch.zeros(di)) if o["conv_bias"] else None
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, n))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=o["proj_bias"])
        if o["inner_norms"]:
            self.dt_norm, self.B_norm, self.C_norm = (nn.Parameter(torch.ones(w)) for w in (self.dt_rank, n, n))
        self.method = "auto"
        self.init_special()

    def init_special(self) -> None:
        """Mamba's initialisation: S4D-real ``A = -(1..N)``, ``D = 1``, dt in [dt_min, dt_max] (log-uniform)."""
        o = self.options
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
            self.D.fill_(1.0)
            bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d's default for a depthwise conv
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.zero_()
            std = self.dt_rank ** -0.5
            self.dt_proj.weight.uniform_(-std, std)
            lo, hi = math.log(o["dt_min"]), math.log(o["dt_max"])
            dt = torch.exp(torch.rand(self.d_inner) * (hi - lo) + lo).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            if o["inner_norms"]:
                for w in (self.dt_norm, self.B_norm, self.C_norm):
                    w.fill_(1.0)

    def state_shapes(self):
        shapes = {"state": (self.d_inner, self.d_state)}
        if self.d_conv > 1:
            shapes["state_conv"] = (self.d_conv - 1, self.d_inner)
        return shapes

    def hooked_names(self):
        return self.HOOKED if int(self.options["d_conv"]) > 1 else self.HOOKED[1:]

    def _conv(self, x: Tensor, state: dict, forcing, keep):
        """Conv pre-activations ``[b, T, d_inner]``, the windows (or None) and the final conv state."""
        if self.d_conv == 1:
            pre = x * self.conv_weight[:, 0]
            return (pre if self.conv_bias is None else pre + self.conv_bias), None, {}
        pre, W, final = depthwise_conv(x, state["state_conv"], self.conv_weight, self.conv_bias, forcing, keep)
        return pre, W, {"state_conv": final}

    def compute(self, x, state, forcing, keep):
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        pre, W, final = self._conv(xi, state, forcing, keep)
        u = apply_forcing("input", F.silu(pre), forcing)
        r, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.options["inner_norms"]:
            eps = self.cfg.norm_eps
            r, B, C = _rms(r, self.dt_norm, eps), _rms(B, self.B_norm, eps), _rms(C, self.C_norm, eps)
        dt = apply_forcing("dt", F.softplus(self.dt_proj(r)), forcing)
        B = apply_forcing("B", B, forcing)
        C = apply_forcing("C", C, forcing)
        gate = apply_forcing("output", F.silu(z), forcing)
        wide = self.state_dtype("state", x.dtype)
        A = -torch.exp(self.A_log.to(wide))
        dtu = dt.to(wide) * u.to(wide)
        dt_w, B_w, C_w = dt.to(wide), B.to(wide), C.to(wide)
        forced = forcing.get("state")

        def coefficients(t0, t1):
            a = torch.exp(dt_w[:, t0:t1, :, None] * A)  # [b, l, di, N]
            inc = dtu[:, t0:t1, :, None] * B_w[:, t0:t1, None, :]
            if forced is not None:
                a, inc = force_states(a, inc, forced[0][:, t0:t1], forced[1][:, t0:t1])
            return a, inc

        def readout(t0, t1, s):
            return torch.einsum("btdn,btn->btd", s, C_w[:, t0:t1])

        want = "state" in keep or forced is not None
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (dt_w, dtu, B_w, C_w, A))
        kernel = fused_kernel("selective_scan", x) if not want and self.method == "auto" else None
        states = None
        if kernel is not None:  # the library's scan starts from zeros: a carried state's response is added
            read, last = selective_scan_fused(kernel, u, dt, A, B, C, self.D)  # s_t C_t + D u_t
            if bool(state["state"].any()):
                free, carried = carried_state_response(dt, A, C, state["state"])
                read, last = read.to(wide) + free.to(wide), last + carried.to(last.dtype)
        else:
            if not want and self.method == "auto":
                ys, last = selective_scan(dt_w, A, B_w, C_w, dtu, state["state"])
            elif forced is None and not needs_grad and self.method == "auto" and not x.is_cuda:  # a state cache
                ys, last, states = selective_scan_states(dt_w, A, B_w, C_w, dtu, state["state"])
            else:  # on a GPU in whole chunks from boundary states (probe.ops.fused.capture)
                block = capture_block(x.shape[1], state["state"].numel(), x.is_cuda and self.method == "auto", BLOCK)
                ys, last, states = linear_scan_blocked(coefficients, x.shape[1], state["state"], readout,
                                                       block=block, keep_states=want, method=self.method)
            read = ys + self.D * u.to(wide)
        y = (read.to(wide) * gate.to(wide)).to(x.dtype)
        values = {"input": u, "dt": dt, "B": B, "C": C, "output": gate}
        if states is not None:
            values["state"] = states
        if W is not None:
            values["state_conv"] = W
        return Computation(self.out_proj(y), values, {"state": last, **final})


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, in at least float32 (Jamba's RMSNorm)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
