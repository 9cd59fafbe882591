"""One module per explorer view; each has a render function and draws model A and model B side by side.

:data:`VIEWS` lists the tabs in order (label, ``module.function`` under ``app.views``). Only the
open tab runs, and its module is imported when it first opens (:func:`renderer`), so a view's
libraries (pandas, plotly, the methods) cost nothing until it is opened.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

VIEWS: list[tuple[str, str]] = [
    ("Predictions", "predictions.render"),
    ("Logit lens", "lens.render_logit"),
    ("Tuned lens", "lens.render_tuned"),
    ("Attribution", "attribution.render"),
    ("Saliency", "saliency.render"),
    ("Memory", "memory.render"),
    ("Probes", "probing.render"),
    ("Steering", "steering.render"),
    ("Patching", "patching.render"),
    ("Architecture", "architecture.render"),
]


def renderer(target: str) -> Callable:
    """The render function named ``module.function`` in :data:`VIEWS` (imports its module)."""
    module, function = target.split(".")
    return getattr(importlib.import_module(f"app.views.{module}"), function)
