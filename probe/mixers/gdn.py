r"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025), computed as the "linear_attention" layers of
transformers' ``Qwen3NextForCausalLM`` (``Qwen3NextGatedDeltaNet``).

``Hk`` key heads of width ``K = d_k``, ``Hv`` value heads of width ``V = d_v`` (``Hv`` a multiple
of ``Hk``; each key head serves ``Hv / Hk`` consecutive value heads)::

    [q~; k~; v~]_t = silu(causal depthwise conv_k([W_q x; W_k x; W_v x])_t)   (width k = d_conv, no bias)
    q_t = q~_t / sqrt(|q~_t|^2 + 1e-6),  k_t likewise                 (l2-normalised, per key head)
    beta_t = sigmoid(W_b x_t)                                         ([Hv], write strength)
    g_t    = -exp(A_log) * softplus(W_a x_t + dt_bias)                ([Hv], log of the gate a_t = exp(g_t))
    S_t    = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T    ([K, V] per value head)
    o_t    = K^{-1/2} S_t^T q_t                                       ([V] per value head)
    y_t    = W_out [ RMSNorm_V(o_t) * w * silu(z_t) ]                 (z_t = W_z x_t, gated RMSNorm per head)

The state is read by keys (``S [K, V]``), as in transformers' cache and flash-linear-attention;
the paper writes its transpose. The recurrence and its chunked form are
:mod:`probe.ops.delta_rule`.

State (the memory after token ``t``):
    ``state``       S_t, ``[batch, Hv, K, V]`` (``hook_state``: ``[batch, pos, Hv, K, V]``), the
                    layout of transformers' ``cache.layers[i].recurrent_states``
    ``state_conv``  the last ``d_conv - 1`` conv inputs ``[q; k; v]`` (before the conv),
                    ``[batch, d_conv - 1, 2 Hk K + Hv V]``
Memory per position when every state is cached: ``Hv K V + (d_conv - 1)(2 Hk K + Hv V)``
numbers (Qwen3-Next-80B-A3B: 32 * 128 * 128 + 3 * 12288 = 561,152 per layer, 2.1 MiB in float32).

