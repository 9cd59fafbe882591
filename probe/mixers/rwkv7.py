r"""RWKV-7 "Goose" (Peng et al. 2025): time mixing as the mixer, channel mixing in the block's MLP
slot, computed as flash-linear-attention's ``RWKV7Attention`` and ``RWKV7FeedForward`` (the
parameter names are fla's).

**Token shift.** Both halves read ``delta_t = x_{t-1} - x_t``, a width-2 causal convolution with
taps ``(1, -1)`` (:func:`probe.ops.conv_window.depthwise_conv`), whose window is the shift state
``state_shift = x_t`` (``[batch, 1, d_model]``; zeros before the first token), and lerp toward the
previous token per channel: ``x^c_t = x_t + delta_t * x_c`` for ``c in r, w, k, v, a, g``.

**Time mixing** (``rwkv7``), ``H`` heads of width ``K`` (keys, receptance) and ``V`` (values)::

    r_t = W_r x^r_t,   k~_t = W_k x^k_t,   v_t = W_v x^v_t
    log w_t = -e^{-1/2} sigmoid(w0 + W_w2 tanh(W_w1 x^w_t))       (decay w_t in (e^{-e^{-1/2}}, 1))
    a_t = sigmoid(a0 + W_a2 W_a1 x^a_t)                            (in-context learning rate)
    g_t = W_g2 sigmoid(W_g1 x^g_t)                                 (output gate)
    kk_t = normalise_per_head(k~_t * k_k)                          (unit removal key)
    k_t  = k~_t * (1 + (a_t - 1) * k_a)                            (write key)
    S_t  = S_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t k_t^T   (per head, S [V, K], as the paper)
    o_t  = S_t r_t
    y_t  = W_o [ (GroupNorm_H(o_t) + (r_t . (k_t * r_k)) v_t) * g_t ]

The state is kept transposed, ``[K, V]`` per head (flash-linear-attention's and its cache's
layout), so the recurrence is the generalised delta rule of :mod:`probe.ops.delta_rule`::

    S_t = (diag(w_t) + (a_t * kk_t)(-kk_t)^T) S_{t-1} + k_t v_t^T,    o_t = S_t^T r_t

(fla's ``dplr`` with ``q = r``, ``alpha = -kk``, ``beta = kk * a``, ``gk = log w``, scale 1).

**Value residual** (option ``value_residual``, on by default as in RWKV-7 and fla): every
``rwkv7`` layer after the first of the stack moves its values toward the first layer's,
per channel::

    nu_t = sigmoid(v0 + W_v2 W_v1 x^v_t)              (hook_value_residual, [b, pos, H, V])
    v_t  = v~_t + nu_t * (v_first_t - v~_t)            (v~_t = W_v x^v_t; fla's torch.lerp)

where ``v_first`` is the first ``rwkv7`` layer's ``hook_v`` at the same position. This is the one
quantity that crosses layers: the model hands every mixer with ``cross_layer`` a dictionary made
fresh for each forward (:class:`~probe.mixers.base.Mixer`); the first layer stores its values
there (``V_FIRST``) and the later layers read them. It is per position, not memory: nothing
about it is carried between segments (each segment's first layer recomputes its values), so
the state is still exactly the ``hook_state*`` entries and segmented runs equal whole ones. An
edit of the first layer's ``hook_v`` reaches every later layer's values; an edit of a later
layer's ``hook_value_residual`` or ``hook_v`` stays in that layer. A later layer run on its own
needs ``cross={V_FIRST: v_first}``. In a hybrid layout the first ``rwkv7`` layer plays fla's layer 0
(fla's own hybrids lerp toward zeros when layer 0 is attention; its converter refuses those).

State (after token ``t``): ``state`` ``S_t`` ``[batch, H, K, V]`` (``hook_state``: ``[b, pos, H,
K, V]``, fla's ``recurrent_state``), ``state_shift`` ``[batch, 1, d_model]`` (fla's ``conv_state``).
Memory per position when cached: ``H K V + d_model`` numbers per layer, plus ``d_model`` for the
channel mixing's shift.

Hooks (dependency order): ``hook_state_shift``; ``hook_r``, ``hook_k`` (``k~``, before the
update), ``hook_log_decay``, ``hook_iclr`` (``a``), all ``[b, pos, H, K]``; ``hook_value_residual``
(``nu``, layers after the first); ``hook_v`` (the values the recurrence writes, after the value
residual) ``[b, pos, H, V]``; ``hook_gate`` (``g``, ``[b, pos, H V]``); ``hook_state``;
``hook_recurrence_out`` (``o`` before the group norm, ``[b, pos, H, V]``). TransformerLens 4 has no
RWKV-7.

The recurrence runs position by position (:func:`~probe.ops.delta_rule.dplr_sequential`; with a
state hook or edit, :func:`~probe.ops.delta_rule.dplr_states`), in at least float32; the carried
``state`` stays float32 in half precision (``WIDE_STATES``). Fast path (no state hook, no state
edit): on CUDA with flash-linear-attention installed, its fused ``chunk_rwkv7``
(:mod:`probe.ops.fused.rwkv7`: ``r``, ``k``, ``v``, ``kk`` and ``kk * a`` in the model's dtype, the
log-decays and the state in float32; key heads up to 256 wide; a float64 model runs PyTorch); a
log-decay edited outside ``[-5, 0]`` (a decay of 0, or above 1) runs the PyTorch form.

**Channel mixing** (MLP kind ``rwkv7_channel_mix``, the default MLP of ``rwkv7`` blocks)::

    k_t = relu(W_key (x_t + delta_t * x_k))^2   (width d_mlp),    y_t = W_value k_t

with its own shift state, ``blocks.{i}.mlp.hook_state_shift``, and ``mlp.hook_k``.

Options: ``d_head`` (``None``: the model's ``d_head``; fla's default is 64), ``d_value``
(``None``: ``d_model``), ``d_decay_lora``, ``d_a_lora``, ``d_gate_lora``, ``d_value_lora`` (``None``:
fla's sizes from ``d_model`` and the head width), ``value_residual`` (True), ``norm_eps`` (1e-5; the
group norm's epsilon is ``d_head * norm_eps``, as fla's). Import: :mod:`probe.io.convert_rwkv7`
converts fla's ``RWKV7ForCausalLM`` and its checkpoint folders.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.errors import ConfigError, InputError
from probe.mixers.base import RecurrentMixer
from probe.mixers.edits import Computation, apply_forcing, run_computation
from probe.mixers.options import Flag, Int, Real
from probe.ops import conv_window
from probe.ops.delta_rule import dplr_sequential, dplr_states
from probe.ops.fused.delta_rule import MAX_K
from probe.ops.fused.registry import fused_kernel
from probe.ops.fused.rwkv7 import rwkv7_fused, takes_log_decays
from probe.ops.gla import gla_readout

#: ``e^{-1/2}``: the largest decay rate, ``log w = -e^{-1/2} sigmoid(.)``
DECAY_SCALE = math.exp(-0.5)


def lora_rank(d_model: int, coefficient: float, head_factor: float = 1.0) -> int:
    """fla's LoRA width: ``max(32, round(coefficient sqrt(d_model) head_factor / 32) 32)``."""
    return max(32, int(round(coefficient * d_model ** 0.5 * head_factor / 32) * 32))


