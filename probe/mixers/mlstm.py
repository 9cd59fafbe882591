r"""mLSTM: the matrix-memory cell of xLSTM (Beck et al. 2024), in two layer designs.

**The cell** (both designs), per head (``H`` heads, key width ``K``, value width ``V``)::

    C_t = f_t C_{t-1} + i_t k_t v_t^T        n_t = f_t n_{t-1} + i_t k_t          (i_t = exp(i~_t))
    h_t = s C_t^T q_t / max(s |n_t^T q_t|, 1)                                   (s = K^-1/2)

with an exponential input gate ``i_t = exp(i~_t)`` and a sigmoid forget gate (``log f_t =
logsigmoid(f~_t)``). ``i_t`` is unbounded, so the memory is stored stabilised (see
:mod:`probe.ops.max_scan`): with ``m_t = max(m_{t-1} + log f_t, i~_t)`` the state holds
``C~_t = C_t exp(-m_t)``, ``n~_t = n_t exp(-m_t)`` and ``m_t``, updated by::

    C~_t = exp(log f_t + m_{t-1} - m_t) C~_{t-1} + exp(i~_t - m_t) k_t v_t^T      (n~ alike with v = 1)
    h_t = s C~_t^T q_t / (max(s |n~_t^T q_t|, exp(-m_t)) + eps)

(``m_{-1} = 0``, as in the reference implementations; every exponent is ``<= 0``; ``m``
changes ``h`` only through ``eps``.)

**Layer ``"large"``** (default; xLSTM-7B, transformers' ``xLSTMForCausalLM``), from the input ``x_t``::

    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t                    # K H = d_model * qk_factor
    i~_t = cap tanh((W_i x_t + b_i) / cap),  f~_t = cap tanh((W_f x_t + b_f) / cap)
    o_t = sigmoid(W_o x_t)                                        # output gate [H * V]
    y_t = W_out (o_t * headnorm(h_t))                             # headnorm: LayerNorm over V per head

**Layer ``"paper"``** (the xLSTM paper's pre-up-projection block; the ``xlstm`` package's
``mLSTMLayer``), with inner width ``D = d_inner`` and ``K = V = D / H``::

    [u_t; z_t] = W_up x_t                                         # [D; D]
    c_t = silu(conv(u)_t)                                         # causal depthwise conv of width k
    q_t, k_t = Wq c_t, Wk c_t;  v_t = Wv u_t                      # block-diagonal, blocks of qkv_blocksize
    [i~_t; f~_t] = W_{i,f} [q_t; k_t; v_t] + b_{i,f}
    o_t = silu(z_t)                                               # output gate [D]
    y_t = W_down ((headnorm(h_t) + s * c_t) * o_t)                # s: learnable skip [D]

State after token ``t`` (the memory):
    ``state``       C~_t, ``[batch, H, K, V]`` (``hook_state``: ``[batch, pos, H, K, V]``)
    ``state_n``     n~_t, ``[batch, H, K]``
    ``state_m``     m_t, ``[batch, H]``
    ``state_conv``  (paper layer, ``conv > 1``) the last ``k - 1`` inputs ``u``, ``[batch, k-1, D]``

Hooks (dependency order): ``hook_state_conv`` (paper), ``hook_q``, ``hook_k`` ``[b, pos, H, K]``,
``hook_v`` ``[b, pos, H, V]``, ``hook_input`` (i~, log space) and ``hook_forget`` (log f), both
``[b, pos, H]``, ``hook_output`` ``[b, pos, H * V]``, ``hook_state_m``, ``hook_state``, ``hook_state_n``.

Computation: with the stabiliser known at every position (a cheap max-scan over
``[b, T, H]``), the stabilised memory is gated linear attention with a scalar decay per head
(:mod:`probe.ops.gla`): keys ``k_t exp(i~_t - m_t)``, log-decay ``log f_t + m_{t-1} - m_t``
and values ``[v_t, 1]`` (the extra column carries ``n~``). Without a state hook the chunked
form runs and per-position ``C`` is never built; with one, every state comes from the
elementwise scan and edits to ``C``, ``n`` or ``m`` propagate. An edited ``m_t`` is the
stabiliser *carried* to step ``t + 1`` (and used by the readout at ``t``); ``C~_t`` and
``n~_t`` keep the scale they were computed with (see :mod:`probe.ops.max_scan`).

Fast path (no hook or edit on ``state``, ``state_n``, ``state_m``, no edited forget gate): on CUDA
with the xLSTM kernels installed, mlstm_kernels' chunkwise Triton kernel runs the memory and its
readout from the carried state (:mod:`probe.ops.fused.mlstm`; head widths 16, 32 or multiples of 64).

Options: ``layer`` (``"large"`` / ``"paper"``), ``heads`` (default ``n_heads``), ``eps`` (1e-6),
``norm_eps`` (1e-6), ``bias`` (biases on the projections and the head norm), ``chunk`` (64);
large: ``qk_factor`` (0.5), ``v_factor`` (1.0), ``gate_soft_cap`` (15.0, ``None`` for none);
paper: ``d_inner`` (default ``2 d_model``), ``conv`` (4), ``qkv_blocksize`` (4).

Half precision: the stabiliser scan, the memory (``C~``, ``n~``) and its readout ``h_t`` run in
float32 and the carried ``state``, ``state_n``, ``state_m`` stay float32 (``WIDE_STATES``), as the
xLSTM kernels accumulate; their hooks show float32. The projections, gates (``hook_q`` ..
``hook_output``), the head norm and the output keep the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Choice, Flag, Int, Real
from probe.mixers.edits import Computation, Forcing, apply_forcing
from probe.ops import conv_window
from probe.ops.fused import fused_kernel
from probe.ops.fused.mlstm import mlstm_fused, takes
from probe.ops.gla import gla_chunked, gla_readout, gla_states
from probe.ops.max_scan import max_scan


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (identity for ``cap=None``)."""
    return x if cap is None else cap * torch.tanh(x / cap)


