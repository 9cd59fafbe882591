r"""HGRN2: gated linear RNN with outer-product state expansion (Qin et al. 2024), computed as
flash-linear-attention's ``HGRN2Attention`` (the BabyHGRN model of the seed paper).

Heads ``H = d_model / e`` of key and value width ``e = expand_ratio``; per layer a lower
bound ``lb in [0, 1)^{d_model}`` on the forget gate, larger in deeper layers::

    q_t = silu(W_q x_t)                                   output gate, used as the query
    f_t = lb + (1 - lb) * sigmoid(W_f x_t)                forget gate (computed in log space:
          g_t = log f_t = logaddexp(log lb, log1p(-lb) + logsigmoid(W_f x_t)))
    k_t = 1 - f_t                                         input gate, used as the key
    v_t = W_i x_t                                         the input, used as the value
    S_t = diag(f_t) S_{t-1} + k_t^T v_t                   per head, [e, e]
    o_t = e^{-1/2} q_t S_t                                per head, concatenated to [d_model]
    y_t = W_o RMSNorm_{eps=1e-5}(o_t)                     (g_norm: affine, eps fixed at 1e-5)

This is the gated linear attention of :mod:`probe.ops.gla` with ``log_decay = g``.

State: ``state`` = S_t, ``[batch, heads, e, e]`` (``hook_state``: ``[batch, pos, heads, e, e]``);
``d_model * e`` numbers per position and layer. Hooks, in dependency order: ``hook_q``
(the output gate, ``[b, pos, heads, e]``), ``hook_lower_bound`` (lb broadcast to every position,
``[b, pos, heads, e]``; editing it at a position changes that position's forget gate),
``hook_forget`` (f), ``hook_input`` (k = 1 - f), ``hook_value`` (v), ``hook_state`` (S); the
normalisation is ``g_norm.hook_scale`` / ``g_norm.hook_normalized``.

Fast path (no state hook, no state edit): on CUDA with flash-linear-attention installed, its fused
``chunk_gla`` (:mod:`probe.ops.fused.gla`); elsewhere the chunked form :func:`probe.ops.gla.gla_chunked`
(``mixer.method = "sequential"`` selects the step-by-step reference instead). With a state hook,
every state is built by the elementwise scan (edits propagate through
:func:`probe.ops.linear_scan.force_states`), on a GPU in long blocks of whole chunks rebuilt from
their boundary states (:mod:`probe.ops.fused.capture`).

The lower bound: fla keeps one trainable matrix ``model.lower_bounds [n_layers, d_model]`` at
model level and gives layer ``l`` the row ``(softmax(lower_bounds, 0).cumsum(0) -
softmax(lower_bounds, 0)[0])[l]`` (zero for layer 0, increasing with depth). A mixer here cannot
see the model, so each layer holds its own row of those *values* as the parameter
``lower_bound [d_model]`` (clamped to [0, 1] when used); :mod:`probe.io.convert_hgrn2` computes
them from fla's matrix. The default, ``layer / n_layers``, is exactly what fla's zero-initialised
matrix gives. Options: ``expand_ratio`` (e, default ``d_head``).

Half precision: the gates (``lb``, ``g``, ``f``, ``k``), the recurrence and ``o`` run in float32 and the
carried ``state`` stays float32 (``WIDE_STATES``), as fla's kernels accumulate: in bfloat16 a forget
gate above ``1 - 2^-9`` rounds to exactly 1, so ``k = 1 - f`` is 0 and a slow memory stores nothing.
Those hooks show float32 (``q`` and ``v`` the input's dtype); ``o`` is rounded to the input's dtype
before ``g_norm``, and the output is in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError
from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Int
from probe.mixers.edits import Computation, apply_forcing
from probe.norm import RMSNorm
from probe.ops.fused import capture_block, fused_kernel, gla_fused
from probe.ops.gla import gla_chunked, gla_readout, gla_sequential, gla_states

#: fla's g_norm uses this epsilon whatever the model's norm_eps
G_NORM_EPS = 1e-5
#: positions per block of the every-state scan on the CPU (:func:`probe.ops.gla.gla_states`)
GLA_STATES_BLOCK = 128


def forget_log(f_pre: Tensor, lower_bound: Tensor) -> Tensor:
    """``log(lb + (1 - lb) sigmoid(f_pre))``, computed as fla does (exact ``logsigmoid`` where lb = 0)."""
    ls = F.logsigmoid(f_pre)
    positive = lower_bound > 0
    safe = torch.where(positive, lower_bound, torch.ones_like(lower_bound))  # no log(0) anywhere
    bounded = torch.logaddexp(safe.log(), torch.log1p(-safe) + ls)
    return torch.where(positive, bounded, ls)


class HGRN2(RecurrentMixer):
    NAME = "hgrn2"
    OPTIONS = {"expand_ratio": Int(None)}
    HOOKED = ("q", "lower_bound", "forget", "input", "value", "state")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        e = cfg.d_head if self.options["expand_ratio"] is None else self.options["expand_ratio"]
        if not isinstance(e, int) or isinstance(e, bool) or e < 1 or cfg.d_model % e:
            raise ConfigError(f"hgrn2 option expand_ratio must be a positive integer dividing d_model="
                              f"{cfg.d_model}, got {e!r}.")
        self.e, self.heads = e, cfg.d_model // e
        d = cfg.d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.f_proj = nn.Linear(d, d, bias=False)
        self.i_proj = nn.Linear(d, d, bias=False)
        self.g_norm = RMSNorm(d, G_NORM_EPS)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lower_bound = nn.Parameter(torch.empty(d))
        self.method = "auto"
        self.init_special()

    def init_special(self) -> None:
        with torch.no_grad():
            self.lower_bound.fill_(self.layer / self.cfg.n_layers)

    def state_shapes(self):
        return {"state": (self.heads, self.e, self.e)}

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, self.e))

    def compute(self, x, state, forcing, keep):
        b, T, _ = x.shape
        q = apply_forcing("q", self._heads(F.silu(self.q_proj(x))), forcing)
        wide = self.state_dtype("state", x.dtype)
        lb = self._heads(self.lower_bound.clamp(0.0, 1.0).to(wide)).expand(b, T, -1, -1)
        if "lower_bound" in forcing or "lower_bound" in keep:
            lb = apply_forcing("lower_bound", lb.clone(), forcing)
        g = forget_log(self._heads(self.f_proj(x)).to(wide), lb)
        f = g.exp()
        if "forget" in forcing:
            f = apply_forcing("forget", f, forcing)
            g = f.log()
        k = apply_forcing("input", 1 - f, forcing)
        v = apply_forcing("value", self._heads(self.i_proj(x)), forcing)
        scale = self.e ** -0.5
        values = {"q": q, "forget": f, "input": k, "value": v}
        if "lower_bound" in keep:
            values["lower_bound"] = lb
        q, v = q.to(wide), v.to(wide)
        if "state" in keep or "state" in forcing:
            block = capture_block(T, state["state"].numel(), x.is_cuda, GLA_STATES_BLOCK)  # long blocks on a GPU
            S = gla_states(k, v, f, state["state"], forcing.get("state"), block=block)
            o, last = gla_readout(q, S, scale), S[:, -1]
            values["state"] = S
        elif self.method == "sequential":
            o, last = gla_sequential(q, k, v, g, state["state"], scale)
        elif (kernel := fused_kernel("chunk_gla", x)) is not None:
            o, last = gla_fused(kernel, q.to(x.dtype), k, v.to(x.dtype), g, state["state"], scale)
        else:
            o, last = gla_chunked(q, k, v, g, state["state"], scale)
        y = self.o_proj(self.g_norm(o.flatten(2).to(x.dtype)))
        return Computation(y, values, {"state": last})
