r"""Hook firing for recurrent mixers, with edits that propagate.

A recurrent mixer exposes a sequence of per-position quantities, in dependency order
(e.g. QRNN: ``state_conv -> z -> forget -> output -> state``), each through a hook
point ``hook_<name>`` that fires **once per forward** with the whole
``[batch, pos, ...]`` tensor. The mixer implements one pure function::

    compute(x, state, forcing, keep) -> Computation(y, values, final_state)

which runs the layer from ``state`` with some quantities *forced*: ``forcing[name] =
(mask, values)`` means "wherever ``mask`` is True, the quantity takes the given value
instead of the one the recurrence would produce, and everything downstream follows".
``keep`` names the quantities the caller needs materialised in ``values`` (a mixer may
skip building large per-position states nobody looks at).

:func:`run_hooked` drives it: it computes once, fires the hooks in dependency order and,
whenever a hook changed its tensor (a returned new tensor or an in-place write), records
the changed elements as a forcing and recomputes, so every later hook sees values that
reflect all earlier edits and the layer's output and final state are those of the edited
recurrence. With no hook attached the mixer runs its fast path once. Once a state quantity's hook has
fired, later runs no longer materialise it: an edit of it at a few positions reruns the layer in pieces,
its plain forward (a fused kernel on a GPU) between the edited positions and each edited position
alone with its edit forced (:func:`probe.mixers.state_positions.rerun_after_state_edits`).

A hook may also force elements whose value it leaves unchanged, by returning
``mark_forced(tensor, mask)``: those elements are treated as edits (the recomputation
uses the returned tensor there). With a returned tensor ``value + delta`` (``delta`` a
zero tensor that requires grad) this makes ``d output / d delta`` the derivative with
respect to the quantity at the marked elements *with every later position following the
recurrence* (attribution patching of states uses it); without the mark an unchanged value
is not an edit and gradients would not reach ``delta``.

What a cache shows: a hook fires once, so a cache of the *edited* hook holds the tensor
as the editing hook returned it (edited values where it wrote, the pre-edit values at
later positions); the propagated later values are what every *downstream* hook (later
quantities of this mixer, the mixer output, later layers) sees and caches. To read the
propagated state itself, cache it in a second run with the same edit on an earlier
quantity, or run in segments (``model(prefix, return_states=True)``).

Limitation (nonlinear recurrences only, LSTM / sLSTM): gates at positions *after* an
edited state depend on that state; their hooks have already fired with the pre-edit
values, so a cache of those gates holds pre-edit values there. The computation itself is
exact.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import torch
from torch import Tensor

from probe.mixers.computation import Computation, Forcing
from probe.mixers.state_positions import (StatesAtPositions, asked_positions, is_state_quantity,
                                          rerun_after_state_edits)

__all__ = ["Computation", "Forcing", "mark_forced", "changed_elements", "apply_forcing", "owned_copy",
           "run_hooked", "run_computation"]

#: attribute of a hook's returned tensor holding a boolean mask of elements to force (see :func:`mark_forced`)
FORCED_ATTR = "_probe_forced_mask"


def mark_forced(tensor: Tensor, mask: Tensor) -> Tensor:
    """Mark ``mask``'s elements of ``tensor`` (a hook's *new* returned tensor) as edits even where
    their value equals the computed one. ``mask`` broadcasts to ``tensor``. Returns ``tensor``."""
    setattr(tensor, FORCED_ATTR, mask)
    return tensor


def changed_elements(edited: Tensor, reference: Tensor) -> Tensor:
    """Boolean mask of the elements where ``edited`` differs from ``reference`` (NaN-aware)."""
    if edited.shape != reference.shape:
        raise ValueError(f"A hook returned a tensor of shape {tuple(edited.shape)} where "
                         f"{tuple(reference.shape)} was expected; hooks must keep the shape.")
    same = (edited == reference) | (torch.isnan(edited) & torch.isnan(reference))
    return ~same


def apply_forcing(name: str, value: Tensor, forcing: Forcing) -> Tensor:
    """``value`` with the forced elements of quantity ``name`` replaced (unchanged if not forced)."""
    if name not in forcing:
        return value
    mask, forced = forcing[name]
    return torch.where(mask, forced.to(value.dtype), value)


def owned_copy(value: Tensor, inputs: list[Tensor]) -> Tensor:
    """``value`` itself when a hook may edit it in place safely, else a contiguous copy.

    Safe means the tensor owns its memory: not a view (a conv window built with ``unfold`` is an
    overlapping view, where writing window ``t`` rewrites windows ``t-1, t-2``; a slice or
    ``expand`` of a parameter would write the weights), contiguous, and not sharing memory with
    the mixer's ``inputs`` (its input ``x`` and carried state). Inference tensors are always
    copied: they carry no version counter, so the untouched original is what an in-place edit is
    detected against.
    """
    shared = {t.untyped_storage().data_ptr() for t in inputs}
    if (value._base is None and value.is_contiguous() and not value.is_inference()
            and value.untyped_storage().data_ptr() not in shared):
        return value
    return value.clone(memory_format=torch.contiguous_format)


def _fire(hook_point, clean: Tensor, inputs: list[Tensor]) -> tuple[Tensor, bool]:
    """Fire ``hook_point`` on (a copy of) ``clean``. Returns ``(tensor after the hook, whether
    it may differ from clean)``; ``clean`` itself is never written when a copy was handed out."""
    given = owned_copy(clean, inputs)
    version = None if given.is_inference() else given._version
    edited = hook_point(given)
    if edited is None:  # a hook that returns None keeps the value
        edited = given
    if edited is not given:
        return edited, True
    if version is not None:
        return edited, given._version != version
    return edited, True  # an inference tensor: compared with clean below


def run_hooked(
    compute: Callable[[Tensor, dict, Forcing, set], Computation],
    hook_points: dict,
    x: Tensor,
    state: dict[str, Tensor],
    inner_hooks: Callable[[], Iterable] = tuple,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``compute`` with hooks fired once each and edits propagated. Returns ``(y, final_state)``.

    ``hook_points`` maps quantity names, in dependency order, to their ``HookPoint``. Each hook
    receives a tensor it owns (:func:`owned_copy`), so an in-place edit means exactly what
    returning the edited copy means; this holds under ``torch.inference_mode()`` too.
    """
    out = run_computation(compute, hook_points, x, state, inner_hooks=inner_hooks)
    return out.y, out.final_state


