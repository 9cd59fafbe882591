"""Find the interpretability methods the views call, and say so plainly when one is missing.

Views name methods by their public name (``probe.methods.logit_lens``, ...); :func:`get`
returns the function from ``probe.methods`` or from its module, and :func:`available`
shows a "not available" message instead of failing when this version of probe lacks it.
"""
from __future__ import annotations

import importlib
from typing import Any

import streamlit as st

#: public method name -> module of probe.methods that defines it
MODULES = {
    "logit_lens": "lens", "TunedLens": "lens",
    "direct_logit_attribution": "attribution", "integrated_gradients": "attribution",
    "memory_map": "memory", "state_sizes": "memory",
    "activation_patching": "patching", "attribution_patching": "patching",
    "fit_probes": "probing", "collect_activations": "probing",
    "steering_vector": "steering", "steer": "steering",
}


def get(name: str) -> Any | None:
    """``probe.methods.<name>``, or ``None`` when this version of probe does not have it."""
    import probe.methods as methods

    if hasattr(methods, name):
        return getattr(methods, name)
    try:
        module = importlib.import_module(f"probe.methods.{MODULES[name]}")
    except ImportError:
        return None
    return getattr(module, name, None)


def available(*names: str) -> bool:
    """True when every named method exists; else an info message naming the missing ones."""
    missing = [n for n in names if get(n) is None]
    if missing:
        st.info(f"Not available in this version of probe: `probe.methods.{'`, `probe.methods.'.join(missing)}` "
                "has not been written yet.")
        return False
    return True
