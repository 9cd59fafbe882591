"""Error types with messages that name the problem and the fix.

Every error raised by probe for bad user input is a :class:`ProbeError` (a
``ValueError``), so callers can catch one type; specific subclasses exist where a
caller may want to tell them apart.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProbeError(ValueError):
    """Bad input to probe: the message says what is wrong and how to fix it."""


class ConfigError(ProbeError):
    """An invalid :class:`probe.ModelConfig` or a config that does not match a checkpoint."""


class UnknownHookError(ProbeError, KeyError):
    """A hook name (or cache key) that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ProbeError):
    """A missing, malformed or mismatched checkpoint directory."""


class InputError(ProbeError):
    """An argument a call cannot run on: tokens or text (empty, out of range, too long, wrong dtype),
    a hook that is not a function or returns the wrong shape, a layer, position, dtype or device
    that does not exist."""


class NonFiniteError(ProbeError):
    """NaN or inf where a result is read: in the weights, in an input, written by a hook, or an
    overflowing dtype (see :mod:`probe.finite`)."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ``" Did you mean ...?"`` suffix listing the closest names, or ``""``."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:
        # fall back to names sharing the last dotted component (e.g. "hook_state")
        tail = name.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.endswith(tail)][:n]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_hook(name: str, candidates: Iterable[str]) -> UnknownHookError:
    candidates = list(candidates)
    return UnknownHookError(
        f"Unknown hook name {name!r}.{suggest(name, candidates)} "
        f"This model has {len(candidates)} hook points; list them with `model.hook_dict.keys()`."
    )
