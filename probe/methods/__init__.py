"""Interpretability methods. Each takes a model and inputs and returns a result object
with ``.to_frame()`` and ``.figure()``; all work through hooks only, so on every architecture.

Modules: lens.py attribution.py memory.py (methods I), patching.py probing.py steering.py
(methods II). Names are re-exported here as they land.
"""
from probe.methods.result import MethodResult

__all__ = ["MethodResult"]
