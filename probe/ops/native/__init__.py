r"""Optional compiled CPU kernels, built on first use with the system's C++ compiler.

A kernel here is a faster route to a result the pure-PyTorch code already computes (and is
tested equal to it); nothing depends on one being available. :func:`native` compiles
``<name>.cpp`` beside this file with ``torch.utils.cpp_extension.load`` the first time it is
asked for (about a minute; cached by PyTorch under ``~/.cache/torch_extensions`` afterwards)
and returns the module, or ``None`` when it cannot be built (no compiler, no ``ninja``, a build
error: one warning says why) or when the environment variable ``PROBE_NATIVE=0`` switches the
kernels off. Callers fall back to their PyTorch path on ``None``.

Kernels are compiled with ``-O3 -march=native -ffast-math -fopenmp-simd`` so that the inner loops
over a state's entries vectorise (``exp`` included, through glibc's vector math library; the
reductions through ``#pragma omp simd``). ``-march=native`` builds for this machine's CPU: where
one home directory serves machines with different CPUs, give each its own build cache
(``TORCH_EXTENSIONS_DIR``) or set ``PROBE_NATIVE=0``.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["native", "native_enabled"]

_HERE = Path(__file__).resolve().parent
_BUILT: dict[str, ModuleType | None] = {}
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"]


def native_enabled() -> bool:
    """False when ``PROBE_NATIVE`` is set to ``0`` / ``false`` / ``no`` / ``off``."""
    return os.environ.get("PROBE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def native(name: str) -> ModuleType | None:
    """The compiled kernel ``probe/ops/native/<name>.cpp`` (built once per process), or ``None``."""
    if not native_enabled():
        return None
    if name not in _BUILT:
        source = _HERE / f"{name}.cpp"
        if not source.is_file():
            raise FileNotFoundError(f"No kernel source {source}.")
        try:
            from torch.utils.cpp_extension import get_default_build_root, load

            if not any(Path(get_default_build_root()).glob(f"*/probe_{name}/probe_{name}*.so")):
                print(f"probe: compiling the {name} CPU kernel (once; about a minute)...", file=sys.stderr, flush=True)
            _BUILT[name] = load(name=f"probe_{name}", sources=[str(source)], extra_cflags=FLAGS, verbose=False)
        except Exception as exc:  # no compiler / ninja, or a build error: the PyTorch path is used instead
            warnings.warn(f"probe: the compiled {name} kernel is unavailable ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}); "
                          "using the slower PyTorch path.", RuntimeWarning, stacklevel=2)
            _BUILT[name] = None
    return _BUILT[name]
