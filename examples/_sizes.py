"""Quick and full sizes for the zoo-wide studies: a quick run by default, the full study with ``--full``.

A study declares its sized options with ``default=None`` and two presets; :func:`add_full_flag` adds
``--full`` and :func:`apply` fills every option left unset from the chosen preset, so an option given
on the command line always wins. Both presets are listed in ``--help``.
"""
from __future__ import annotations

import argparse


def add_full_flag(parser: argparse.ArgumentParser, quick: dict, full: dict) -> None:
    """``--full``: the study's full sizes instead of the quick ones (both shown in the help)."""
    show = lambda preset: ", ".join(f"--{k.replace('_', '-')} {_text(v)}" for k, v in preset.items())
    parser.add_argument("--full", action="store_true",
                        help=f"run the full study ({show(full)}) instead of the quick one ({show(quick)})")


def apply(args: argparse.Namespace, quick: dict, full: dict) -> argparse.Namespace:
    """Fill every option of the preset that the command line left as None."""
    for name, value in (full if args.full else quick).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _text(value) -> str:
    if value is None:
        return "(all)"
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
