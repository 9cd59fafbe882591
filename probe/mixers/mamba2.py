r"""Mamba-2 block (Dao & Gu 2024, state-space duality), computed as transformers' ``Mamba2Mixer``.

With ``d_inner = expand * d_model`` split into ``H = d_inner / P`` heads of width ``P = head_dim``,
``G = n_groups`` groups of ``B, C`` (head ``h`` reads group ``g(h) = h // (H / G)``), ``N = d_state``
and the conv width ``k = d_conv``::

    [z_t; xBC_t; r_t] = W_in h_t                  (in_proj: d_inner + d_inner + 2 G N + H)
    [x_t; B_t; C_t]   = silu(conv_bias + sum_{j<k} w_j * xBC_{t-k+1+j})   (causal depthwise conv)
    dt_t   = clamp(softplus(r_t + dt_bias), dt_limit_min, dt_limit_max)   ([H])
    A      = -exp(A_log)                                                  ([H], one decay rate per head)
    S_t[h] = exp(dt_t[h] A[h]) S_{t-1}[h] + dt_t[h] x_t[h] B_t[g(h)]^T     ([P, N] per head)
    y_t[h] = S_t[h] C_t[g(h)] + D[h] x_t[h]                               ([P] per head)
    out_t  = W_out (w_norm * GroupRMSNorm_G(y_t * silu(z_t)))             (gated RMSNorm, then out_proj)

The gated RMSNorm normalises each of the ``G`` groups of ``d_inner / G`` channels of
``y * silu(z)`` separately (epsilon: the model's ``norm_eps``, as transformers uses
``layer_norm_epsilon`` for it), in float32. Option ``norm`` picks the readout before ``W_out``:
``"gated"`` (above, Mamba-2), ``"before_gate"`` (``w_norm * GroupRMSNorm_G(y_t) * silu(z_t)``,
Falcon-H1's ``mamba_norm_before_gate``) or ``"none"`` (``y_t * silu(z_t)``, no norm weight:
Falcon-H1's ``mamba_rms_norm=False``).

State (the memory after token ``t``):
    ``state``       S_t, ``[batch, H, P, N]`` (``hook_state``: ``[batch, pos, H, P, N]``)
    ``state_conv``  the last ``k - 1`` conv inputs xBC, ``[batch, d_conv - 1, d_inner + 2 G N]``
Memory per position when every state is cached: ``d_inner N + (k - 1)(d_inner + 2 G N)`` numbers
(mamba2-130m: d_model 768, 24 heads of 64, N = 128, G = 1, k = 4: 196,608 + 5,376 = 201,984 per
layer, 789 KiB in float32 — ~18.5 GiB for 1024 tokens and 24 layers; use
``run_with_cache(state_positions=...)`` or a names filter for less).

Hooks, in dependency order: ``hook_state_conv``, ``hook_input`` (x, ``[b, pos, H, P]``),
``hook_B``, ``hook_C`` (``[b, pos, G, N]``), ``hook_dt`` (``[b, pos, H]``), ``hook_output`` (the
gate silu(z), ``[b, pos, d_inner]``), ``hook_state``, ``hook_y`` (y, ``[b, pos, H, P]``: the scan's
output with the D skip, before the gated norm). TransformerLens 4 (``SSM2MixerBridge``) names:
``hook_state`` is its ``mixer.hook_ssm_state`` (same layout; TL's is the post-scan trajectory, so an
edit there changes only that position's readout, while ours propagates); ``hook_input``, ``hook_B``
and ``hook_C`` are the three parts of its ``conv1d.hook_out``; ``hook_y`` is its
``inner_norm.hook_in``; TL's ``hook_ssm_write`` is ``dt_t x_t B_t^T`` here (not hooked).

Fast path (no state hook, no state edit, ``mixer.method == "auto"``): the chunked SSD form
:func:`probe.ops.ssd.ssd_chunked` (chunks of ``chunk`` positions; no per-position state is
built); on CUDA with mamba-ssm installed its fused ``mamba_chunk_scan_combined``
(:mod:`probe.ops.fused.ssd`; not when ``dt`` is edited: the kernel assumes decays <= 1), and
causal-conv1d's conv when ``hook_state_conv`` is not hooked and the carried window is zero
(:mod:`probe.ops.fused.conv`). When states are read or edited, every state is built block by block
(:func:`probe.ops.linear_scan.linear_scan_blocked`, the decay ``exp(dt A)`` broadcast over ``[P, N]``) and
edits propagate through :func:`probe.ops.linear_scan.force_states`; ``mixer.method`` = "chunked",
"sequential" or "loop" forces that path with that form of the scan.

Half precision: the scan (decays, increments, states, y) and the gated norm run in float32 and
the carried ``state`` stays float32 (``WIDE_STATES``); the output returns in the input's dtype.

Options: ``d_state`` (64), ``d_conv`` (4, at least 2), ``expand`` (2), ``d_inner`` (``None``:
``expand * d_model``; set, it overrides ``expand``: Falcon-H1's ``mamba_d_ssm``), ``head_dim`` (``None``:
the model's ``d_head``), ``norm`` (``"gated"``, see above), ``n_groups`` (1), ``chunk`` (64: the SSD chunk length, results do not
depend on it), ``conv_bias`` (True), ``proj_bias`` (False), ``dt_min`` / ``dt_max`` (initial
time-step range, 0.001 / 0.1), ``dt_limit_min`` / ``dt_limit_max`` (the clamp of dt, 0 / ``None``:
none; transformers' one-token decode step skips this clamp, its chunked forward applies it). A
Mamba-2 block in transformers has no MLP: :func:`probe.io.convert_mamba2.mamba2_from_hf` sets
``mlp_layout`` to ``"none"``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation, apply_forcing
from probe.mixers.options import Choice, Flag, Int, Real
from probe.ops.fused import depthwise_conv, fused_kernel, ssd_fused
from probe.ops.ssd import expand_groups, ssd_chunked
from probe.ops.linear_scan import force_states, linear_scan_blocked

#: positions per block when every state is built
BLOCK = 64


#: the readouts before ``W_out`` (module docstring)
NORMS = ("gated", "before_gate", "none")


def gated_rms_norm(y: Tensor, gate: Tensor, weight: Tensor | None, groups: int, eps: float,
                   norm: str = "gated") -> Tensor:
    """The readout before ``W_out``, in float32+: ``weight * RMSNorm(y * gate)`` over each of ``groups``
    equal slices of the last dim (``norm="gated"``), ``weight * RMSNorm(y) * gate`` (``"before_gate"``)
    or ``y * gate`` (``"none"``, no weight).

    ``y, gate [..., d] -> [..., d]`` (float32, or float64 for float64 inputs)."""
    wide = torch.promote_types(y.dtype, torch.float32)
    y, gate = y.to(wide), gate.to(wide)
    if norm == "none":
        return y * gate
    h = (y * gate if norm == "gated" else y).unflatten(-1, (groups, -1))
    h = weight.to(wide) * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    return h if norm == "gated" else h * gate


class Mamba2(RecurrentMixer):
    NAME = "mamba2"
    OPTIONS = {"d_state": Int(64), "d_conv": Int(4, low=2), "expand": Int(2), "d_inner": Int(None),
               "head_dim": Int(None), "norm": Choice("gated", choices=NORMS),
               "n_groups": Int(1), "chunk": Int(64), "conv_bias": Flag(True), "proj_bias": Flag(False),
               "dt_min": Real(0.001), "dt_max": Real(0.1), "dt_limit_min": Real(0.0, low=0.0, open_low=False),
               "dt_limit_max": Real(None)}
    HOOKED = ("state_conv", "input", "B", "C", "dt", "output", "state", "y")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        self.d_state, self.d_conv, self.groups, self.chunk = o["d_state"], o["d_conv"], o["n_groups"], o["chunk"]
        self.d_inner = o["expand"] * cfg.d_model if o["d_inner"] is None else o["d_inner"]
        self.head_dim = cfg.d_head if o["head_dim"] is None else o["head_dim"]
        self._check_widths()
        self.heads = self.d_inner // self.head_dim
        self.conv_dim = self.d_inner + 2 * self.groups * self.d_state
        self.in_proj = nn.Linear(cfg.d_model, self.d_inner + self.conv_dim + self.heads, bias=o["proj_bias"])
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, self.d_conv))  # tap j reads xBC_{t-k+1+j}
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim)) if o["conv_bias"] else None
        self.dt_bias = nn.Parameter(torch.empty(self.heads))
        self.A_log = nn.Parameter(torch.empty(self.heads))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = o["norm"]
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner)) if self.norm != "none" else None
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=o["proj_bias"])
        self.method = "auto"
        self.init_special()

    def _check_widths(self) -> None:
        o, di, p = self.options, self.d_inner, self.head_dim
        if not isinstance(p, int) or p < 1 or di % p:
            raise ConfigError(f"mamba2 head_dim={p!r} must divide d_inner = {di} (expand * d_model, or the d_inner option); choose a "
                              f"head_dim dividing {di} (heads = d_inner / head_dim).")
        if (di // p) % self.groups:
            raise ConfigError(f"mamba2 n_groups={self.groups} must divide the number of heads {di // p} "
                              f"(d_inner {di} / head_dim {p}).")
        if not 0 < o["dt_min"] <= o["dt_max"]:
            raise ConfigError(f"mamba2 needs 0 < dt_min <= dt_max, got {o['dt_min']!r}, {o['dt_max']!r}.")
        if o["dt_limit_max"] is not None and o["dt_limit_max"] <= o["dt_limit_min"]:
            raise ConfigError(f"mamba2 needs dt_limit_min < dt_limit_max, got {o['dt_limit_min']!r}, "
                              f"{o['dt_limit_max']!r}.")

    def init_special(self) -> None:
        """Mamba-2's initialisation: ``A = -(1..H)``, ``D = 1``, dt in [dt_min, dt_max] (log-uniform)."""
        o = self.options
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, self.heads + 1, dtype=torch.float32)))
            self.D.fill_(1.0)
            if self.norm_weight is not None:
                self.norm_weight.fill_(1.0)
            bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d's default for a depthwise conv
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.zero_()
            lo, hi = math.log(o["dt_min"]), math.log(o["dt_max"])
            dt = torch.exp(torch.rand(self.heads) * (hi - lo) + lo).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def state_shapes(self):
        return {"state": (self.heads, self.head_dim, self.d_state), "state_conv": (self.d_conv - 1, self.conv_dim)}

    def _dt(self, raw: Tensor) -> Tensor:
        dt = F.softplus(raw + self.dt_bias)
        lo, hi = self.options["dt_limit_min"], self.options["dt_limit_max"]
        return dt.clamp(min=lo, max=hi) if (lo > 0 or hi is not None) else dt

    def _inputs(self, x: Tensor, state: dict, forcing, keep):
        """The hooked per-position inputs of the scan, and the conv windows and final conv state."""
        z, xbc, raw = self.in_proj(x).split([self.d_inner, self.conv_dim, self.heads], dim=-1)
        pre, W, conv_last = depthwise_conv(xbc, state["state_conv"], self.conv_weight, self.conv_bias, forcing, keep)
        u, B, C = F.silu(pre).split([self.d_inner, self.groups * self.d_state, self.groups * self.d_state], dim=-1)
        values = {"input": apply_forcing("input", u.unflatten(-1, (self.heads, self.head_dim)), forcing),
                  "B": apply_forcing("B", B.unflatten(-1, (self.groups, self.d_state)), forcing),
                  "C": apply_forcing("C", C.unflatten(-1, (self.groups, self.d_state)), forcing),
                  "dt": apply_forcing("dt", self._dt(raw), forcing),
                  "output": apply_forcing("output", F.silu(z), forcing)}
        if W is not None:
            values["state_conv"] = W
        return values, conv_last

    def _scan(self, v: dict, h0: Tensor, forcing, keep, wide: torch.dtype):
        """``(y [b, T, H, P], every state or None, last state)`` in dtype ``wide``."""
        u, dt, B, C = (v[k].to(wide) for k in ("input", "dt", "B", "C"))
        A, D = -torch.exp(self.A_log.to(wide)), self.D.to(wide)
        forced = forcing.get("state")
        want = "state" in keep or forced is not None
        if not want and self.method == "auto":
            kernel = fused_kernel("ssd_combined", v["input"]) if "dt" not in forcing else None  # decays <= 1
            if kernel is not None:
                y, last = ssd_fused(kernel, v["input"], v["dt"], A, v["B"], v["C"], h0, self.D)
                return y.to(wide), None, last
            y, last = ssd_chunked(u, dt, A, B, C, h0, D, chunk=self.chunk)
            return y, None, last
        Bh, Ch = expand_groups(B, self.heads), expand_groups(C, self.heads)
        xdt = dt[..., None] * u

        def coefficients(t0, t1):
            a = torch.exp(dt[:, t0:t1] * A)[..., None, None]  # [b, l, H, 1, 1]
            inc = xdt[:, t0:t1, :, :, None] * Bh[:, t0:t1, :, None, :]  # [b, l, H, P, N]
            if forced is not None:
                a, inc = force_states(a, inc, forced[0][:, t0:t1], forced[1][:, t0:t1])
            return a, inc

        def readout(t0, t1, s):
            return torch.einsum("blhpn,blhn->blhp", s, Ch[:, t0:t1])

        ys, last, states = linear_scan_blocked(coefficients, u.shape[1], h0, readout, block=BLOCK,
                                               keep_states=want, method=self.method)
        return ys + D[:, None] * u, states, last

    def compute(self, x, state, forcing, keep):
        values, conv_last = self._inputs(x, state, forcing, keep)
        wide = self.state_dtype("state", x.dtype)
        y, states, last = self._scan(values, state["state"], forcing, keep, wide)
        if states is not None:
            values["state"] = states
        y = apply_forcing("y", y, forcing)
        values["y"] = y.to(x.dtype)
        return Computation(self.project(y.flatten(2), values["output"]), values,
                           {"state": last, "state_conv": conv_last})

    def project(self, y: Tensor, gate: Tensor) -> Tensor:
        """The mixer output ``W_out readout(y, gate)`` (module docstring) of ``y [b, T, d_inner]`` and the
        gate ``silu(z) [b, T, d_inner]``, in the gate's dtype."""
        normed = gated_rms_norm(y, gate, self.norm_weight, self.groups, self.cfg.norm_eps, self.norm)
        return self.out_proj(normed.to(gate.dtype))
