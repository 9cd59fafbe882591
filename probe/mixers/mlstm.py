r"""mLSTM: the matrix-memory cell of xLSTM (Beck et al. 2024), in the layer design of xLSTM-7B.

Per head (``H`` heads, key width ``K``, value width ``V``), from the normalised input ``x_t``::

    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t                    # [H, K], [H, K], [H, V]
    i~_t = cap * tanh((W_i x_t + b_i) / cap)                      # log input gate (exponential gate)
    log f_t = logsigmoid(cap * tanh((W_f x_t + b_f) / cap))       # log forget gate
    o_t = sigmoid(W_o x_t)                                        # output gate [H * V]

    C_t = f_t C_{t-1} + i_t k_t v_t^T        n_t = f_t n_{t-1} + i_t k_t          (i_t = exp(i~_t))
    h_t = C_t^T q_t / max(|n_t^T q_t|, 1) / sqrt(K)
    y_t = W_out (o_t * headnorm(h_t))                             # headnorm: LayerNorm over V per head

``i_t`` is unbounded, so the memory is stored stabilised (see :mod:`probe.scan_max`): with
``m_t = max(m_{t-1} + log f_t, i~_t)`` the state holds ``C~_t = C_t exp(-m_t)``,
``n~_t = n_t exp(-m_t)`` and ``m_t``, updated by::

    C~_t = exp(log f_t + m_{t-1} - m_t) C~_{t-1} + exp(i~_t - m_t) k_t v_t^T      (n~ alike with v = 1)
    h_t = C~_t^T q_t / (max(|n~_t^T q_t|, exp(-m_t)) + eps) / sqrt(K)

(``m_{-1} = 0``, as in the reference implementation; every exponent is ``<= 0``.)

State after token ``t`` (the memory):
    ``state``    C~_t, ``[batch, H, K, V]`` (``hook_state``: ``[batch, pos, H, K, V]``)
    ``state_n``  n~_t, ``[batch, H, K]``
    ``state_m``  m_t, ``[batch, H]``

Hooks (dependency order): ``hook_q``, ``hook_k`` ``[b, pos, H, K]``, ``hook_v`` ``[b, pos, H, V]``,
``hook_input`` (i~, log space) and ``hook_forget`` (log f), both ``[b, pos, H]``,
``hook_output`` ``[b, pos, H * V]``, ``hook_state_m``, ``hook_state``, ``hook_state_n``.

Computation: with the stabiliser known at every position (a cheap max-scan over
``[b, T, H]``), the stabilised memory is gated linear attention with a scalar decay per head
(:mod:`probe.scan_gla`): keys ``k_t exp(i~_t - m_t)``, log-decay ``log f_t + m_{t-1} - m_t``
and values ``[v_t, 1]`` (the extra column carries ``n~``). Without a state hook the chunked
form runs and per-position ``C`` is never built; with one, every state comes from the
elementwise scan and edits to ``C``, ``n`` or ``m`` propagate. An edited ``m_t`` is the
stabiliser *carried* to step ``t + 1`` (and used by the readout at ``t``); ``C~_t`` and
``n~_t`` keep the scale they were computed with (see :mod:`probe.scan_max`).

Options: ``qk_factor`` (``K H = int(d_model * qk_factor)``, default 0.5), ``v_factor`` (1.0),
``gate_soft_cap`` (15.0, ``None`` for none), ``eps`` (1e-6), ``norm_eps`` (1e-6),
``bias`` (biases on the projections and the head norm), ``chunk`` (64, chunk length).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation, Forcing, apply_forcing
from probe.scan_gla import gla_chunked, gla_readout, gla_states
from probe.scan_max import max_scan


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (identity for ``cap=None``)."""
    return x if cap is None else cap * torch.tanh(x / cap)


