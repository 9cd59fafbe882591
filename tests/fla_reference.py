"""flash-linear-attention's pure-PyTorch reference recurrences, loaded by file path.

``fla-core`` (a dev dependency, ``pip install -e ".[dev]"``) ships ``fla/ops/<op>/naive.py`` beside
its Triton kernels. Those files need only torch and einops, but the package's ``__init__`` imports
triton (absent on a CPU-only machine), so they are executed from their path and never imported as
``fla.ops...``; ``importlib.util.find_spec("fla")`` locates the installed package without running it.
``PROBE_FLA_DIR`` may name another root (an unzipped ``fla-core`` wheel). Without either, the tests
that need a reference skip, naming the file they looked for.

Some of fla's CPU references sit in files that also define Triton kernels (``token_shift_ref`` in
``modules/token_shift.py``, ``group_norm_ref`` ...): :func:`fla_function` takes one such function's
own source out of its file and runs it alone, with torch, ``F`` and einops' ``rearrange`` in scope.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest


def fla_roots() -> list[Path]:
    """Folders holding an ``fla`` package: ``PROBE_FLA_DIR``, then the installed ``fla-core``."""
    roots = [Path(os.environ["PROBE_FLA_DIR"])] if os.environ.get("PROBE_FLA_DIR") else []
    spec = importlib.util.find_spec("fla")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p).parent for p in spec.submodule_search_locations]
    return roots


def fla_file(relative: str) -> Path:
    """The path of ``fla/<relative>`` in the first root holding it, or skip."""
    path = Path("fla") / relative
    for root in fla_roots():
        if (root / path).is_file():
            return root / path
    pytest.skip(f"flash-linear-attention's {path} not found: fla-core is not installed (pip install -e '.[dev]' "
                "installs it) and PROBE_FLA_DIR does not name an unzipped fla-core wheel")


def fla_naive(relative: str) -> ModuleType:
    """The module at ``fla/<relative>`` (e.g. ``ops/generalized_delta_rule/dplr/naive.py``), or skip."""
    path = fla_file(relative)
    spec = importlib.util.spec_from_file_location("fla_naive_" + path.parent.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fla_function(relative: str, name: str) -> Callable:
    """The top-level function ``name`` of ``fla/<relative>``, compiled from its own source only (the
    file's Triton imports and kernels are left out), or skip when fla-core is absent."""
    import einops
    import torch

    path = fla_file(relative)
    source = path.read_text()
    node = next((n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise LookupError(f"fla-core's {path} has no function {name!r} (another fla-core version?)")
    scope = {"torch": torch, "F": torch.nn.functional, "nn": torch.nn, "rearrange": einops.rearrange}
    exec(compile(ast.Module([node], type_ignores=[]), str(path), "exec"), scope)
    return scope[name]
