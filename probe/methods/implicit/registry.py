r"""The registry of implicit-attention unrollings: mixer ``NAME`` -> :class:`Unrolling` (see
:mod:`probe.methods.implicit`). Each per-mixer module registers itself with :func:`register`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from probe.errors import ProbeError
from probe.methods.implicit.base import ImplicitAttention


@dataclass(frozen=True)
class Unrolling:
    name: str
    hooks: tuple[str, ...]
    build: Callable[..., ImplicitAttention]
    size: Callable[..., tuple[int, int]]


REGISTRY: dict[str, Unrolling] = {}


def register(name: str, hooks: tuple[str, ...], size: Callable[..., tuple[int, int]]):
    """Decorator: register ``build`` as the unrolling of mixer ``name``, reading mixer ``hooks``;
    ``size(model, layer) -> (kept, scratch)`` numbers per ``(batch, t, s)`` pair."""
    def wrap(fn):
        REGISTRY[name] = Unrolling(name, tuple(hooks), fn, size)
        return fn
    return wrap


def supported() -> list[str]:
    """Mixer names with an exact implicit attention."""
    return sorted(REGISTRY)


def unrolling(mixer_name: str) -> Unrolling:
    """The registered unrolling of ``mixer_name``, or a :class:`ProbeError` naming what is supported."""
    if mixer_name not in REGISTRY:
        raise ProbeError(f"No exact implicit attention for mixer {mixer_name!r}: it is not a linear recurrence "
                         f"with a registered unrolling. Supported: {', '.join(supported())}. For nonlinear "
                         "recurrences (lstm, slstm) use gradient influence: memory_map(..., method='gradient').")
    return REGISTRY[mixer_name]