class MLSTM(RecurrentMixer):
    NAME = "mlstm"
    OPTIONS = {"layer": Choice("large", choices=("large", "paper")), "heads": Int(None),
               "eps": Real(1e-6, open_low=False), "norm_eps": Real(1e-6), "bias": Flag(False), "chunk": Int(64),
               "qk_factor": Real(0.5), "v_factor": Real(1.0), "gate_soft_cap": Real(15.0, optional=True),
               "d_inner": Int(None), "conv": Int(4, low=0, optional=True), "qkv_blocksize": Int(4)}
    HOOKED = ("state_conv", "q", "k", "v", "input", "forget", "output", "state_m", "state", "state_n")
    LAYERS = ("large", "paper")
    WIDE_STATES = ("state", "state_n", "state_m")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        if o["layer"] not in self.LAYERS:
            raise ConfigError(f"mlstm option layer={o['layer']!r} is not one of {', '.join(self.LAYERS)}.")
        self.paper = o["layer"] == "paper"
        self.n_heads = H = int(o["heads"] or cfg.n_heads)
        d, bias = cfg.d_model, bool(o["bias"])
        if self.paper:
            D, bs = int(o["d_inner"] or 2 * d), int(o["qkv_blocksize"])
            if D % H or D % bs:
                raise ConfigError(f"mlstm (paper layer): d_inner={D} must be a multiple of heads={H} and of "
                                  f"qkv_blocksize={bs}.")
            qk = vd = D
            self.k = int(o["conv"] or 0)
            self.W_up = nn.Linear(d, 2 * D, bias=bias)
            if self.k > 1:
                self.W_conv = nn.Parameter(torch.empty(D, self.k))
                self.b_conv = nn.Parameter(torch.zeros(D))
                nn.init.normal_(self.W_conv, std=cfg.init_std)
            blocks = D // bs  # block-diagonal q/k/v: [blocks, out, in]
            self.Wq_blocks, self.Wk_blocks, self.Wv_blocks = (nn.Parameter(torch.empty(blocks, bs, bs))
                                                              for _ in range(3))
            for w in (self.Wq_blocks, self.Wk_blocks, self.Wv_blocks):
                nn.init.normal_(w, std=cfg.init_std)
            self.bq, self.bk, self.bv = ((nn.Parameter(torch.zeros(D)) if bias else None) for _ in range(3))
            self.W_igate = nn.Linear(3 * D, H, bias=True)
            self.W_fgate = nn.Linear(3 * D, H, bias=True)
            self.skip = nn.Parameter(torch.ones(D))
            self.out_proj = nn.Linear(D, d, bias=bias)
        else:
            qk, vd = int(d * o["qk_factor"]), int(d * o["v_factor"])
            self.k = 0
            self.W_q = nn.Linear(d, qk, bias=bias)
            self.W_k = nn.Linear(d, qk, bias=bias)
            self.W_v = nn.Linear(d, vd, bias=bias)
            self.W_ogate = nn.Linear(d, vd, bias=bias)
            self.W_igate = nn.Linear(d, H, bias=True)
            self.W_fgate = nn.Linear(d, H, bias=True)
            self.out_proj = nn.Linear(vd, d, bias=bias)
        if qk < H or qk % H or vd < H or vd % H:
            raise ConfigError(f"mlstm: qk width {qk} and v width {vd} (d_model * qk_factor / v_factor) must be "
                              f"positive multiples of the number of heads {H}.")
        self.d_qk, self.d_v = qk // H, vd // H
        self.head_norm_w = nn.Parameter(torch.ones(vd))
        self.head_norm_b = nn.Parameter(torch.zeros(vd)) if bias else None

    def hooked_names(self):
        has_conv = self.options["layer"] == "paper" and int(self.options["conv"] or 0) > 1
        return self.HOOKED if has_conv else self.HOOKED[1:]

    def init_special(self) -> None:
        with torch.no_grad():  # remember by default (f ~ 0.95..1), start with small input gates
            self.W_fgate.bias.copy_(torch.linspace(3.0, 6.0, self.n_heads))
            self.W_igate.bias.fill_(-2.0)

    def state_shapes(self):
        H, K, V = self.n_heads, self.d_qk, self.d_v
        shapes = {"state": (H, K, V), "state_n": (H, K), "state_m": (H,)}
        if self.k > 1:
            shapes["state_conv"] = (self.k - 1, self.W_conv.shape[0])
        return shapes

    def _memory(self, q, k_in, v, log_decay, state, forcing: Forcing, keep: set):
        """``(q^T [C~ | n~] scaled, states [b,T,H,K,V+1] or None, final [b,H,K,V+1])``."""
        b, T, H, _ = q.shape
        V = self.d_v
        v1 = torch.cat([v, v.new_ones(b, T, H, 1)], dim=-1)  # the ones column carries n~
        S0 = torch.cat([state["state"], state["state_n"].unsqueeze(-1)], dim=-1)
        scale = self.d_qk ** -0.5
        if not ({"state", "state_n"} & (keep | set(forcing))):
            out, final = gla_chunked(q, k_in, v1, log_decay.unsqueeze(-1), S0, scale, int(self.options["chunk"]))
            return out, None, final
        force = None
        if "state" in forcing or "state_n" in forcing:
            shape_c, shape_n = (b, T, H, self.d_qk, V), (b, T, H, self.d_qk)
            mc, vc = forcing.get("state", (torch.zeros(shape_c, dtype=torch.bool, device=q.device), q.new_zeros(shape_c)))
            mn, vn = forcing.get("state_n", (torch.zeros(shape_n, dtype=torch.bool, device=q.device), q.new_zeros(shape_n)))
            force = (torch.cat([mc, mn.unsqueeze(-1)], -1), torch.cat([vc.to(q.dtype), vn.to(q.dtype).unsqueeze(-1)], -1))
        S = gla_states(k_in, v1, log_decay.exp().unsqueeze(-1), S0, force)
        return gla_readout(q, S, scale), S, S[:, -1]

    def _inputs_large(self, x, state, forcing, keep):
        b, T, _ = x.shape
        H, K, V = self.n_heads, self.d_qk, self.d_v
        cap = self.options["gate_soft_cap"]
        q = apply_forcing("q", self.W_q(x).view(b, T, H, K), forcing)
        k = apply_forcing("k", self.W_k(x).view(b, T, H, K), forcing)
        v = apply_forcing("v", self.W_v(x).view(b, T, H, V), forcing)
        log_i = apply_forcing("input", soft_cap(self.W_igate(x), cap), forcing)
        log_f = apply_forcing("forget", F.logsigmoid(soft_cap(self.W_fgate(x), cap)), forcing)
        o = apply_forcing("output", torch.sigmoid(self.W_ogate(x)), forcing)
        return q, k, v, log_i, log_f, o, {}, {}

    def _inputs_paper(self, x, state, forcing, keep):
        b, T, _ = x.shape
        H, K = self.n_heads, self.d_qk
        u, z = self.W_up(x).chunk(2, dim=-1)
        values, final = {}, {}
        if self.k > 1:
            pre, W, final["state_conv"] = conv_window.depthwise_conv(u, state["state_conv"], self.W_conv, self.b_conv,
                                                                     forcing, keep)
            if W is not None:
                values["state_conv"] = W
        else:
            pre = u
        c = F.silu(pre)

        def blockwise(t, W, bias):
            out = torch.einsum("btni,noi->btno", t.view(b, T, W.shape[0], W.shape[2]), W).reshape(b, T, -1)
            return out if bias is None else out + bias

        q = apply_forcing("q", blockwise(c, self.Wq_blocks, self.bq).view(b, T, H, K), forcing)
        k = apply_forcing("k", blockwise(c, self.Wk_blocks, self.bk).view(b, T, H, K), forcing)
        v = apply_forcing("v", blockwise(u, self.Wv_blocks, self.bv).view(b, T, H, K), forcing)
        qkv = torch.cat([q.reshape(b, T, -1), k.reshape(b, T, -1), v.reshape(b, T, -1)], dim=-1)
        log_i = apply_forcing("input", self.W_igate(qkv), forcing)
        log_f = apply_forcing("forget", F.logsigmoid(self.W_fgate(qkv)), forcing)
        o = apply_forcing("output", F.silu(z), forcing)
        return q, k, v, log_i, log_f, o, {**values, "_skip": c}, final

    def _fused(self, x: Tensor, forcing: Forcing, keep: set):
        """mlstm_kernels' chunkwise kernel for this forward, or ``None`` (the PyTorch form): no state
        hook or edit, no edited forget gate (it may be exactly 0), head widths and dtype it takes."""
        if {"state", "state_n", "state_m"} & (keep | set(forcing)) or "forget" in forcing or x.shape[1] == 0:
            return None
        if not takes(self.d_qk, self.d_v, x.dtype):
            return None
        return fused_kernel("mlstm_chunkwise", x)

    def _recurrence(self, q, k, v, log_i, log_f, state, forcing, keep, dtype):
        """The stabilised memory in PyTorch: ``(h [b, T, H, V] in dtype, values, final state)``."""
        V = self.d_v
        wide = self.state_dtype("state", dtype)
        q_w, k_w, v_w, log_i_w, log_f_w = (t.to(wide) for t in (q, k, v, log_i, log_f))
        m0 = state["state_m"]
        m, m_step = max_scan(log_f_w, log_i_w, m0, forcing.get("state_m"))
        m_prev = torch.cat([m0.unsqueeze(1), m[:, :-1]], dim=1)
        log_decay = (log_f_w + m_prev - m_step).clamp(max=0.0)
        k_in = k_w * torch.exp(log_i_w - m_step).unsqueeze(-1)
        out, S, final = self._memory(q_w, k_in, v_w, log_decay, state, forcing, keep)
        num, den = out[..., :V], out[..., V]
        h = (num / (torch.maximum(den.abs(), torch.exp(-m)) + self.options["eps"]).unsqueeze(-1)).to(dtype)
        values = {"state_m": m}
        if S is not None:
            values["state"], values["state_n"] = S[..., :V], S[..., V]
        return h, values, {"state": final[..., :V], "state_n": final[..., V], "state_m": m[:, -1]}

    def compute(self, x, state, forcing, keep):
        b, T, _ = x.shape
        H, V = self.n_heads, self.d_v
        inputs = self._inputs_paper if self.paper else self._inputs_large
        q, k, v, log_i, log_f, o, extra, final_extra = inputs(x, state, forcing, keep)
        if (kernel := self._fused(x, forcing, keep)) is not None:
            h, (C, n, m) = mlstm_fused(kernel, q, k, v.to(x.dtype), log_i, log_f, state["state"], state["state_n"],
                                       state["state_m"], self.options["eps"])
            memory, final = {}, {"state": C, "state_n": n, "state_m": m}
        else:
            h, memory, final = self._recurrence(q, k, v, log_i, log_f, state, forcing, keep, x.dtype)
        hn = F.layer_norm(h, (V,), eps=self.options["norm_eps"]).reshape(b, T, H * V) * self.head_norm_w
        if self.head_norm_b is not None:
            hn = hn + self.head_norm_b
        skip = extra.pop("_skip", None)
        y = self.out_proj(o * hn if skip is None else (hn + self.skip * skip) * o)
        values = {"q": q, "k": k, "v": v, "input": log_i, "forget": log_f, "output": o, **memory, **extra}
        return Computation(y, values, {**final, **final_extra})
