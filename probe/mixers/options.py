"""Declared mixer options: each option's default and the values it accepts, checked in one place.

A mixer lists its options in its ``OPTIONS`` class attribute, name -> :class:`Option`::

    OPTIONS = {"window": Int(2), "d_hidden": Int(None), "norm_eps": Real(1e-5), "bias": Flag(False)}

:meth:`probe.ModelConfig.options` checks every value given in ``ModelConfig.mixer_options``
against its declaration (:func:`resolve`) before the mixer builds any weight, so a malformed
option is a :class:`~probe.errors.ConfigError` naming the mixer, the option and what it accepts,
instead of a NaN model or a torch error. Checks that involve several options or the model's
widths (``dt_min <= dt_max``, heads dividing a width) stay in the mixer.

An option whose default is ``None`` is derived from the model when not given (a width, a head
count) and accepts ``None``; ``optional=True`` lets other options accept ``None`` too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real as RealNumber
from typing import Any

from probe.errors import ConfigError, suggest


@dataclass(frozen=True)
class Option:
    """One option: ``default`` and the values it accepts (``accepts()`` says which, in words)."""

    default: Any
    optional: bool = False

    def accepts(self) -> str:
        raise NotImplementedError

    def valid(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, mixer: str, name: str, value: Any) -> None:
        """Raise a :class:`ConfigError` unless ``value`` is acceptable for option ``name`` of ``mixer``."""
        if value is None and (self.optional or self.default is None):
            return
        if not self.valid(value):
            none = " (or None)" if self.optional or self.default is None else ""
            default = "None (derived from the model)" if self.default is None else repr(self.default)
            raise ConfigError(f"{mixer} option {name} must be {self.accepts()}{none}, got {value!r}"
                              f"{_type_note(value)}. Default: {default}.")


@dataclass(frozen=True)
class Int(Option):
    """An integer ``>= low`` (a count or a width; ``True`` / ``2.0`` / ``"2"`` are refused)."""

    low: int = 1

    def accepts(self) -> str:
        return f"an integer >= {self.low}"

    def valid(self, value: Any) -> bool:
        return isinstance(value, Integral) and not isinstance(value, bool) and value >= self.low


@dataclass(frozen=True)
class Real(Option):
    """A finite real number ``> low`` (``>= low`` with ``open_low=False``); NaN and inf are refused."""

    low: float = 0.0
    open_low: bool = True

    def accepts(self) -> str:
        return f"a finite number {'>' if self.open_low else '>='} {self.low:g}"

    def valid(self, value: Any) -> bool:
        if not isinstance(value, RealNumber) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return value > self.low if self.open_low else value >= self.low


@dataclass(frozen=True)
class Flag(Option):
    """``True`` or ``False`` (strings such as ``"false"`` and numbers are refused: ``bool("false")`` is True)."""

    def accepts(self) -> str:
        return "True or False"

    def valid(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Choice(Option):
    """One of a fixed set of names."""

    choices: tuple[str, ...] = ()

    def accepts(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def valid(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    def check(self, mixer: str, name: str, value: Any) -> None:
        if not self.valid(value) and not (value is None and self.optional):
            raise ConfigError(f"{mixer} option {name}={value!r} is not one of {', '.join(self.choices)}."
                              f"{suggest(str(value), self.choices)}")


def _type_note(value: Any) -> str:
    """`` (a str)`` for values whose repr hides a wrong type, else ``""``."""
    return f" (a {type(value).__name__})" if isinstance(value, (str, bool)) else ""


def defaults(declared: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: default}`` of a mixer's ``OPTIONS`` (a plain value stands for itself)."""
    return {k: (v.default if isinstance(v, Option) else v) for k, v in declared.items()}


def resolve(mixer: str, declared: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``mixer``: ``declared`` defaults updated with ``given``, every given value
    checked. Unknown names and malformed values are a :class:`ConfigError` naming them."""
    unknown = sorted(set(given) - set(declared), key=str)
    if unknown:
        bad = str(unknown[0])
        raise ConfigError(f"Unknown option {unknown[0]!r} for mixer {mixer!r}.{suggest(bad, map(str, declared))} "
                          f"Options of {mixer!r}: {', '.join(sorted(declared)) or 'none'}.")
    for name, value in given.items():
        spec = declared[name]
        if isinstance(spec, Option):
            spec.check(mixer, name, value)
    return {**defaults(declared), **given}


__all__ = ["Choice", "Flag", "Int", "Option", "Real", "defaults", "resolve"]