def run_computation(
    compute: Callable[..., Computation],
    hook_points: dict,
    x: Tensor,
    state: dict[str, Tensor],
    per_position: dict[str, Tensor] | None = None,
    inner_hooks: Callable[[], Iterable] = tuple,
) -> Computation:
    """:func:`run_hooked`, returning the final :class:`Computation` (its ``values`` hold every edit), for a
    mixer that hands a quantity to later layers (RWKV-7's first-layer values).

    ``per_position``: further inputs ``{keyword: [b, T, ...]}`` of ``compute`` that follow the positions
    of ``x`` (RWKV-7's first-layer values). Inside ``run_with_cache(state_positions=...)`` the state hooks
    fire with the asked positions only (:mod:`probe.mixers.state_positions`); ``inner_hooks()``: the hook
    points ``compute`` fires itself (a norm's inside the mixer), which must fire once per forward, so with
    one of them hooked the asked states are taken from the whole-sequence run rather than segments."""
    active = [name for name, hp in hook_points.items() if hp.has_hooks()]
    extra = per_position or {}
    if not active:
        return compute(x, state, {}, set(), **extra)
    has_states = any(is_state_quantity(n) for n in active)
    positions = asked_positions(x.shape[1]) if has_states else None
    pieces = has_states and not any(hp.has_hooks() for hp in inner_hooks())
    if positions is not None:
        whole = StatesAtPositions(compute, positions, extra, segments=pieces)
    else:
        whole = functools.partial(compute, **extra) if extra else compute

    def run(forcing: Forcing, keep: set[str]) -> Computation:
        if pieces and positions is None:
            out = rerun_after_state_edits(compute, x, extra, state, forcing, keep)
            if out is not None:
                return out
        return whole(x, state, forcing, keep)

    keep = set(active)
    forcing: Forcing = {}
    inputs = [x, *state.values()]
    out, out_keep = run(forcing, keep), set(keep)
    for name in active:
        clean = out.values[name]
        edited, maybe_changed = _fire(hook_points[name], clean, inputs)
        if is_state_quantity(name):
            keep.discard(name)  # fired: later runs need not materialise it again
        if not maybe_changed:
            continue
        # the unedited values by the very run that gave them (another form would differ by rounding, and
        # every rounding difference would count as an edit)
        reference = clean if edited is not clean else run(forcing, out_keep).values[name]
        mask = changed_elements(edited, reference)
        marked = getattr(edited, FORCED_ATTR, None)
        if marked is not None:
            mask = mask | marked.to(mask.device).expand_as(mask)
        if not bool(mask.any()):
            continue
        forcing[name] = (mask, edited.detach() if not edited.requires_grad else edited)
        out, out_keep = run(forcing, keep), set(keep)
    return out
