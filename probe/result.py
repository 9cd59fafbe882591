"""The base of every method's result object.

A method is a function ``method(model, inputs, ...) -> SomeResult``; the result is a
dataclass holding the numbers (tensors / DataFrames) with two views:

* ``.to_frame()``: a tidy ``pandas.DataFrame`` (one row per measured thing), the format
  the explorer, notebooks and benchmarks consume;
* ``.figure()``: a ``plotly.graph_objects.Figure`` of the main view.

Subclasses implement both; ``_repr_html_`` lets notebooks show the figure directly, and
``.save(path)`` writes either to a file chosen by its suffix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probe.errors import ConfigError, InputError

#: suffix -> what ``save`` writes: the table (``to_frame``) or the figure
TABLE_SUFFIXES = (".csv", ".json", ".parquet")
FIGURE_SUFFIXES = (".html", ".png", ".svg", ".pdf")


@dataclass
class MethodResult:
    def to_frame(self):  # -> pandas.DataFrame
        """The numbers as a tidy ``pandas.DataFrame`` (one row per measured thing)."""
        raise NotImplementedError

    def figure(self, **kwargs):  # -> plotly.graph_objects.Figure
        """The main view as a ``plotly.graph_objects.Figure``."""
        raise NotImplementedError

    def save(self, path, **figure_kwargs) -> Path:
        """Write the result to ``path``; its suffix picks the format and returns the path written.

        ``.csv`` / ``.json`` (records) / ``.parquet``: the table (:meth:`to_frame`); ``.html``: the
        interactive figure (:meth:`figure`, plotly.js from its CDN); ``.png`` / ``.svg`` / ``.pdf``:
        the figure as an image through plotly's static export, which needs the optional ``kaleido``
        package. ``figure_kwargs`` go to :meth:`figure`.

        Example::

            logit_lens(model, text).save("lens.csv")
            logit_lens(model, text).save("lens.html", color="prob")
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in TABLE_SUFFIXES + FIGURE_SUFFIXES:
            raise InputError(f"Cannot save a result as {path.name!r}: use one of "
                             f"{', '.join(TABLE_SUFFIXES + FIGURE_SUFFIXES)} (table or figure).")
        if path.is_dir():
            raise InputError(f"{str(path)!r} is a folder; give a file name such as "
                             f"{str(path / ('result' + suffix))!r}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix in TABLE_SUFFIXES:
            frame = self.to_frame()
            if suffix == ".csv":
                frame.to_csv(path, index=False)
            elif suffix == ".json":
                frame.to_json(path, orient="records", indent=1)
            else:
                frame.to_parquet(path)
            return path
        fig = self.figure(**figure_kwargs)
        if suffix == ".html":
            fig.write_html(path, include_plotlyjs="cdn")
            return path
        import importlib.util

        if importlib.util.find_spec("kaleido") is None:
            raise ConfigError(f"Saving a figure as {suffix} needs plotly's static export: pip install kaleido "
                              "(or save it as .html).")
        fig.write_image(path)
        return path

    def _repr_html_(self) -> str:
        try:
            return self.figure().to_html(include_plotlyjs="cdn", full_html=False)
        except NotImplementedError:
            return self.to_frame().to_html()
