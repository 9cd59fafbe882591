r"""The registry of implicit-attention unrollings: mixer ``NAME`` -> :class:`Unrolling` (see
:mod:`probe.methods.implicit`). Each per-mixer module registers itself with :func:`register`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from probe.errors import ProbeError
from probe.methods.implicit.base import ImplicitAttention
from probe.methods.implicit.parallel import compose
from probe.mixers.parallel import part_names


@dataclass(frozen=True)
class Unrolling:
    name: str
    hooks: tuple[str, ...]
    build: Callable[..., ImplicitAttention]
    size: Callable[..., tuple[int, int]]


class UnrollingRegistry(dict):
    """``{mixer name: Unrolling}``; a parallel layout entry ``"a+b"`` whose parts are all registered
    resolves (on lookup, not listed) to their maps side by side (:mod:`probe.methods.implicit.parallel`)."""

    def _parallel(self, name) -> Unrolling | None:
        parts = part_names(name) if isinstance(name, str) and "+" in name else ()
        if not parts or not all(dict.__contains__(self, p) for p in parts):
            return None
        return Unrolling(name, *compose(name, [dict.__getitem__(self, p) for p in parts]))

    def __missing__(self, name):
        found = self._parallel(name)
        if found is None:
            raise KeyError(name)
        return found

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self._parallel(name) is not None


REGISTRY: dict[str, Unrolling] = UnrollingRegistry()


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
