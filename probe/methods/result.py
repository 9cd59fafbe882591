"""The base of every method's result object.

A method is a function ``method(model, inputs, ...) -> SomeResult``; the result is a
dataclass holding the numbers (tensors / DataFrames) with two views:

* ``.to_frame()``: a tidy ``pandas.DataFrame`` (one row per measured thing), the format
  the explorer, notebooks and benchmarks consume;
* ``.figure()``: a ``plotly.graph_objects.Figure`` of the main view.

Subclasses implement both; ``_repr_html_`` lets notebooks show the figure directly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MethodResult:
    def to_frame(self):  # -> pandas.DataFrame
        """The numbers as a tidy ``pandas.DataFrame`` (one row per measured thing)."""
        raise NotImplementedError

    def figure(self, **kwargs):  # -> plotly.graph_objects.Figure
        """The main view as a ``plotly.graph_objects.Figure``."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        try:
            return self.figure().to_html(include_plotlyjs="cdn", full_html=False)
        except NotImplementedError:
            return self.to_frame().to_html()
