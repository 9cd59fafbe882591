"""probe: interpretability for recurrent versus transformer language models.

Hooked Transformer, LSTM, QRNN, hybrid and other recurrent language models with one hook
vocabulary that exposes the residual stream *and* the recurrent state at every position.
"""
from probe.cache import ActivationCache
from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError, InputError, NonFiniteError, ProbeError, UnknownHookError
from probe.io.hf import from_hf
from probe.io.transformer_lens import from_transformer_lens
from probe.loading import load, zoo_names
from probe.model import HookedLM
from probe.state import ModelState

__version__ = "0.1.0"

__all__ = [
    "ActivationCache", "CheckpointError", "ConfigError", "HookedLM", "InputError", "ModelConfig",
    "ModelState", "NonFiniteError", "ProbeError", "UnknownHookError", "from_hf", "from_transformer_lens", "load",
    "zoo_names",
]
