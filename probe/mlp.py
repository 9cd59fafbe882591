r"""Position-wise MLPs used in the MLP slot of a block (and by the ``ff`` mixer).

``gelu`` / ``gelu_tanh`` / ``relu``::  y = W_out act(W_in x + b_in) + b_out
``swiglu`` / ``geglu``::               y = W_out (act(W_gate x) * (W_in x))     (act = silu / gelu)
``geglu_tanh``::                        the same with tanh-approximated GELU; ``geglu_tanh_bias`` adds a
                                        bias to all three maps (RecurrentGemma's MLP)

``gelu`` is the exact (erf) GELU, ``gelu_tanh`` its tanh approximation (GPT-2's ``gelu_new``).

Hooks: ``hook_pre`` (pre-activation, ``[batch, pos, d_hidden]``) and ``hook_post``
(post-activation). Every MLP kind shares the stateful interface ``y, state = mlp(x, state)``
so that MLP-slot layers with memory (RWKV channel mixing) fit the same block; plain MLPs
return an empty state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}
GATED = {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": ACTIVATIONS["gelu_tanh"]}


class MLP(nn.Module):
    recurrent = False

    def __init__(self, d_model: int, d_hidden: int, act: str = "gelu", bias: bool | None = None):
        super().__init__()
        if act not in (*ACTIVATIONS, *GATED):
            raise ValueError(f"Unknown MLP activation {act!r}; use one of {', '.join((*ACTIVATIONS, *GATED))}.")
        self.act = act
        gated = act in GATED
        bias = not gated if bias is None else bias  # default: biases on ungated MLPs only
        self.W_in = nn.Linear(d_model, d_hidden, bias=bias)
        self.W_gate = nn.Linear(d_model, d_hidden, bias=bias) if gated else None
        self.W_out = nn.Linear(d_hidden, d_model, bias=bias)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def state_shapes(self):
        return {}

    def initial_state(self, batch, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        pre = self.hook_pre(self.W_in(x))
        if self.act in GATED:
            post = GATED[self.act](self.W_gate(x)) * pre
        else:
            post = ACTIVATIONS[self.act](pre)
        return self.W_out(self.hook_post(post)), {}