class LoRA(nn.Module):
    """``W_2 act(W_1 x) (+ b)``, fla's low-rank projection (``lora.0`` and ``lora.2`` hold the weights)."""

    def __init__(self, d_in: int, d_out: int, rank: int, activation: nn.Module, bias: bool = True):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(d_in, rank, bias=False), activation, nn.Linear(rank, d_out, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.lora(x)


def shift_difference(x: Tensor, state: Tensor, forcing, keep) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(delta_t = x_{t-1} - x_t [b, T, d], shift windows [b, T, 1, d] or None, last window)``.

    The width-2 convolution with taps ``(1, -1)``; the windows are built (and their edits honoured)
    only when ``state_shift`` is hooked or edited."""
    taps = torch.tensor([1.0, -1.0], dtype=x.dtype, device=x.device).expand(x.shape[-1], 2)
    return conv_window.depthwise_conv(x, state, taps, None, forcing, keep, name="state_shift")


class RWKV7(RecurrentMixer):
    NAME = "rwkv7"
    OPTIONS = {"d_head": Int(None), "d_value": Int(None), "d_decay_lora": Int(None), "d_a_lora": Int(None),
               "d_gate_lora": Int(None), "d_value_lora": Int(None), "value_residual": Flag(True),
               "norm_eps": Real(1e-5)}
    HOOKED = ("state_shift", "r", "k", "log_decay", "iclr", "value_residual", "v", "gate", "state",
              "recurrence_out")
    WIDE_STATES = ("state",)
    default_mlp = "rwkv7_channel_mix"
    cross_layer = True
    #: the entry of the forward's cross-layer dictionary holding the first layer's values ``[b, pos, H, V]``
    V_FIRST = "rwkv7.v_first"

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        o, d = self.options, cfg.d_model
        self.K = cfg.d_head if o["d_head"] is None else o["d_head"]
        if d % self.K:
            raise ConfigError(f"rwkv7 option d_head={self.K} must divide d_model={d} (the keys are d_model wide, "
                              "split into heads of d_head).")
        self.H = d // self.K
        value_dim = d if o["d_value"] is None else o["d_value"]
        if value_dim % self.H:
            raise ConfigError(f"rwkv7 option d_value={value_dim} must be a multiple of the {self.H} heads.")
        self.V = value_dim // self.H
        factor = self.K / 64
        ranks = {"w": o["d_decay_lora"] or lora_rank(d, 2.5, factor), "a": o["d_a_lora"] or lora_rank(d, 2.5, factor),
                 "g": o["d_gate_lora"] or lora_rank(d, 5.0), "v": o["d_value_lora"] or lora_rank(d, 1.7, factor)}
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, d)))
        self.k_k = nn.Parameter(torch.zeros(d))
        self.k_a = nn.Parameter(torch.zeros(d))
        self.r_k = nn.Parameter(torch.zeros(self.H, self.K))
        self.r_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, value_dim, bias=False)
        self.o_proj = nn.Linear(value_dim, d, bias=False)
        self.w_lora = LoRA(d, d, ranks["w"], nn.Tanh())
        if self.mixes_first_value:
            self.v_lora = LoRA(d, value_dim, ranks["v"], nn.Identity())
        self.a_lora = LoRA(d, d, ranks["a"], nn.Identity())
        self.g_lora = LoRA(d, value_dim, ranks["g"], nn.Sigmoid(), bias=False)
        self.g_norm = nn.GroupNorm(self.H, value_dim, eps=self.K * o["norm_eps"])
        self.init_special()

    @property
    def is_first(self) -> bool:
        """True for the stack's first ``rwkv7`` layer: it hands its values to the later ones."""
        return self.layer <= next((i for i, name in enumerate(self.cfg.layout) if name == self.NAME), self.layer)

    @property
    def mixes_first_value(self) -> bool:
        """True when this layer mixes its values toward the first layer's (the value residual)."""
        return bool(self.options["value_residual"]) and not self.is_first

    def hooked_names(self) -> tuple[str, ...]:
        """``HOOKED``, with ``value_residual`` only in layers that mix toward the first layer's values."""
        return self.HOOKED if self.mixes_first_value else tuple(n for n in self.HOOKED if n != "value_residual")

    def init_special(self) -> None:
        """fla's RWKV-7 constants: ``k_k = 0.71 - 0.1 linear``, ``k_a = 1.02``, ``r_k = -0.04``, decay
        biases spread over channels (deeper layers slower) and lerp weights growing with the channel."""
        d, n = self.cfg.d_model, self.cfg.n_layers
        depth, remaining = self.layer / max(1, n - 1), 1.0 - self.layer / n
        c = torch.arange(d, dtype=torch.float32)
        linear = c / max(1, d - 1) - 0.5
        zigzag = ((c % self.K) - (self.K - 1) / 2) / max(1.0, (self.K - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        with torch.no_grad():
            for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
                getattr(self, name).copy_(1.0 - (c / d).pow(power * remaining))
            self.k_k.copy_(0.71 - linear * 0.1)
            self.k_a.fill_(1.02)
            self.r_k.fill_(-0.04)
            self.w_lora.lora[2].bias.copy_(-6 + 6 * (c / max(1, d - 1)) ** (1 + depth ** 0.3) + 0.5 + zigzag * 2.5)
            self.a_lora.lora[2].bias.copy_(-0.19 + zigzag * 0.3 + linear * 0.4)
            if self.mixes_first_value:
                value_dim = self.H * self.V
                self.v_lora.lora[2].bias.copy_(0.73 - (torch.arange(value_dim) / max(1, value_dim - 1) - 0.5) * 0.4)

    def state_shapes(self):
        return {"state": (self.H, self.K, self.V), "state_shift": (1, self.cfg.d_model)}

    def forward(self, x: Tensor, state: dict[str, Tensor] | None = None,
                cross: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(y, final state)`` as every mixer's; ``cross`` is the forward's cross-layer dictionary (the
        model makes one per forward): the first layer stores its values there under ``V_FIRST``, the
        later ones read them (module docstring, value residual)."""
        state = self.check_state(state, x)
        v_first = self._first_values(cross, x) if self.mixes_first_value else None
        hooks = {name: getattr(self, f"hook_{name}") for name in self.hooked_names()}
        out = run_computation(self.compute, hooks, x, state, per_position={} if v_first is None else {"v_first": v_first},
                              inner_hooks=self.inner_hook_points)
        if self.is_first and cross is not None:
            cross[self.V_FIRST] = out.values["v"]
        return out.y, out.final_state

    def _first_values(self, cross: dict | None, x: Tensor) -> Tensor:
        """The first layer's values ``[b, pos, H, V]`` from ``cross``, or an :class:`InputError` saying how
        to give them."""
        v_first = (cross or {}).get(self.V_FIRST)
        expected = (*x.shape[:2], self.H, self.V)
        if v_first is None or tuple(v_first.shape) != expected:
            got = "none" if v_first is None else f"shape {tuple(v_first.shape)}"
            raise InputError(f"Layer {self.layer} (rwkv7) mixes its values toward the first rwkv7 layer's (the value "
                             f"residual) and got {got}, expected {expected}. Run it inside its model, or pass "
                             f"cross={{{self.V_FIRST!r}: v_first}} with the first layer's hook_v; a model built "
                             "with mixer_options={'rwkv7': {'value_residual': False}} has none.")
        return v_first

    def _inputs(self, x: Tensor, state: dict, forcing, keep, v_first: Tensor | None) -> tuple[dict, Tensor]:
        """The hooked inputs of the recurrence and the final shift window."""
        delta, W, shift_last = shift_difference(x, state["state_shift"], forcing, keep)
        mixed = {c: torch.addcmul(x, delta, getattr(self, f"x_{c}")) for c in "rwkvag"}
        heads = lambda t: t.unflatten(-1, (self.H, -1))  # noqa: E731
        wide = torch.promote_types(x.dtype, torch.float32)
        values = {
            "r": apply_forcing("r", heads(self.r_proj(mixed["r"])), forcing),
            "k": apply_forcing("k", heads(self.k_proj(mixed["k"])), forcing),
            "log_decay": apply_forcing(
                "log_decay", heads(-DECAY_SCALE * torch.sigmoid(self.w_lora(mixed["w"]).to(wide))), forcing),
            "iclr": apply_forcing("iclr", heads(torch.sigmoid(self.a_lora(mixed["a"]))), forcing),
            "gate": apply_forcing("gate", self.g_lora(mixed["g"]), forcing),
        }
        v = heads(self.v_proj(mixed["v"]))
        if v_first is not None:
            nu = apply_forcing("value_residual", heads(torch.sigmoid(self.v_lora(mixed["v"]))), forcing)
            v = torch.lerp(v, v_first.to(v.dtype), nu)
            values["value_residual"] = nu
        values["v"] = apply_forcing("v", v, forcing)
        if W is not None:
            values["state_shift"] = W
        return values, shift_last

    def keys(self, k: Tensor, iclr: Tensor) -> tuple[Tensor, Tensor]:
        """``(kk, k)``: the unit removal key ``normalise(k~ * k_k)`` and the write key
        ``k~ (1 + (a - 1) k_a)``, from ``k~, a [b, T, H, K]``."""
        k_k, k_a = self.k_k.view(self.H, self.K).to(k.dtype), self.k_a.view(self.H, self.K).to(k.dtype)
        return F.normalize(k * k_k, dim=-1), k * (1 + (iclr - 1) * k_a)

    def readout(self, o: Tensor, r: Tensor, k: Tensor, v: Tensor, iclr: Tensor, gate: Tensor) -> Tensor:
        """``W_o [(GroupNorm(o) + (r . (k * r_k)) v) * g]``: ``o, r, k~, v, a [b, T, H, .]``, ``g [b, T, H V]``."""
        b, T = o.shape[:2]
        _, k_write = self.keys(k, iclr)
        normed = self.g_norm(o.flatten(2).reshape(b * T, -1)).view(b, T, -1)
        bonus = ((r * k_write * self.r_k).sum(-1, keepdim=True) * v).flatten(2)
        return self.o_proj((normed + bonus) * gate)

    def _kernel(self, x: Tensor, log_w: Tensor, forcing, keep):
        """flash-linear-attention's ``chunk_rwkv7`` when it may run the recurrence (no state wanted, keys
        up to ``MAX_K`` wide, a float32 recurrence, not float64, edited log-decays within the kernel's
        range), else ``None``."""
        if "state" in keep or "state" in forcing or self.K > MAX_K or log_w.dtype != torch.float32:
            return None
        kernel = fused_kernel("chunk_rwkv7", x)
        if kernel is not None and "log_decay" in forcing and not takes_log_decays(log_w):
            return None
        return kernel

    def compute(self, x, state, forcing, keep, v_first: Tensor | None = None):
        values, shift_last = self._inputs(x, state, forcing, keep, v_first)
        wide = self.state_dtype("state", x.dtype)
        r, k, v, a, log_w = (values[n].to(wide) for n in ("r", "k", "v", "iclr", "log_decay"))
        kk, k_write = self.keys(k, a)
        h0 = state["state"]
        if (kernel := self._kernel(x, log_w, forcing, keep)) is not None:
            o, last = rwkv7_fused(kernel, values["r"], log_w, k_write, values["v"], kk, a, h0)
        elif "state" in keep or "state" in forcing:
            S = dplr_states(k_write, v, log_w, kk * a, -kk, h0, forcing.get("state"))
            o, last = gla_readout(r, S), S[:, -1]
            values["state"] = S
        else:
            o, last = dplr_sequential(r, k_write, v, log_w, kk * a, -kk, h0)
        o = apply_forcing("recurrence_out", o.to(x.dtype), forcing)
        values["recurrence_out"] = o
        y = self.readout(o, values["r"], values["k"], values["v"], values["iclr"], values["gate"])
        return Computation(y, values, {"state": last, "state_shift": shift_last})


class RWKV7ChannelMix(RecurrentMixer):
    """RWKV-7 channel mixing, the MLP slot of ``rwkv7`` blocks (MLP kind ``rwkv7_channel_mix``)."""

    NAME = "rwkv7"  # shares the rwkv7 options; registered as an MLP kind, not a mixer
    HOOKED = ("state_shift", "k")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        d = cfg.d_model
        self.x_k = nn.Parameter(torch.zeros(d))
        self.key = nn.Linear(d, cfg.d_mlp, bias=False)
        self.value = nn.Linear(cfg.d_mlp, d, bias=False)
        self.init_special()

    def init_special(self) -> None:
        """fla's lerp weights ``x_k = 1 - (c / d)^((1 - layer / n_layers)^4)`` for channel ``c``."""
        d = self.cfg.d_model
        with torch.no_grad():
            self.x_k.copy_(1.0 - (torch.arange(d) / d) ** ((1.0 - self.layer / self.cfg.n_layers) ** 4))

    def state_shapes(self):
        return {"state_shift": (1, self.cfg.d_model)}

    def compute(self, x, state, forcing, keep):
        delta, W, shift_last = shift_difference(x, state["state_shift"], forcing, keep)
        k = apply_forcing("k", torch.relu(self.key(torch.addcmul(x, delta, self.x_k))).square(), forcing)
        values = {"k": k} if W is None else {"state_shift": W, "k": k}
        return Computation(self.value(k), values, {"state_shift": shift_last})
