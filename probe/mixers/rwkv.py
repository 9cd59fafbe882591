r"""RWKV-4 (Peng et al. 2023): time mixing as the mixer, channel mixing in the block's MLP slot.

**Token shift.** Both halves read the previous token's input ``x_{t-1}`` through a width-2
causal window (:mod:`probe.ops.conv_window` with ``k = 2``), so each carries a shift state
``S_t = x_t`` (``state_shift``, ``[batch, 1, d_model]``; ``x_{-1}`` is the carried value, zeros
at the start)::

    mix(x_t, mu) = mu * x_t + (1 - mu) * x_{t-1}

**Time mixing** (``rwkv``), per channel ``c`` of width ``D = d_attn``::

    r_t = sigmoid(W_r mix(x_t, mu_r)),  k_t = W_k mix(x_t, mu_k),  v_t = W_v mix(x_t, mu_v)
    decay d = exp(-w),  w = exp(time_decay) > 0;   bonus u = time_first
    wkv_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t})
    a_t = d a_{t-1} + e^{k_t} v_t,     b_t = d b_{t-1} + e^{k_t}
    y_t = W_out (r_t * wkv_t)

The exponentials overflow, so the memory is stored stabilised (:mod:`probe.ops.max_scan`):
``p_t = max(p_{t-1} - w, k_t)`` and ``num_t = a_t e^{-p_t}``, ``den_t = b_t e^{-p_t}``::

    num_t = e^{p_{t-1} - w - p_t} num_{t-1} + e^{k_t - p_t} v_t        (den_t alike with v = 1)
    q = max(p_{t-1}, u + k_t)
    wkv_t = (e^{p_{t-1} - q} num_{t-1} + e^{u + k_t - q} v_t) / (e^{p_{t-1} - q} den_{t-1} + e^{u + k_t - q})

an empty memory has ``num = den = 0`` and ``p = -1e38`` (log 0, kept finite). Every exponent
is ``<= 0``: long sequences are stable. The forward pass is parallel: the max-scan gives
``p`` at every position, then ``num`` and ``den`` are one elementwise linear scan
(:mod:`probe.ops.linear_scan`) and ``wkv`` an elementwise formula; a single token (generation) is the
same computation with ``T = 1``, i.e. the recurrent step.

State of the time mixing (after token ``t``): ``state_shift`` ``[b, 1, d_model]``,
``state_num``, ``state_den``, ``state_max`` ``[b, D]``. Hooks (dependency order):
``hook_state_shift``, ``hook_r``, ``hook_k``, ``hook_v`` ``[b, pos, D]``, ``hook_decay`` (``d``
per position, ``[b, pos, D]``; editing it at ``t`` changes that step's decay),
``hook_state_max``, ``hook_state_num``, ``hook_state_den``. An edited ``state_max`` is the
stabiliser carried to the next step; ``num``/``den`` keep the scale they were computed with.

**Channel mixing** (MLP kind ``rwkv_channel_mix``, the default MLP of ``rwkv`` blocks)::

    r_t = sigmoid(W_r mix(x_t, mu_r)),   k_t = relu(W_k mix(x_t, mu_k))^2   (width d_mlp)
    y_t = r_t * (W_v k_t)

with its own shift state, hooked as ``blocks.{i}.mlp.hook_state_shift``, plus ``mlp.hook_r``
and ``mlp.hook_k``. Options (mixer ``rwkv``): ``d_attn`` (default ``d_model``).

Fast path (no ``state_*`` hook or edit, no decay edit, not float64): on CUDA with flash-linear-attention
installed, its fused ``fused_recurrent_rwkv4``, which runs these stabilised steps one position at a
time (:mod:`probe.ops.fused.rwkv4`; ``k``, ``v`` and the state in float32).

Half precision: the decay, the max-scan, ``num``/``den`` and ``wkv`` run in float32 and the carried
``state_num``, ``state_den``, ``state_max`` stay float32 (``WIDE_STATES``), as RWKV-4's CUDA kernel
accumulates ``wkv`` in float32 whatever the input's dtype. Their hooks (and ``hook_decay``) show
float32; ``r``, ``k``, ``v``, the shift states and the output keep the input's dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Int
from probe.mixers.edits import Computation, Forcing, apply_forcing
from probe.ops import conv_window
from probe.ops.fused.registry import fused_kernel
from probe.ops.fused.rwkv4 import rwkv4_fused
from probe.ops.linear_scan import force_states, linear_scan
from probe.ops.max_scan import empty_log, max_scan


def token_shift(x: Tensor, init: Tensor, forcing: Forcing, keep: set) -> tuple[Tensor, Tensor | None]:
    """``(x_{t-1} for every t [b, T, d], shift windows [b, T, 1, d] or None)`` from ``init [b, 1, d]``.

    The windows (the ``state_shift`` at every position) are built only when hooked; an edited
    window at ``t`` is the ``x_t`` that position ``t + 1`` reads."""
    if "state_shift" not in keep and "state_shift" not in forcing:
        return torch.cat([init.to(x.dtype), x[:, :-1]], dim=1), None
    W = conv_window.windows(x, init)
    if "state_shift" in forcing:
        W = conv_window.force_windows(W, x, init, *forcing["state_shift"])
    return conv_window.previous_windows(W, init)[:, :, 0], W


def _mix(x: Tensor, prev: Tensor, mu: Tensor) -> Tensor:
    return x * mu + prev * (1 - mu)


class _Shifted(RecurrentMixer):
    """Shared state plumbing of the two RWKV halves: the token-shift state."""

    def _shift_state(self, x, state, forcing, keep):
        prev, W = token_shift(x, state["state_shift"], forcing, keep)
        final = W[:, -1] if W is not None else x[:, -1:]
        return prev, W, final


class RWKV(_Shifted):
    NAME = "rwkv"
    OPTIONS = {"d_attn": Int(None)}
    HOOKED = ("state_shift", "r", "k", "v", "decay", "state_max", "state_num", "state_den")
    WIDE_STATES = ("state_num", "state_den", "state_max")
    default_mlp = "rwkv_channel_mix"

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        d = cfg.d_model
        self.d_attn = D = int(self.options["d_attn"] or d)
        self.time_decay = nn.Parameter(torch.zeros(D))  # w = exp(time_decay)
        self.time_first = nn.Parameter(torch.zeros(D))  # u
        self.mix_k = nn.Parameter(torch.full((d,), 0.5))
        self.mix_v = nn.Parameter(torch.full((d,), 0.5))
        self.mix_r = nn.Parameter(torch.full((d,), 0.5))
        self.W_k = nn.Linear(d, D, bias=False)
        self.W_v = nn.Linear(d, D, bias=False)
        self.W_r = nn.Linear(d, D, bias=False)
        self.W_o = nn.Linear(D, d, bias=False)

    def init_special(self) -> None:
        D, n = self.d_attn, self.cfg.n_layers
        depth = self.layer / max(1, n - 1)
        with torch.no_grad():  # the RWKV-4 recipe: decay speeds spread over channels, deeper = slower
            h = torch.arange(D, dtype=torch.float32) / max(1, D - 1)
            self.time_decay.copy_(-5 + 8 * h ** (0.7 + 1.3 * depth))
            self.time_first.fill_(torch.log(torch.tensor(0.3)).item())

    def state_shapes(self):
        D = self.d_attn
        return {"state_shift": (1, self.cfg.d_model), "state_num": (D,), "state_den": (D,), "state_max": (D,)}

    def initial_state(self, batch, device=None, dtype=None):
        state = super().initial_state(batch, device, dtype)
        state["state_max"].fill_(empty_log(state["state_max"].dtype))
        return state

    def _kernel(self, x: Tensor, forcing, keep):
        """flash-linear-attention's ``fused_recurrent_rwkv4`` when it may run the WKV (no ``state_*`` hooked
        or edited, no edited decay: the kernel takes one decay per channel; not float64: it computes in
        float32), else ``None``."""
        if any(n in keep or n in forcing for n in ("state_max", "state_num", "state_den")) or "decay" in forcing:
            return None
        if self.state_dtype("state_num", x.dtype) != torch.float32:
            return None
        return fused_kernel("fused_recurrent_rwkv4", x)

    def compute(self, x, state, forcing, keep):
        b, T, _ = x.shape
        prev, W, final_shift = self._shift_state(x, state, forcing, keep)
        r = apply_forcing("r", torch.sigmoid(self.W_r(_mix(x, prev, self.mix_r))), forcing)
        k = apply_forcing("k", self.W_k(_mix(x, prev, self.mix_k)), forcing)
        v = apply_forcing("v", self.W_v(_mix(x, prev, self.mix_v)), forcing)
        values = {"r": r, "k": k, "v": v}
        if W is not None:
            values["state_shift"] = W
        wide = self.state_dtype("state_num", x.dtype)
        g = -torch.exp(self.time_decay.to(wide)).expand(b, T, -1)  # log decay per step
        if "decay" in keep or "decay" in forcing:
            values["decay"] = decay = apply_forcing("decay", torch.exp(g), forcing)
            if "decay" in forcing:
                g = torch.where(forcing["decay"][0], torch.log(decay), g)
        if (kernel := self._kernel(x, forcing, keep)) is not None:
            wkv, (num, den, p) = rwkv4_fused(kernel, self.time_decay, self.time_first, k, v, state["state_num"],
                                             state["state_den"], state["state_max"])
            final = {"num": num, "den": den, "max": p}
        else:
            wkv, states = self._wkv(g, k.to(wide), v.to(wide), state, forcing)
            values.update({f"state_{n}": s for n, s in states.items()})
            final = {n: s[:, -1] for n, s in states.items()}
        y = self.W_o((r * wkv.to(wide)).to(x.dtype))
        return Computation(y, values, {"state_shift": final_shift, **{f"state_{n}": s for n, s in final.items()}})

    def _wkv(self, g: Tensor, k: Tensor, v: Tensor, state: dict, forcing) -> tuple[Tensor, dict[str, Tensor]]:
        """``(wkv [b, T, D], {"max", "num", "den": [b, T, D]})`` by the max-scan and the linear scan, from the
        log decays ``g``, ``k``, ``v`` ``[b, T, D]`` (float32 or wider) and the carried state."""
        p0, num0, den0 = state["state_max"], state["state_num"], state["state_den"]
        p, p_step = max_scan(g, k, p0, forcing.get("state_max"))
        p_prev = torch.cat([p0.unsqueeze(1), p[:, :-1]], dim=1)
        carry = torch.exp((p_prev + g - p_step).clamp(max=0.0)).unsqueeze(-1)  # [b, T, D, 1]
        new = torch.exp(k - p_step)
        inc = torch.stack([new * v, new], dim=-1)  # [b, T, D, 2]: (num, den) increments
        if "state_num" in forcing or "state_den" in forcing:
            carry, inc = force_states(carry, inc, *_stack_forcing(forcing, inc))
        nd = linear_scan(carry, inc, torch.stack([num0, den0], dim=-1).to(inc.dtype))
        num, den = nd[..., 0], nd[..., 1]

        num_prev = torch.cat([num0.unsqueeze(1), num[:, :-1]], dim=1)
        den_prev = torch.cat([den0.unsqueeze(1), den[:, :-1]], dim=1)
        uk = self.time_first.to(k.dtype) + k
        top = torch.maximum(p_prev, uk)
        e1, e2 = torch.exp(p_prev - top), torch.exp(uk - top)
        wkv = (e1 * num_prev + e2 * v) / (e1 * den_prev + e2)
        return wkv, {"max": p, "num": num, "den": den}


def _stack_forcing(forcing: Forcing, like: Tensor) -> tuple[Tensor, Tensor]:
    """The (mask, values) of edited ``state_num`` / ``state_den`` as one ``[b, T, D, 2]`` pair."""
    masks, vals = [], []
    for key in ("state_num", "state_den"):
        mask, val = forcing.get(key, (torch.zeros(like.shape[:-1], dtype=torch.bool, device=like.device),
                                      like.new_zeros(like.shape[:-1])))
        masks.append(mask)
        vals.append(val.to(like.dtype))
    return torch.stack(masks, dim=-1), torch.stack(vals, dim=-1)


class RWKVChannelMix(_Shifted):
    """RWKV channel mixing, the MLP slot of ``rwkv`` blocks (MLP kind ``rwkv_channel_mix``)."""

    NAME = "rwkv"  # shares the rwkv options; registered as an MLP kind, not a mixer
    HOOKED = ("state_shift", "r", "k")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        d, hidden = cfg.d_model, cfg.d_mlp
        self.mix_k = nn.Parameter(torch.full((d,), 0.5))
        self.mix_r = nn.Parameter(torch.full((d,), 0.5))
        self.W_k = nn.Linear(d, hidden, bias=False)
        self.W_r = nn.Linear(d, d, bias=False)
        self.W_v = nn.Linear(hidden, d, bias=False)

    def state_shapes(self):
        return {"state_shift": (1, self.cfg.d_model)}

    def compute(self, x, state, forcing, keep):
        prev, W, final_shift = self._shift_state(x, state, forcing, keep)
        r = apply_forcing("r", torch.sigmoid(self.W_r(_mix(x, prev, self.mix_r))), forcing)
        k = apply_forcing("k", torch.relu(self.W_k(_mix(x, prev, self.mix_k))).square(), forcing)
        values = {"r": r, "k": k}
        if W is not None:
            values["state_shift"] = W
        return Computation(r * self.W_v(k), values, {"state_shift": final_shift})