class MLSTM(RecurrentMixer):
    NAME = "mlstm"
    OPTIONS = {"qk_factor": 0.5, "v_factor": 1.0, "gate_soft_cap": 15.0, "eps": 1e-6, "norm_eps": 1e-6,
               "bias": False, "chunk": 64}
    HOOKED = ("q", "k", "v", "input", "forget", "output", "state_m", "state", "state_n")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o = self.options
        self.n_heads = H = cfg.n_heads
        qk, vd = int(cfg.d_model * o["qk_factor"]), int(cfg.d_model * o["v_factor"])
        if qk < H or qk % H or vd < H or vd % H:
            raise ConfigError(f"mlstm: qk width {qk} and v width {vd} (d_model * qk_factor / v_factor) must be "
                              f"positive multiples of n_heads={H}.")
        self.d_qk, self.d_v = qk // H, vd // H
        bias = bool(o["bias"])
        d = cfg.d_model
        self.W_q = nn.Linear(d, qk, bias=bias)
        self.W_k = nn.Linear(d, qk, bias=bias)
        self.W_v = nn.Linear(d, vd, bias=bias)
        self.W_ogate = nn.Linear(d, vd, bias=bias)
        self.W_igate = nn.Linear(d, H, bias=True)
        self.W_fgate = nn.Linear(d, H, bias=True)
        self.head_norm_w = nn.Parameter(torch.ones(vd))
        self.head_norm_b = nn.Parameter(torch.zeros(vd)) if bias else None
        self.out_proj = nn.Linear(vd, d, bias=bias)

    def init_special(self) -> None:
        with torch.no_grad():  # remember by default (f ~ 0.95..1), start with small input gates
            self.W_fgate.bias.copy_(torch.linspace(3.0, 6.0, self.n_heads))
            self.W_igate.bias.fill_(-2.0)

    def state_shapes(self):
        H, K, V = self.n_heads, self.d_qk, self.d_v
        return {"state": (H, K, V), "state_n": (H, K), "state_m": (H,)}

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

    def compute(self, x, state, forcing, keep):
        b, T, _ = x.shape
        H, K, V = self.n_heads, self.d_qk, self.d_v
        cap = self.options["gate_soft_cap"]
        q = apply_forcing("q", self.W_q(x).view(b, T, H, K), forcing)
        k = apply_forcing("k", self.W_k(x).view(b, T, H, K), forcing)
        v = apply_forcing("v", self.W_v(x).view(b, T, H, V), forcing)
        log_i = apply_forcing("input", soft_cap(self.W_igate(x), cap), forcing)
        log_f = apply_forcing("forget", F.logsigmoid(soft_cap(self.W_fgate(x), cap)), forcing)
        o = apply_forcing("output", torch.sigmoid(self.W_ogate(x)), forcing)

        m0 = state["state_m"]
        m, m_step = max_scan(log_f, log_i, m0, forcing.get("state_m"))
        m_prev = torch.cat([m0.unsqueeze(1), m[:, :-1]], dim=1)
        log_decay = (log_f + m_prev - m_step).clamp(max=0.0)
        k_in = k * torch.exp(log_i - m_step).unsqueeze(-1)
        out, S, final = self._memory(q, k_in, v, log_decay, state, forcing, keep)
        num, den = out[..., :V], out[..., V]
        h = num / (torch.maximum(den.abs(), torch.exp(-m)) + self.options["eps"]).unsqueeze(-1)
        hn = F.layer_norm(h, (V,), eps=self.options["norm_eps"]).reshape(b, T, H * V) * self.head_norm_w
        if self.head_norm_b is not None:
            hn = hn + self.head_norm_b
        y = self.out_proj(o * hn)
        values = {"q": q, "k": k, "v": v, "input": log_i, "forget": log_f, "output": o, "state_m": m}
        if S is not None:
            values["state"], values["state_n"] = S[..., :V], S[..., V]
        final_state = {"state": final[..., :V], "state_n": final[..., V], "state_m": m[:, -1]}
        return Computation(y, values, final_state)
