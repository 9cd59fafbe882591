r"""``moe``: a mixture of SwiGLU experts in the block's MLP slot (MLP kind ``moe``).

For one position with input ``x`` (``[d_model]``), ``E = n_experts`` experts of hidden width
``d_expert`` and ``k = top_k``::

    l           = W_router x                                   router logits       [E]
    expert_e(x) = W_out[e] (silu(W_gate[e] x) * (W_in[e] x))   one SwiGLU per expert
    w           = route(l)                                     dense weights [E], zero off the chosen k
    y           = sum_e w_e expert_e(x)  (+ sigmoid(g . x) * shared(x))

``route`` is one of three routers (option ``router``), with ``S`` the chosen set of ``k`` experts:

``softmax`` (Jamba, Mixtral, Qwen3-Next)::   p = softmax(l);  S = top-k of p;  w_S = p_S
``topk_softmax`` (Granite)::                  S = top-k of l;  w_S = softmax(l_S)
``sigmoid`` (DeepSeek-V3, Kimi Linear, NemotronH)::
                                              p = sigmoid(l);  S = top-k of p + b;  w_S = p_S

where ``b`` is ``selection_bias`` (transformers' ``e_score_correction_bias``): it chooses the
experts and never weights them. Then, for every router, ``renormalize`` divides ``w_S`` by its sum
(``+ 1e-20``; Qwen3-Next's ``norm_topk_prob``, Kimi's ``moe_renormalize``) and
``routed_scaling_factor`` multiplies it. Grouped selection (DeepSeek-V3's ``n_group`` /
``topk_group``): the experts fall into ``n_group`` equal groups in order, a group scores the sum of
its two best selection scores, and ``S`` is chosen among the experts of the best ``topk_group``
groups only. The router's softmax / sigmoid and the weights run in at least float32 (as the references
do); the weights come back in the input's dtype.

The shared expert (``d_shared > 0``, Qwen3-Next / Kimi / NemotronH) is a SwiGLU MLP every
position uses; ``shared_gate`` multiplies it by ``sigmoid(g . x)`` (Qwen3-Next's
``shared_expert_gate``).

Compute: one expert at a time on the positions routed to it (an index, its SwiGLU, an
``index_add``), so the cost grows with ``k``, not with ``E``.

Continuity: with ``k < E`` the output jumps where the chosen set changes (an expert leaves with a
non-zero weight), so path methods built on gradients (integrated gradients) miss those jumps and
their completeness fails across a routing switch; ``continuous`` (``k == E``) says when it cannot.

Hooks (``blocks.{i}.mlp.``...), every one position-wise, ``[batch, pos, ...]``:
    ``hook_router_logits``  ``l``, ``[batch, pos, E]``. An edit re-routes: the choice of ``S`` and the
                            weights are recomputed from the edited logits (the selection bias still
                            added for the choice).
    ``hook_expert_weights`` ``w``, ``[batch, pos, E]``, zero off the chosen experts (after
                            renormalising and scaling). The output is exactly ``sum_e w_e expert_e(x)``
                            for the hooked ``w``: scaling an entry re-weights that expert, zeroing it
                            drops the expert, and a non-zero value at an unchosen expert routes the
                            position to it (experts with weight exactly zero are not run). Gradients
                            reach the non-zero entries only.
    ``hook_shared_out``     the shared term added to ``y`` (gate included), ``[batch, pos, d_model]``;
                            with a shared expert only. The shared MLP's own ``shared.hook_pre`` /
                            ``shared.hook_post`` are its SwiGLU's hidden activations.

TransformerLens 4: its MoE router bridge fires ``hook_out`` (here ``hook_router_logits``) and the same
dense ``hook_expert_weights`` ``[tokens, E]``; there an edit re-takes the top-k of the edited tensor,
here every non-zero entry counts (routing to more than ``k`` experts is possible). TL's
``hook_expert_indices`` are the non-zero columns of ``hook_expert_weights``.

Options (``ModelConfig.mixer_options["moe"]``): ``n_experts`` (8), ``top_k`` (2), ``d_expert``
(None: the model's ``d_mlp``), ``router`` (``softmax``), ``renormalize`` (False),
``routed_scaling_factor`` (1.0), ``selection_bias`` (False: a ``[E]`` buffer ``b``, zeros at init),
``n_group`` (1), ``topk_group`` (1), ``d_shared`` (0: no shared expert), ``shared_gate`` (False).

Weights: ``router.weight`` ``[E, d_model]``; ``W_gate``, ``W_in`` ``[E, d_expert, d_model]``;
``W_out`` ``[E, d_model, d_expert]`` (transformers' ``gate_up_proj`` is ``W_gate`` stacked over
``W_in``); ``shared`` (a :class:`probe.mlp.MLP` ``swiglu``); ``shared_gate`` ``[1, d_model]``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformer_lens.hook_points import HookPoint

from probe.errors import ConfigError
from probe.mixers.options import Choice, Flag, Int, Real
from probe.mlp import MLP

ROUTERS = ("softmax", "topk_softmax", "sigmoid")


class MixtureOfExperts(nn.Module):
    """The ``moe`` MLP kind, built as ``MixtureOfExperts(cfg, layer)``; ``y, {} = moe(x)``."""

    NAME = "moe"
    OPTIONS = {"n_experts": Int(8), "top_k": Int(2), "d_expert": Int(None),
               "router": Choice("softmax", choices=ROUTERS), "renormalize": Flag(False),
               "routed_scaling_factor": Real(1.0), "selection_bias": Flag(False), "n_group": Int(1),
               "topk_group": Int(1), "d_shared": Int(0, low=0), "shared_gate": Flag(False)}
    recurrent = False

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.options = o = cfg.options(self.NAME)
        self.n_experts, self.top_k = o["n_experts"], o["top_k"]
        self.d_expert = cfg.d_mlp if o["d_expert"] is None else o["d_expert"]
        _check(o, self.d_expert)
        self.continuous = self.top_k == self.n_experts  # no routing switch can make the output jump
        self.init_std = cfg.init_std
        d, E, h = cfg.d_model, self.n_experts, self.d_expert
        self.router = nn.Linear(d, E, bias=False)
        self.W_gate = nn.Parameter(torch.empty(E, h, d))
        self.W_in = nn.Parameter(torch.empty(E, h, d))
        self.W_out = nn.Parameter(torch.empty(E, d, h))
        if o["selection_bias"]:
            self.register_buffer("selection_bias", torch.zeros(E))
        else:
            self.selection_bias = None
        self.shared = MLP(d, o["d_shared"], "swiglu") if o["d_shared"] else None
        self.shared_gate = nn.Linear(d, 1, bias=False) if o["d_shared"] and o["shared_gate"] else None
        self.hook_router_logits = HookPoint()
        self.hook_expert_weights = HookPoint()
        if self.shared is not None:
            self.hook_shared_out = HookPoint()
        self.init_special()

    def init_special(self) -> None:
        """Expert weights ``N(0, init_std)`` (the model's init covers ``nn.Linear`` only)."""
        with torch.no_grad():
            for w in (self.W_gate, self.W_in, self.W_out):
                nn.init.normal_(w, std=self.init_std)

    def state_shapes(self) -> dict:
        return {}

    def initial_state(self, batch, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        logits = self.hook_router_logits(self.router(x))
        weights = self.hook_expert_weights(self.route(logits).to(x.dtype))
        y = self.experts(x, weights)
        if self.shared is not None:
            shared, _ = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            y = y + self.hook_shared_out(shared)
        return y, {}

    def route(self, logits: Tensor) -> Tensor:
        """Dense routing weights ``[..., E]`` (float32, or float64 for a float64 model) from router logits
        ``[..., E]``: zero off the chosen experts."""
        o = self.options
        l = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if o["router"] == "topk_softmax":
            chosen = self.choose(l)
            picked = torch.softmax(l.gather(-1, chosen), dim=-1)
        else:
            p = torch.softmax(l, dim=-1) if o["router"] == "softmax" else torch.sigmoid(l)
            chosen = self.choose(p if self.selection_bias is None else p + self.selection_bias.to(p.dtype))
            picked = p.gather(-1, chosen)
        if o["renormalize"]:
            picked = picked / (picked.sum(-1, keepdim=True) + 1e-20)
        picked = picked * o["routed_scaling_factor"]
        return torch.zeros_like(l).scatter(-1, chosen, picked)

    def choose(self, scores: Tensor) -> Tensor:
        """Indices ``[..., k]`` of the chosen experts: the top-k of ``scores`` within the best groups."""
        G = self.options["n_group"]
        if G > 1:
            grouped = scores.unflatten(-1, (G, self.n_experts // G))
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # [..., G]
            best = group_score.topk(self.options["topk_group"], dim=-1).indices
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter(-1, best, True)
            scores = scores.masked_fill(~keep.repeat_interleave(self.n_experts // G, dim=-1), float("-inf"))
        return scores.topk(self.top_k, dim=-1).indices

    def experts(self, x: Tensor, weights: Tensor) -> Tensor:
        """``sum_e weights[..., e] * expert_e(x)``, each expert run on the positions with a non-zero weight."""
        flat, w = x.reshape(-1, x.shape[-1]), weights.reshape(-1, self.n_experts)
        out = torch.zeros_like(flat)
        routed = w != 0
        for e in routed.any(0).nonzero().flatten().tolist():
            rows = routed[:, e].nonzero().flatten()
            xe = flat[rows]
            hidden = F.silu(xe @ self.W_gate[e].T) * (xe @ self.W_in[e].T)
            out = out.index_add(0, rows, (hidden @ self.W_out[e].T) * w[rows, e, None])
        return out.reshape(x.shape)


def _check(o: dict, d_expert: int) -> None:
    """The relations between options that no single option's declaration can check."""
    E, k, G = o["n_experts"], o["top_k"], o["n_group"]
    if d_expert <= 0:
        raise ConfigError(f"moe needs an expert width: set mixer_options['moe']['d_expert'] or d_mlp > 0 "
                          f"(got {d_expert}).")
    if E % G:
        raise ConfigError(f"moe n_experts={E} is not divisible by n_group={G}; the experts split into equal groups.")
    if o["topk_group"] > G:
        raise ConfigError(f"moe topk_group={o['topk_group']} exceeds n_group={G}.")
    if k > o["topk_group"] * (E // G):
        raise ConfigError(f"moe top_k={k} exceeds the {o['topk_group'] * (E // G)} experts it may choose from "
                          f"(n_experts={E}, n_group={G}, topk_group={o['topk_group']}); lower top_k.")
    if o["shared_gate"] and not o["d_shared"]:
        raise ConfigError("moe shared_gate=True needs a shared expert: set d_shared > 0.")
