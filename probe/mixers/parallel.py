r"""Parallel mixers: several mixers reading the same normalised input, their outputs summed.

A layout entry ``"a+b"`` (e.g. Falcon-H1's ``"attn+mamba2"``) names a block whose mixer slot holds
mixer ``a`` and mixer ``b`` side by side::

    x          = hook_mixer_in                       the block's normalised input, read by every part
    y_p, S_p'  = part_p(x, S_p)                      each part runs as it would alone, with its own hooks
    y_p        -> blocks.{l}.mixer.hook_{p}_out       each part's contribution (an edit changes the sum)
    hook_mixer_out = sum_p y_p                        what the residual stream receives

Hooks: part ``p`` is the module ``blocks.{l}.mixer.{p}``, so its hooks keep their names one level
down: ``blocks.{l}.mixer.mamba2.hook_state``, ``blocks.{l}.mixer.attn.hook_pattern``. The short site
``state`` of such a layer is its parts' memory (every ``hook_state*``, the attention part's ``hook_k`` /
``hook_v``) and any other short site is looked up in each part
(:mod:`probe.methods.support.site_hooks`); a method that reads the layer's ``hook_mixer_out`` (direct
logit attribution, patching, lenses) sees the sum, and ``hook_{p}_out`` splits it exactly into the
parts. Its memory map is the parts' maps side by side (:mod:`probe.methods.implicit.parallel`).

State: part ``p``'s state is the block-state entry ``"mixer.{p}"`` (its module path in the block),
so ``ModelState.hook_items()`` names it ``blocks.{l}.mixer.{p}.hook_<suffix>`` like its hooks, and
every part's edits propagate through its own recurrence (the parts share only their input).

``MIXERS`` (:class:`MixerRegistry`) resolves a name ``"a+b"`` of registered mixers to the class
:func:`parallel_class` builds for them (one class per combination, not listed in ``MIXERS``), so
capability flags work on it like on any mixer: ``recurrent`` / ``mixes_positions`` /
``nonlinear_state`` / ``cross_layer`` when any part has them (the cross-layer dictionary goes to the parts
that take it); ``is_attention`` is False (its output is not one
attention's heads through ``W_O``).
"""
from __future__ import annotations

import functools
from typing import ClassVar

from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.mixers.base import Mixer

#: the separator of part names in a layout entry (``"attn+mamba2"``)
SEPARATOR = "+"


def part_names(name: str) -> tuple[str, ...]:
    """The mixer names of layout entry ``name``: ``("attn", "mamba2")`` for ``"attn+mamba2"``,
    ``("qrnn",)`` for ``"qrnn"``."""
    return tuple(name.split(SEPARATOR))


class Parallel(Mixer):
    """Base of the parallel composites :func:`parallel_class` builds (see the module docstring).

    ``PARTS``: the part classes, in layout order; part ``p`` is the submodule named ``p.NAME``.
    """

    PARTS: ClassVar[tuple[type[Mixer], ...]] = ()

    def __init__(self, cfg, layer: int):
        nn.Module.__init__(self)  # a composite has no options of its own: its parts read theirs
        self.cfg, self.layer, self.options = cfg, layer, {}
        for cls in self.PARTS:
            self.add_module(cls.NAME, cls(cfg, layer))
            setattr(self, f"hook_{cls.NAME}_out", HookPoint())

    def parts(self) -> dict[str, Mixer]:
        """``{part name: part mixer}`` in layout order."""
        return {cls.NAME: getattr(self, cls.NAME) for cls in self.PARTS}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every part's state shapes, keyed ``"{part}.{suffix}"`` (``"mamba2.state"``, ``"attn.k"``)."""
        return {f"{p}.{k}": s for p, part in self.parts().items() for k, s in part.state_shapes().items()}

    def initial_state(self, batch: int, device=None, dtype=None) -> dict[str, dict[str, Tensor]]:
        """``{part name: that part's initial state}``."""
        return {p: part.initial_state(batch, device, dtype) for p, part in self.parts().items()}

    def init_special(self) -> None:
        for part in self.parts().values():
            part.init_special()

    def forward(self, x: Tensor, state: dict | None = None,
                cross: dict | None = None) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
        """``x [batch, pos, d_model]``, ``state {part name: part state or None}`` -> ``(sum of the parts'
        outputs [batch, pos, d_model], {part name: part state})``; ``cross``: the forward's cross-layer
        dictionary, handed to the parts with ``cross_layer`` (RWKV-7's value residual)."""
        state = state or {}
        total, new = None, {}
        for p, part in self.parts().items():
            if part.cross_layer:
                y, new[p] = part(x, state.get(p), cross=cross)
            else:
                y, new[p] = part(x, state.get(p))
            y = getattr(self, f"hook_{p}_out")(y)
            total = y if total is None else total + y
        return total, new


@functools.lru_cache(maxsize=None)
def parallel_class(parts: tuple[type[Mixer], ...]) -> type[Parallel]:
    """The composite mixer class running ``parts`` in parallel, named ``"a+b"`` by their names."""
    flags = {flag: any(getattr(cls, flag) for cls in parts)
             for flag in ("recurrent", "mixes_positions", "nonlinear_state", "cross_layer")}
    name = SEPARATOR.join(cls.NAME for cls in parts)
    return type(f"Parallel[{name}]", (Parallel,), {"NAME": name, "PARTS": parts, "is_attention": False, **flags})


class MixerRegistry(dict):
    """``{layout name: mixer class}``: the registered mixers, and (resolved on lookup, not listed) every
    parallel combination ``"a+b"`` of distinct registered mixers (:func:`parallel_class`)."""

    def _parallel(self, key) -> type[Parallel] | None:
        if not isinstance(key, str) or SEPARATOR not in key:
            return None
        names = part_names(key)
        if len(set(names)) != len(names) or not all(dict.__contains__(self, n) for n in names):
            return None
        return parallel_class(tuple(dict.__getitem__(self, n) for n in names))

    def __missing__(self, key):
        cls = self._parallel(key)
        if cls is None:
            raise KeyError(key)
        return cls

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or self._parallel(key) is not None

    def get(self, key, default=None):
        return self[key] if key in self else default
