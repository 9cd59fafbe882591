r"""The interface every sequence mixer implements.

::

    y, state = mixer(x, state=None)       # x: [batch, pos, d_model] -> y: [batch, pos, d_model]
    state0 = mixer.initial_state(batch)   # {name: tensor [batch, ...]}: the carried memory

so a model can run in segments (a prefix, then the suffix from the prefix's state),
generate one token at a time, and treat the state as an object of analysis.

State dictionaries are keyed by hook suffix: the entry ``"state"`` is what
``hook_state`` shows at every position, ``"state_conv"`` what ``hook_state_conv`` shows,
and so on; together the ``hook_state*`` hooks of a layer are all of its memory.

:class:`RecurrentMixer` adds the hook plumbing of :mod:`probe.mixers.edits`: a subclass
lists its per-position quantities in ``HOOKED`` (dependency order) and implements
``compute``; edits to any of them propagate.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import InputError
from probe.mixers.edits import Computation, Forcing, run_hooked


def check_state_tensors(layer: int, mixer: str, state: dict, x: Tensor) -> None:
    """Every entry of a carried ``state`` is a floating tensor on ``x``'s device, or an
    :class:`InputError` naming it (an integer state would be truncated, one on another device
    would fail deep inside the mixer)."""
    for k, v in state.items():
        where = f"Layer {layer} ({mixer}) state {k!r}"
        if not isinstance(v, Tensor):
            raise InputError(f"{where} is a {type(v).__name__}, not a tensor; pass the states returned by a "
                             "previous run of the same model.")
        if not v.is_floating_point():
            raise InputError(f"{where} has dtype {v.dtype}; states hold real numbers (a floating dtype such as "
                             f"{x.dtype}): converting would truncate them. Pass the states as returned, or "
                             "`.to(torch.float32)` them first.")
        if v.device != x.device:
            raise InputError(f"{where} is on {v.device} but the model runs on {x.device}; move the states with "
                             f"`states.to({str(x.device)!r})` (or the model with `model.to(...)`).")


class Mixer(nn.Module):
    """Base class: a sequence mixer of one block.

    Class attributes:
        NAME: the layout name (``"qrnn"``).
        OPTIONS: ``{name: Option}`` (:mod:`probe.mixers.options`): each option's default and the
            values it accepts, settable through ``ModelConfig.mixer_options``.
        default_mlp: the MLP kind this mixer's block uses unless the config says otherwise
            (``None``: the config's ``mlp``).
        recurrent: True when the mixer carries a fixed-size state (not attention / ff).
        is_attention: True for softmax attention (its block also fires ``hook_attn_out``, its
            output splits per head through ``W_O``, its memory map is its pattern).
        mixes_positions: False for a position-wise layer (``ff``): it reads no other position.
        nonlinear_state: True when the new state is a nonlinear function of the old one (LSTM,
            sLSTM): no exact implicit attention exists, so memory maps use gradients.
        WIDE_STATES: state entries kept in at least float32 when the model runs in float16 /
            bfloat16 (the memory a long recurrence accumulates into, as the reference kernels
            keep it); the other entries follow the input's dtype.
        cross_layer: True when the mixer also exchanges per-position tensors with other layers of
            the same forward (RWKV-7's value residual): its forward takes ``cross=``, a dictionary
            the model makes fresh for each forward and hands to every such layer in order. What
            passes through it is never carried between segments (it is not state).
    """

    NAME: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    default_mlp: ClassVar[str | None] = None
    recurrent: ClassVar[bool] = True
    is_attention: ClassVar[bool] = False
    mixes_positions: ClassVar[bool] = True
    nonlinear_state: ClassVar[bool] = False
    WIDE_STATES: ClassVar[tuple[str, ...]] = ()
    cross_layer: ClassVar[bool] = False

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.options = cfg.options(self.NAME)

    # -- state -----------------------------------------------------------------------
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every state tensor for one sequence at one position (no batch, no pos)."""
        return {}

    def initial_state(self, batch: int, device=None, dtype=None) -> dict[str, Tensor]:
        """The zero state for ``batch`` sequences: ``{name: [batch, *shape]}``."""
        p = next(self.parameters(), None)
        device = device if device is not None else (p.device if p is not None else None)
        dtype = dtype if dtype is not None else (p.dtype if p is not None else torch.float32)
        return {k: torch.zeros(batch, *s, device=device, dtype=self.state_dtype(k, dtype))
                for k, s in self.state_shapes().items()}

    def state_dtype(self, name: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype state entry ``name`` is kept in for inputs of ``dtype`` (see ``WIDE_STATES``)."""
        return torch.promote_types(dtype, torch.float32) if name in self.WIDE_STATES else dtype

    def check_state(self, state: dict[str, Tensor] | None, x: Tensor) -> dict[str, Tensor]:
        """Validate a carried state against this mixer; ``None`` gives the initial state."""
        if state is None:
            return self.initial_state(x.shape[0], x.device, x.dtype)
        expected = self.state_shapes()
        if not isinstance(state, dict) or set(state) != set(expected):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(f"Layer {self.layer} ({self.NAME}) expects a state with entries "
                             f"{sorted(expected)}, got {got}. Pass the states returned by a previous run "
                             "of the same model.")
        check_state_tensors(self.layer, self.NAME, state, x)
        for k, shape in expected.items():
            if tuple(state[k].shape) != (x.shape[0], *shape):
                raise InputError(f"Layer {self.layer} ({self.NAME}) state {k!r} has shape "
                                 f"{tuple(state[k].shape)}, expected {(x.shape[0], *shape)} "
                                 "([batch, ...]); was it produced with another batch size or model?")
        return {k: v.to(self.state_dtype(k, x.dtype)) for k, v in state.items()}

    def init_special(self) -> None:
        """Re-initialise parameters that need more than the model's default normal init (gate biases...)."""


class RecurrentMixer(Mixer):
    """A mixer whose per-position quantities are hooked with propagating edits.

    Subclasses set ``HOOKED`` (quantity names in dependency order; ``hook_<name>`` is created
    for each) and implement :meth:`compute`.
    """

    HOOKED: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        for name in self.hooked_names():
            setattr(self, f"hook_{name}", HookPoint())

    def hooked_names(self) -> tuple[str, ...]:
        """The quantities this instance hooks (may depend on options, e.g. no conv state for width 1)."""
        return self.HOOKED

    def compute(self, x: Tensor, state: dict[str, Tensor], forcing: Forcing, keep: set[str]) -> Computation:
        raise NotImplementedError

    def inner_hook_points(self) -> list[HookPoint]:
        """The hook points inside this mixer other than its quantities' (a gated norm's ``hook_scale``):
        ``compute`` fires them itself."""
        own = {id(getattr(self, f"hook_{name}")) for name in self.hooked_names()}
        return [m for m in self.modules() if isinstance(m, HookPoint) and id(m) not in own]

    def forward(self, x: Tensor, state: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        state = self.check_state(state, x)
        hooks = {name: getattr(self, f"hook_{name}") for name in self.hooked_names()}
        return run_hooked(self.compute, hooks, x, state, inner_hooks=self.inner_hook_points)
