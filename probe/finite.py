r"""Finite-value checks: NaN and inf never pass silently through generation or a method.

A plain forward pass propagates NaN and inf as torch does (mixed-precision training relies on
seeing an overflowed loss and skipping the step). Everything that *reads* the numbers to
answer a question (``generate``'s sampling, the lenses, attribution, memory maps, patching,
probing, steering) checks them with :func:`check_finite`, which raises a
:class:`probe.errors.NonFiniteError` naming what was non-finite and, where it can, the first
parameter or buffer of the model that holds NaN or inf (the usual cause).
"""
from __future__ import annotations

from torch import Tensor

from probe.errors import NonFiniteError


def nonfinite_weights(model, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` floating parameters / buffers of ``model`` holding NaN or inf."""
    module = model if hasattr(model, "named_parameters") else getattr(model, "bridge", None)
    if module is None:
        return []
    bad = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not bool(t.detach().isfinite().all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def check_finite(values: Tensor, what: str, model=None) -> Tensor:
    """Return ``values`` if every element is finite, else raise a :class:`NonFiniteError`:
    ``"NaN in <what>: <cause>"``, the cause naming the model's non-finite weights (or, when they
    are all finite, pointing at inputs, hooks, user functions and the dtype)."""
    if bool(values.detach().isfinite().all()):
        return values
    kind = "NaN" if bool(values.detach().isnan().any()) else "inf"
    bad = nonfinite_weights(model) if model is not None else []
    if bad:
        cause = f"the model's weights hold NaN or inf ({', '.join(bad)})"
    else:
        cause = ("it comes from an input, a hook or a user function (a metric), or an overflowing dtype "
                 "(float16 tops out at 65504: run in float32 or bfloat16)")
        if model is not None:
            cause = "the model's weights are finite, so " + cause
    raise NonFiniteError(f"{kind} in {what}: {cause}.")
