r"""``ff``: the feed-forward replacement of a sequence mixer (Lindenmaier et al. 2025).

The block's mixer slot holds a position-wise feed-forward layer, so the layer mixes no
information across positions and carries no state::

    y_t = W_out act(W_in x_t + b_in) + b_out

Hooks: ``mlp.hook_pre`` and ``mlp.hook_post`` (before/after the activation), i.e.
``blocks.{i}.mixer.mlp.hook_pre``. Options: ``d_hidden`` (default ``4 * d_model``),
``act`` (``gelu`` / ``relu`` / ``swiglu``).
"""
from __future__ import annotations

from probe.mixers.base import Mixer
from probe.mixers.options import Choice, Int
from probe.mlp import ACTIVATIONS, GATED, MLP


class FeedForward(Mixer):
    NAME = "ff"
    OPTIONS = {"d_hidden": Int(None), "act": Choice("gelu", choices=(*ACTIVATIONS, *GATED))}
    recurrent = False
    mixes_positions = False

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        self.mlp = MLP(cfg.d_model, int(self.options["d_hidden"] or 4 * cfg.d_model), self.options["act"])

    def forward(self, x, state=None):
        self.check_state(state, x)
        y, _ = self.mlp(x)
        return y, {}
