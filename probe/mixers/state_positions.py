r"""States at asked positions only: what ``run_with_cache(state_positions=...)`` runs in every recurrent mixer.

Under :func:`states_at` (the model enters it), each ``hook_state*`` of a recurrent mixer fires with the
states after the asked positions only, ``[batch, P, ...]`` in the order asked, instead of every
position's. Where all ``T`` states would take more than ``WHOLE_RUN_BYTES`` the mixer never holds
them: for ``P <= MAX_SEGMENTS`` positions ``p_1 < ... < p_P`` it runs its plain forward (the fused
kernel on a GPU, the chunked form on the CPU) in the pieces the positions cut::

    [0, p_1]  (p_1, p_2]  ...  (p_P, T)      each from the previous piece's final state

and the final state of the piece ending at ``p_i`` is the asked state. Capturing ``P`` states costs a
forward in ``P + 1`` pieces plus writing the states. For more positions, for small states (whose
writing costs less than running ``P + 1`` pieces), or when a hook inside the mixer must fire once over
the whole sequence, the mixer materialises every state and keeps the asked ones.

Edits keep their meaning: a hook that changes the state at ``p_i`` changes the output read from it at
``p_i`` and every later position as if the recurrence had carried the edited value. After the hook
changed it, ``p_i`` runs as a piece of its own with its states kept and the edited elements forced (or
they are forced at ``p_i`` of the whole-sequence run), exactly as an edit of the full
``[batch, pos, ...]`` tensor is (:mod:`probe.mixers.edits`); edits of the other
per-position quantities are cut into the pieces with them. Where a position is asked twice, the
later entry's edits win.

The segmented run adds up the same recurrence in another grouping than the whole-sequence one, so its
states equal the full capture's to rounding (not bit for bit).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from probe.errors import InputError
from probe.hooks import is_state_hook
from probe.mixers.computation import Computation, Forcing

__all__ = ["states_at", "checked", "asked_positions", "StatesAtPositions", "run_in_pieces", "piece",
           "rerun_after_state_edits", "every_position_bytes", "MAX_SEGMENTS", "WHOLE_RUN_BYTES",
           "is_state_quantity"]

#: the most asked positions run as segments; more materialise every state and keep the asked ones
MAX_SEGMENTS = 64
#: asked states whose every-position tensors would take at most this many bytes (batch included) are
#: read from the whole-sequence run: small states cost less to write than ``P + 1`` pieces cost to run
WHOLE_RUN_BYTES = 16 << 20

_ASKED: ContextVar[object | None] = ContextVar("probe_state_positions", default=None)


@contextmanager
def states_at(positions: object) -> Iterator[None]:
    """Within this block every state hook fires with the states after ``positions`` only (an int, a
    sequence of ints, a 1-D integer tensor or a slice; negative ints count from the end). A request
    that is no such thing, or asks for no position, is an :class:`InputError` here."""
    token = _ASKED.set(checked(positions))
    try:
        yield
    finally:
        _ASKED.reset(token)


def checked(spec: object) -> list[int] | slice:
    """``spec`` as a slice or a list of ints (range unchecked: the input's length decides it), or an
    :class:`InputError` naming what is wrong with it."""
    if isinstance(spec, slice):
        return spec
    items = spec.tolist() if isinstance(spec, Tensor) else spec
    if isinstance(items, (int, bool)) or not isinstance(items, Sequence) or isinstance(items, str):
        items = [items]
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in items):
        raise InputError(f"state_positions={spec!r} does not index positions; give ints, a list of them, a 1-D "
                         "integer tensor or a slice.")
    if not items:
        raise InputError("state_positions is empty: it asks for the states at no position. Give at least one, "
                         "or leave the states out with names_filter.")
    return list(items)


def is_state_quantity(name: str) -> bool:
    """True for a mixer quantity that is part of the carried memory (its hook is ``hook_state*``)."""
    return is_state_hook(f"hook_{name}")


def every_position_bytes(T: int, state: dict[str, Tensor], names) -> int:
    """The bytes the per-position tensors of the state quantities ``names`` take over ``T`` positions
    (``state``: the carried state, one position's worth, batch included)."""
    return T * sum(state[n].numel() * state[n].element_size() for n in names if n in state)


def asked_positions(T: int) -> list[int] | None:
    """The positions asked by the enclosing :func:`states_at`, as indices in ``[0, T)`` in the order
    asked (``None`` outside one). A position outside the input is an :class:`InputError`."""
    spec = _ASKED.get()
    if spec is None:
        return None
    if isinstance(spec, slice):
        out = list(range(T))[spec]
        if not out:
            raise InputError(f"state_positions={spec!r} selects none of the {T} positions of this input.")
        return out
    if not all(-T <= p < T for p in spec):
        shown = spec[0] if len(spec) == 1 else spec
        raise InputError(f"state_positions={shown!r} does not index the {T} positions of this input; give "
                         "ints in range, a list of them or a slice.")
    return [p % T for p in spec]


class StatesAtPositions:
    """A mixer's ``compute(x, state, forcing, keep)`` whose state quantities hold the asked positions only.

    Args:
        compute: the mixer's compute (:mod:`probe.mixers.edits`); its values of every state quantity
            ``n`` are the states after each position, and ``final_state[n]`` the state after the last.
        positions: indices in ``[0, T)`` in the order asked (repeats allowed).
        per_position: further per-position inputs ``{keyword: [b, T, ...]}`` handed to ``compute``
            (cut into segments with ``x``).
        segments: ``False`` always runs the whole sequence (a hook inside ``compute`` must fire once).

    ``values[n]`` of a state quantity is ``[b, P, ...]``; a forcing of it is ``(mask, values)`` of that
    shape. Other quantities and ``y`` keep every position.
    """

    def __init__(self, compute: Callable[..., Computation], positions: list[int],
                 per_position: dict[str, Tensor] | None = None, segments: bool = True):
        self.compute, self.per_position = compute, per_position or {}
        self.segments = segments
        self.sorted = sorted(set(positions))
        rank = {p: i for i, p in enumerate(self.sorted)}
        self.index = [rank[p] for p in positions]  # asked entry -> sorted position

    def __call__(self, x: Tensor, state: dict[str, Tensor], forcing: Forcing, keep: set[str]) -> Computation:
        states = {n for n in keep | set(forcing) if is_state_quantity(n)}
        at_sorted = {n: self._to_sorted(*forcing[n]) for n in states if n in forcing}
        others = {n: f for n, f in forcing.items() if n not in states}
        record = states & keep
        if record:
            large = every_position_bytes(x.shape[1], state, record) > WHOLE_RUN_BYTES
        else:  # their hooks have fired: only their edits remain to run
            large = bool(at_sorted)
        if self.segments and len(self.sorted) <= MAX_SEGMENTS and large:
            out = self._segments(x, state, others, at_sorted, keep - states, record)
        else:
            out = self._whole(x, state, others, at_sorted, keep, record)
        for n in record:
            out.values[n] = out.values[n][:, self.index]
        return out

    def _segments(self, x, state, forcing, at_sorted, keep, record) -> Computation:
        """The pieces the sorted positions cut (:func:`run_in_pieces`)."""
        return run_in_pieces(self.compute, x, self.per_position, self.sorted, at_sorted, forcing, keep, record,
                             state)

    def _whole(self, x, state, forcing, at_sorted, keep, record) -> Computation:
        """Every state materialised; the asked positions' edits forced there, their states kept."""
        T, where = x.shape[1], torch.tensor(self.sorted, device=x.device)
        full = dict(forcing)
        for n, (mask, values) in at_sorted.items():
            shape = (mask.shape[0], T, *mask.shape[2:])
            full[n] = (mask.new_zeros(shape).index_copy(1, where, mask),
                       values.new_zeros(shape).index_copy(1, where, values))
        out = piece(self.compute, x, self.per_position, state, full, keep | set(at_sorted), 0, T)
        for n in [n for n in out.values if is_state_quantity(n)]:
            if n in record:
                out.values[n] = out.values[n][:, where]
            else:
                del out.values[n]
        return out

    def _to_sorted(self, mask: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """A forcing given in the asked order, as one entry per sorted position (later entries win)."""
        if len(self.index) == len(self.sorted) and self.index == sorted(self.index):
            return mask, values
        m = mask.new_zeros((mask.shape[0], len(self.sorted), *mask.shape[2:]))
        v = values.new_zeros((values.shape[0], len(self.sorted), *values.shape[2:]))
        for j, i in enumerate(self.index):
            v[:, i] = torch.where(mask[:, j], values[:, j], v[:, i])
            m[:, i] = m[:, i] | mask[:, j]
        return m, v


def piece(compute: Callable[..., Computation], x: Tensor, per_position: dict[str, Tensor], state: dict,
          forcing: Forcing, keep: set[str], t0: int, t1: int) -> Computation:
    """``compute`` over positions ``[t0, t1)`` of ``x`` and of the ``per_position`` inputs, from ``state``;
    ``forcing`` covers those positions (a forcing that marks none of them is left out)."""
    extra = {k: v[:, t0:t1] for k, v in per_position.items()}
    forcing = {n: f for n, f in forcing.items() if bool(f[0].any())}
    return compute(x[:, t0:t1], state, forcing, keep, **extra)


def run_in_pieces(compute: Callable[..., Computation], x: Tensor, per_position: dict[str, Tensor],
                  positions: list[int], at_rows: Forcing, forcing: Forcing, keep: set[str], record: set[str],
                  state: dict[str, Tensor]) -> Computation:
    """The plain forward through each of the sorted ``positions``, whose states are the piece's final
    state; a position whose state is forced runs alone with its states kept and the forcing applied,
    so that its own output reads the forced state as the whole run's does.

    Args:
        compute, x, per_position: the mixer's compute and its inputs, run a piece at a time (:func:`piece`).
        at_rows: forcings of state quantities, ``(mask, values)`` of shape ``[b, P, ...]``, one row per position.
        forcing: the other forcings, over all ``T`` positions.
        keep: the quantities wanted at every position; ``record``: the state quantities wanted at the
            positions only (``[b, P, ...]``).

    Every per-position value that is not a state quantity comes back over all ``T`` positions (a mixer
    may return some it was not asked for, as RWKV-7's first layer does its values)."""
    forced = {i for i in range(len(positions)) if any(bool(m[:, i].any()) for m, _ in at_rows.values())}
    pieces: list[tuple[int, int, int | None, bool]] = []  # (t0, t1, position index ending it, run alone)
    t0 = 0
    for i, p in enumerate(positions):
        if i in forced:
            if p > t0:
                pieces.append((t0, p, None, False))
            pieces.append((p, p + 1, i, True))
        else:
            pieces.append((t0, p + 1, i, False))
        t0 = p + 1
    T = x.shape[1]
    if T > t0:
        pieces.append((t0, T, None, False))
    full = keep - record
    ys, parts, boundary, carried = [], {}, {}, dict(state)
    for t0, t1, i, alone in pieces:
        sliced = {n: (m[:, t0:t1], v[:, t0:t1]) for n, (m, v) in forcing.items()}
        if alone:
            sliced.update({n: (m[:, i:i + 1], v[:, i:i + 1]) for n, (m, v) in at_rows.items()})
        wanted = keep | record | set(at_rows) if alone else keep
        out = piece(compute, x, per_position, carried, sliced, wanted, t0, t1)
        ys.append(out.y)
        for n, v in out.values.items():
            if n in full or not is_state_quantity(n):
                parts.setdefault(n, []).append(v)
        carried = dict(out.final_state)
        for n in record if i is not None else ():
            boundary.setdefault(n, []).append(out.values[n][:, 0] if alone else carried[n])
    missing = [n for n in full if len(parts.get(n, ())) != len(pieces)]
    if missing:
        raise RuntimeError(f"run_in_pieces: compute did not return {missing} for every piece")
    values = {n: torch.cat(v, dim=1) for n, v in parts.items() if len(v) == len(pieces)}
    values.update({n: torch.stack(v, dim=1) for n, v in boundary.items()})
    return Computation(torch.cat(ys, dim=1), values, carried)


def rerun_after_state_edits(compute: Callable[..., Computation], x: Tensor, per_position: dict[str, Tensor],
                            state: dict[str, Tensor], forcing: Forcing, keep: set[str]) -> Computation | None:
    """The run with ``forcing`` where it forces state quantities at up to ``MAX_SEGMENTS`` positions, none
    of them is wanted at every position any more (their hooks have fired) and all their states would
    take more than ``WHOLE_RUN_BYTES``: the plain forward (fused kernel included) between the edited
    positions, each of which runs alone with its edit forced, instead of every state materialised and
    forced. ``None`` where that does not apply."""
    edited_states = {n: f for n, f in forcing.items() if is_state_quantity(n)}
    if not edited_states or set(edited_states) & keep:
        return None
    if every_position_bytes(x.shape[1], state, edited_states) <= WHOLE_RUN_BYTES:  # one forced run costs less
        return None
    touched = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    for mask, _ in edited_states.values():
        touched |= mask.flatten(2).any(-1).any(0)
    positions = touched.nonzero().flatten().tolist()
    if not positions or len(positions) > MAX_SEGMENTS:
        return None
    rows = {n: (m[:, positions], v[:, positions]) for n, (m, v) in edited_states.items()}
    others = {n: f for n, f in forcing.items() if n not in edited_states}
    return run_in_pieces(compute, x, per_position, positions, rows, others, keep, set(), state)
