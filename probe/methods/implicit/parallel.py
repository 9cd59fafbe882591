r"""Implicit attention of parallel mixers (``"attn+mamba2"``, :mod:`probe.mixers.parallel`): the parts' maps
side by side.

A parallel layer's output is the sum of its parts' outputs, ``y_t = sum_p y_t^p``, and each part ``p``
with a registered unrolling reads its past as ``y_t^p = project_p(sum_s A^p[t, s] v_s^p)``. The layer's
map stacks the parts' matrices along the head axis (``[batch, H_1 + H_2 + ..., t, s]``: the attention
part's heads, then the Mamba-2 part's), and its reconstruction is the sum of the parts'
reconstructions, checked against the layer's ``hook_mixer_out`` like any other map.

Each part's unrolling is the one registered for it, run on a view of the model in which layer ``l``'s
mixer is that part and its hooks are the part's (``blocks.{l}.mixer.{p}.hook_*``); hook names of the
composite are ``"{p}.{suffix}"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from probe.methods.implicit.base import ImplicitAttention
from probe.mixers.parallel import part_names


class _PartView:
    """The model as seen by part ``part`` of layer ``layer``: ``blocks[layer].mixer`` is the part (and
    ``attention_output(layer)`` its ``W_O``); every other attribute is the model's."""

    def __init__(self, model, layer: int, part):
        self._model, self._layer, self._part = model, layer, part

    @property
    def blocks(self) -> dict:
        return {self._layer: _Slot(self._part)}

    def attention_output(self, layer: int) -> tuple[Tensor, Tensor | None]:
        return self._part.W_O, self._part.W_o.bias

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass
class _Slot:
    mixer: object


@dataclass
class ParallelAttention(ImplicitAttention):
    """The parts' :class:`ImplicitAttention` (``parts``) stacked along the head axis; the output is
    rebuilt as the sum of the parts' (the signals of different parts have different layouts, so
    there is no composite signal)."""

    parts: list[ImplicitAttention] = field(default_factory=list)

    def reconstruct(self) -> Tensor:
        return sum(p.reconstruct() for p in self.parts)

    def errors(self, mixer_out: Tensor) -> dict[str, float]:
        rebuilt = self.reconstruct()
        return {"output": float((rebuilt - mixer_out).abs().max() / mixer_out.abs().max().clamp_min(1e-30))}

    def mix(self) -> Tensor:
        raise TypeError("a parallel layer's parts read values of different shapes; mix each of .parts.")


def compose(name: str, unrollings: list) -> tuple[tuple[str, ...], object, object]:
    """``(hooks, build, size)`` of parallel layout entry ``name`` from its parts' unrollings (in order)."""
    names = part_names(name)
    hooks = tuple(f"{p}.{h}" for p, u in zip(names, unrollings) for h in u.hooks)

    def views(model, layer):
        mixer = model.blocks[layer].mixer
        return [(p, u, _PartView(model, layer, getattr(mixer, p))) for p, u in zip(names, unrollings)]

    def size(model, layer) -> tuple[int, int]:
        sizes = [u.size(view, layer) for _, u, view in views(model, layer)]
        return sum(k for k, _ in sizes), max(s for _, s in sizes)

    def build(model, layer, hooks_by_name, x) -> ImplicitAttention:
        parts = [u.build(view, layer, {h: hooks_by_name[f"{p}.{h}"] for h in u.hooks}, x)
                 for p, u, view in views(model, layer)]
        skips = [p.skip if p.skip is not None else p.matrix.new_zeros(p.matrix.shape[:-1]) for p in parts]
        label = ", ".join(f"{p} {p_ia.matrix.shape[1]}" for p, p_ia in zip(names, parts))
        return ParallelAttention(
            torch.cat([p.matrix for p in parts], dim=1), parts[0].values, "", None, parts[0].project,
            f"head ({label})", " | ".join(p.value_label for p in parts),
            " + ".join(f"[{p}] {p_ia.description}" for p, p_ia in zip(names, parts)),
            skip=torch.cat(skips, dim=1) if any(p.skip is not None for p in parts) else None, parts=parts)

    return hooks, build, size
