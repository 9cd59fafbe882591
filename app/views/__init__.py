"""One module per explorer view; each has ``render(ctx)`` and draws model A and model B side by side.

:data:`VIEWS` lists the tabs in order (label, render function). Only the open tab runs, so
a slow view costs nothing until it is opened.
"""
from __future__ import annotations

from collections.abc import Callable

from app.views import architecture, attribution, lens, memory, patching, predictions, probing, saliency, steering

VIEWS: list[tuple[str, Callable]] = [
    ("Predictions", predictions.render),
    ("Logit lens", lens.render_logit),
    ("Tuned lens", lens.render_tuned),
    ("Attribution", attribution.render),
    ("Saliency", saliency.render),
    ("Memory", memory.render),
    ("Probes", probing.render),
    ("Steering", steering.render),
    ("Patching", patching.render),
    ("Architecture", architecture.render),
]
