"""probe: interpretability for recurrent versus transformer language models.

Hooked Transformer, LSTM, QRNN, hybrid and other recurrent language models with one hook
vocabulary that exposes the residual stream *and* the recurrent state at every position.

The public names below are imported on first use (PEP 562 ``__getattr__``), so ``import probe``
and the ``probe`` command start without loading torch; ``probe.HookedLM`` etc. behave as if
imported here.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from probe.errors import CheckpointError, ConfigError, InputError, NonFiniteError, ProbeError, UnknownHookError

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "ActivationCache": "probe.cache", "ModelConfig": "probe.config", "from_hf": "probe.io.hf",
    "from_transformer_lens": "probe.io.transformer_lens", "load": "probe.loading", "zoo_names": "probe.loading",
    "HookedLM": "probe.model", "ModelState": "probe.state",
}

__all__ = [
    "ActivationCache", "CheckpointError", "ConfigError", "HookedLM", "InputError", "ModelConfig",
    "ModelState", "NonFiniteError", "ProbeError", "UnknownHookError", "from_hf", "from_transformer_lens", "load",
    "zoo_names",
]

if TYPE_CHECKING:
    from probe.cache import ActivationCache
    from probe.config import ModelConfig
    from probe.io.hf import from_hf
    from probe.io.transformer_lens import from_transformer_lens
    from probe.loading import load, zoo_names
    from probe.model import HookedLM
    from probe.state import ModelState


def __getattr__(name: str):
    """A public name, or a submodule (``probe.methods``), imported on first use and kept."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'probe' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