Hooks, in dependency order (TransformerLens 4's ``GatedDeltaNetBridge`` names, which it also uses):
``hook_state_conv``; ``hook_q``, ``hook_k`` (after conv and silu, before the l2 norm,
``[b, pos, Hk, K]``); ``hook_v`` (``[b, pos, Hv, V]``); ``hook_beta``, ``hook_log_decay``
(``[b, pos, Hv]``; TL aliases ``hook_ssm_write``, ``hook_ssm_decay``); ``hook_gate_input``
(z before its silu, ``[b, pos, Hv, V]``); ``hook_state`` (TL: ``hook_ssm_state``, which TL fills
only with ``eager_scan=True`` and whose edits there do not propagate; here they do);
``hook_recurrence_out`` (o, ``[b, pos, Hv, V]``). The gated norm is ``norm.hook_scale`` /
``norm.hook_normalized``.

Fast path (no state hook, no state edit): the chunked WY form
:func:`probe.ops.delta_rule.gated_delta_rule_chunked` (``mixer.method = "sequential"`` selects
the step-by-step reference); on CUDA with flash-linear-attention installed its fused
``chunk_gated_delta_rule`` (``chunk_kda`` for ``kda``; key widths up to 256,
:mod:`probe.ops.fused.delta_rule`), with causal-conv1d's conv when ``hook_state_conv`` is not hooked
and the carried window is zero (:mod:`probe.ops.fused.conv`). With a state hook every state is built
chunk by chunk (:func:`~probe.ops.delta_rule.gated_delta_rule_states`) and edited states restart the rule.

Half precision: the l2 norms, the gates and the recurrence run in float32 and the carried
``state`` stays float32 (``WIDE_STATES``), as transformers keeps it; the output returns in the
input's dtype.

Options: ``n_k_heads`` (``None``: ``n_heads``), ``n_v_heads`` (``None``: ``n_k_heads``), ``d_k``
(``None``: ``d_head``), ``d_v`` (``None``: ``d_k``), ``d_conv`` (4), ``norm_eps`` (1e-6, the gated
norm's epsilon), ``chunk`` (16, positions per chunk of the fast form), ``allow_neg_eigval``
(False; True: ``beta_t = 2 sigmoid(W_b x_t)`` in (0, 2), OLMo hybrid's ``linear_allow_neg_eigval``).
:mod:`probe.io.convert_gdn` converts one transformers layer, :mod:`probe.io.convert_qwen3_next` whole
Qwen3-Next models (with gated attention and mixture-of-experts MLPs), :mod:`probe.io.convert_olmo_hybrid`
OLMo hybrid's.

:class:`KimiDeltaAttention` (layout name ``"kda"``) is the variant with a decay gate per key channel
and low-rank, sigmoid output gates: Kimi Linear's linear-attention layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation, apply_forcing
from probe.mixers.options import Flag, Int, Real
from probe.norm import RMSNorm
from probe.ops.delta_rule import gated_delta_rule_chunked, gated_delta_rule_sequential, gated_delta_rule_states
from probe.ops.fused import MAX_K, delta_rule_fused, depthwise_conv, fused_kernel
from probe.ops.gla import gla_readout

#: the epsilon of the q / k l2 norm (transformers' and fla's ``l2norm``)
L2_EPS = 1e-6


def l2_normalise(x: Tensor) -> Tensor:
    """``x / sqrt(sum(x^2) + 1e-6)`` over the last dimension."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


class GatedDeltaNet(RecurrentMixer):
    NAME = "gdn"
    OPTIONS = {"n_k_heads": Int(None), "n_v_heads": Int(None), "d_k": Int(None), "d_v": Int(None),
               "d_conv": Int(4, low=2), "norm_eps": Real(1e-6), "chunk": Int(16), "allow_neg_eigval": Flag(False)}
    HOOKED = ("state_conv", "q", "k", "v", "beta", "log_decay", "gate_input", "state", "recurrence_out")
    WIDE_STATES = ("state",)
    #: the fused kernel of the recurrence (probe.ops.fused.registry.KERNELS)
    KERNEL = "chunk_gated_delta_rule"

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        self.Hk = cfg.n_heads if o["n_k_heads"] is None else o["n_k_heads"]
        self.Hv = self.Hk if o["n_v_heads"] is None else o["n_v_heads"]
        self.K = cfg.d_head if o["d_k"] is None else o["d_k"]
        self.V = self.K if o["d_v"] is None else o["d_v"]
        if self.Hv % self.Hk:
            raise ConfigError(f"gdn option n_v_heads={self.Hv} must be a multiple of n_k_heads={self.Hk} "
                              "(each key head serves n_v_heads / n_k_heads value heads).")
        self.d_conv = o["d_conv"]
        d, kd, vd = cfg.d_model, self.Hk * self.K, self.Hv * self.V
        self.q_proj = nn.Linear(d, kd, bias=False)
        self.k_proj = nn.Linear(d, kd, bias=False)
        self.v_proj = nn.Linear(d, vd, bias=False)
        self.build_gates(d)
        self.conv_weight = nn.Parameter(torch.empty(2 * kd + vd, self.d_conv))  # tap j reads x_{t-k+1+j}
        self.norm = RMSNorm(self.V, o["norm_eps"])
        self.out_proj = nn.Linear(vd, d, bias=False)
        self.method = "auto"
        self.init_special()

    def build_gates(self, d: int) -> None:
        """The output gate ``z_proj``, the write strength ``b_proj`` and the scalar decay gate (``a_proj``,
        ``A_log [Hv]``, ``dt_bias [Hv]``)."""
        self.z_proj = nn.Linear(d, self.Hv * self.V, bias=False)
        self.b_proj = nn.Linear(d, self.Hv, bias=False)
        self.a_proj = nn.Linear(d, self.Hv, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.Hv))
        self.dt_bias = nn.Parameter(torch.empty(self.Hv))

    def init_special(self) -> None:
        """fla's initialisation: ``A = U(1, 16)``, gate time steps in [0.001, 0.1] (log-uniform)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty(self.Hv).uniform_(1, 16).log())
            n = self.dt_bias.numel()
            dt = torch.exp(torch.rand(n) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d's default for a depthwise conv
            self.conv_weight.uniform_(-bound, bound)

    def state_shapes(self):
        return {"state": (self.Hv, self.K, self.V),
                "state_conv": (self.d_conv - 1, 2 * self.Hk * self.K + self.Hv * self.V)}

    def readout(self, o: Tensor, gate_input: Tensor) -> Tensor:
        """``W_out [RMSNorm(o) * w * act(z)]``: ``o, z [b, T, Hv, V]`` -> ``[b, T, d_model]`` (``act``:
        :meth:`gate_activation`)."""
        gated = self.norm(o) * self.gate_activation(gate_input.to(torch.promote_types(o.dtype, torch.float32)))
        return self.out_proj(gated.to(o.dtype).flatten(2))

    def gate_activation(self, z: Tensor) -> Tensor:
        """The output gate's nonlinearity: ``silu``."""
        return F.silu(z)

    def gate_input(self, x: Tensor) -> Tensor:
        """The output gate before its activation, ``z = W_z x``, ``[b, T, Hv, V]``."""
        return self.z_proj(x).unflatten(-1, (self.Hv, self.V))

    def decay_input(self, x: Tensor) -> Tensor:
        """The decay gate's projection ``W_a x``, ``[b, T, Hv]``."""
        return self.a_proj(x)

    def expand_heads(self, x: Tensor) -> Tensor:
        """Key-head tensors ``[b, T, Hk, K]`` -> value heads ``[b, T, Hv, K]`` (consecutive groups)."""
        return x.repeat_interleave(self.Hv // self.Hk, dim=2) if self.Hv != self.Hk else x

    def _inputs(self, x: Tensor, state: dict, forcing, keep, fused: bool):
        """The hooked inputs of the recurrence and the final conv state (``fused``: the recurrence runs
        a fused kernel)."""
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        # without a fused kernel always through the windows (one einsum, not conv1d): hooked and unhooked
        # runs then round alike, which the delta rule's triangular solve would otherwise amplify into
        # earlier positions
        pre, W, conv_last = depthwise_conv(qkv, state["state_conv"], self.conv_weight, None, forcing,
                                           keep if fused else keep | {"state_conv"})
        kd = self.Hk * self.K
        q, k, v = F.silu(pre).split([kd, kd, self.Hv * self.V], dim=-1)
        values = {
            "q": apply_forcing("q", q.unflatten(-1, (self.Hk, self.K)), forcing),
            "k": apply_forcing("k", k.unflatten(-1, (self.Hk, self.K)), forcing),
            "v": apply_forcing("v", v.unflatten(-1, (self.Hv, self.V)), forcing),
            "beta": apply_forcing("beta", self.beta(self.b_proj(x)), forcing),
            "log_decay": apply_forcing("log_decay", self.log_decay(self.decay_input(x)), forcing),
            "gate_input": apply_forcing("gate_input", self.gate_input(x), forcing),
        }
        if W is not None:
            values["state_conv"] = W
        return values, conv_last

    def beta(self, b: Tensor) -> Tensor:
        """``sigmoid(b)``, or ``2 sigmoid(b)`` in ``(0, 2)`` with ``allow_neg_eigval`` (``I - beta k k^T`` may
        then have a negative eigenvalue), ``[b, T, Hv]``."""
        return torch.sigmoid(b) * 2 if self.options["allow_neg_eigval"] else torch.sigmoid(b)

    def log_decay(self, a: Tensor) -> Tensor:
        """``g = -exp(A_log) softplus(a + dt_bias)`` in at least float32, ``a [b, T, Hv]`` (or ``[b, T, Hv, K]``
        per channel, ``dt_bias`` then ``[Hv K]``) -> the same shape."""
        wide = torch.promote_types(a.dtype, torch.float32)
        A = self.A_log.to(wide).exp().view(self.Hv, *([1] * (a.dim() - 3)))
        return -A * F.softplus(a.to(wide) + self.dt_bias.to(wide).view(a.shape[2:]))

    def compute(self, x, state, forcing, keep):
        want = "state" in keep or "state" in forcing
        kernel = fused_kernel(self.KERNEL, x) if not want and self.method == "auto" and self.K <= MAX_K else None
        values, conv_last = self._inputs(x, state, forcing, keep, fused=kernel is not None)
        wide = self.state_dtype("state", x.dtype)
        q, k = (l2_normalise(values[n].to(wide)) for n in ("q", "k"))  # [b, T, Hk, K]
        scale, h0 = self.K ** -0.5, state["state"]
        if kernel is not None:
            o, last = delta_rule_fused(kernel, q, k, values["v"], values["log_decay"], values["beta"], h0, scale)
            return self._finish(x, o, last, values, conv_last, forcing)
        q, k = self.expand_heads(q), self.expand_heads(k)
        v, beta, g = (values[n].to(wide) for n in ("v", "beta", "log_decay"))
        if want:
            S = gated_delta_rule_states(k, v, g, beta, h0, forcing.get("state"), chunk=self.options["chunk"])
            o, last = gla_readout(q, S, scale), S[:, -1]
            values["state"] = S
        elif self.method == "sequential":
            o, last = gated_delta_rule_sequential(q, k, v, g, beta, h0, scale)
        else:
            o, last = gated_delta_rule_chunked(q, k, v, g, beta, h0, scale, chunk=self.options["chunk"])
        return self._finish(x, o, last, values, conv_last, forcing)

    def _finish(self, x: Tensor, o: Tensor, last: Tensor, values: dict, conv_last: Tensor, forcing) -> Computation:
        """The read-out of the recurrence's output ``o [b, T, Hv, V]`` and the carried states."""
        o = apply_forcing("recurrence_out", o.to(x.dtype), forcing)
        values["recurrence_out"] = o
        y = self.readout(o, values["gate_input"])
        return Computation(y, values, {"state": last, "state_conv": conv_last})


class KimiDeltaAttention(GatedDeltaNet):
    r"""Kimi Delta Attention (Kimi Team 2025, "Kimi Linear"): Gated DeltaNet with a decay gate per key
    channel, computed as transformers' ``KimiLinearDeltaAttention`` (and fla's ``KimiDeltaAttention``).

    Layout name ``"kda"``; options as ``gdn`` (``mixer_options={"kda": {...}}``) plus ``gate_bias``
    (False; fla's layer has a bias on the output gate's second projection, transformers' has none).
    What differs from Gated DeltaNet, per value head (``r = V``, the low-rank width of both gates)::

        alpha_t = exp(g_t),  g_t = -exp(A_log) * softplus(W_fb W_fa x_t + dt_bias)   ([K] per head:
                  W_fa [r, d], W_fb [Hv K, r], dt_bias [Hv K], A_log [Hv])
        S_t     = (I - beta_t k_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t v_t^T
        y_t     = W_out [ RMSNorm_V(o_t) * w * sigmoid(z_t) ],   z_t = W_gb W_ga x_t   (W_ga [r, d], W_gb [Hv V, r])

    The short convolution over ``[q; k; v]``, the l2 norms, ``beta_t = sigmoid(W_b x_t)``, the read-out
    ``o_t = K^{-1/2} S_t^T q_t``, the states and the hooks are Gated DeltaNet's; ``hook_log_decay`` is
    ``[b, pos, Hv, K]`` and ``hook_gate_input`` is ``z`` before its sigmoid. The chunked form holds the
    per-channel decays of a chunk, ``[L, L, K]`` per head (:mod:`probe.ops.delta_rule`).
    """

    NAME = "kda"
    OPTIONS = {**GatedDeltaNet.OPTIONS, "gate_bias": Flag(False)}
    KERNEL = "chunk_kda"

    def build_gates(self, d: int) -> None:
        """The low-rank output gate ``g_a_proj, g_b_proj``, ``b_proj``, and the per-channel decay gate
        (``f_a_proj, f_b_proj``, ``A_log [Hv]``, ``dt_bias [Hv K]``)."""
        r = self.V
        self.f_a_proj = nn.Linear(d, r, bias=False)
        self.f_b_proj = nn.Linear(r, self.Hv * self.K, bias=False)
        self.b_proj = nn.Linear(d, self.Hv, bias=False)
        self.g_a_proj = nn.Linear(d, r, bias=False)
        self.g_b_proj = nn.Linear(r, self.Hv * self.V, bias=self.options["gate_bias"])
        self.A_log = nn.Parameter(torch.empty(self.Hv))
        self.dt_bias = nn.Parameter(torch.empty(self.Hv * self.K))

    def gate_activation(self, z: Tensor) -> Tensor:
        """The output gate's nonlinearity: ``sigmoid``."""
        return torch.sigmoid(z)

    def gate_input(self, x: Tensor) -> Tensor:
        """``z = W_gb W_ga x``, ``[b, T, Hv, V]``."""
        return self.g_b_proj(self.g_a_proj(x)).unflatten(-1, (self.Hv, self.V))

    def decay_input(self, x: Tensor) -> Tensor:
        """``W_fb W_fa x``, ``[b, T, Hv, K]``."""
        return self.f_b_proj(self.f_a_proj(x)).unflatten(-1, (self.Hv, self.K))
