r"""What one run of a recurrent mixer's ``compute`` returns, and how quantities are forced in it.

``compute(x, state, forcing, keep) -> Computation`` (:mod:`probe.mixers.edits`): ``forcing[name] =
(mask, values)`` makes quantity ``name`` take ``values`` wherever ``mask`` is True, everything downstream
following; ``keep`` names the quantities the caller needs in ``Computation.values``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Computation", "Forcing"]

Forcing = dict[str, tuple[Tensor, Tensor]]


@dataclass
class Computation:
    """Result of one run of a mixer's ``compute``.

    Attributes:
        y: the mixer output ``[batch, pos, d_model]``.
        values: per-position quantities ``{name: [batch, pos, ...]}`` (at least those asked for).
        final_state: the state after the last position ``{name: [batch, ...]}``.
    """

    y: Tensor
    values: dict[str, Tensor]
    final_state: dict[str, Tensor]
