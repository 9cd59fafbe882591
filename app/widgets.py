"""Small shared pieces of the views: token display, the position picker, figure output."""
from __future__ import annotations

import html

import numpy as np
import streamlit as st

import probe
from app import loading
from app.context import Context


def display_token(s: str) -> str:
    """A token readable in a table or on an axis (whitespace made visible)."""
    from probe.methods.support.input_checks import printable

    return printable(s)


def n_tokens(ctx: Context) -> int | None:
    """Token count of the text for the first loaded model (None when no model loaded or the text is bad)."""
    for slot in ctx.slots:
        if slot.model is not None:
            try:
                return int(loading.check_text(slot.model, ctx.text).shape[1])
            except probe.ProbeError:
                return None
    return None


def position_picker(ctx: Context, key: str, label: str = "Position", default: int | None = None) -> int:
    """A slider over the input's positions (of the first model's tokenisation); returns a position,
    ``-1`` meaning the last. Positions past a model's own input length are clamped by the views."""
    n = n_tokens(ctx)
    if n is None or n < 2:
        return -1
    default = n - 1 if default is None else max(0, min(n - 1, default))
    pos = st.slider(label, 0, n - 1, default, key=key,
                    help="Index into the input tokens (0 is the BOS token for byte-level models).")
    return int(pos)


def clamp_position(pos: int, n: int) -> int:
    return n - 1 if pos < 0 or pos >= n else pos


def show_figure(fig, key: str, height: int | None = None, scale: ColorScale | None = None) -> None:
    """A plotly figure with a download button. With ``scale`` (a :class:`ColorScale` open around the
    side-by-side columns) its heatmaps wait for the other column and share one colour range."""
    if height is not None:
        fig.update_layout(height=height)
    fig.update_layout(margin=dict(l=10, r=10, t=60, b=10), title_font_size=13)
    if scale is not None:
        scale.add(fig, key)
        return
    _draw(fig, key)


def _draw(fig, key: str) -> None:
    st.plotly_chart(fig, width="stretch", key=key)
    download_figure(fig, key)


def heatmaps(fig) -> list:
    return [t for t in fig.data if t.type == "heatmap"]


def as_array(value, dtype=None) -> np.ndarray:
    """A figure's array as numpy: a list, an array, or plotly's base64 typed array
    (``{"dtype", "bdata", "shape"}``, which figures hold after a round trip through the cache)."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        value = flat.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else flat
    return np.asarray(value, dtype=dtype)


class ColorScale:
    """One colour range for the heatmaps of one metric in both columns (the same colour means the same
    value in model A and model B), shown under each figure.

    ``lo`` / ``hi``: fixed ends (a probability: 0 and 1), else the min / max over both columns;
    ``symmetric``: a diverging scale centred on 0 (``[-m, m]``, ``m`` = the largest ``|z|``, at least ``floor``).
    Use as ``scale = ColorScale("KL (nats)")``, pass it to :func:`show_figure` in the columns, then
    ``scale.draw()`` after :func:`app.context.side_by_side`.
    """

    def __init__(self, label: str, lo: float | None = None, hi: float | None = None, symmetric: bool = False,
                 floor: float = 0.0):
        self.label, self.lo, self.hi, self.symmetric, self.floor = label, lo, hi, symmetric, floor
        self.pending: list[tuple] = []

    def add(self, fig, key: str) -> None:
        """Reserve the figure's place in the current column; it is drawn by :meth:`draw`."""
        self.pending.append((st.container(), fig, key))

    def range(self) -> tuple[float, float]:
        """``(zmin, zmax)`` over every pending heatmap's finite values (and the fixed ends)."""
        values = [as_array(t.z, float) for _, fig, _ in self.pending for t in heatmaps(fig)]
        finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values]) if values else np.zeros(0)
        data_lo, data_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if self.symmetric:
            m = max(abs(data_lo), abs(data_hi), self.floor, 1e-12)
            return -m, m
        lo = data_lo if self.lo is None else self.lo
        hi = data_hi if self.hi is None else self.hi
        return lo, hi if hi > lo else lo + 1e-12

    def draw(self) -> tuple[float, float]:
        """Draw every pending figure with the shared range; returns it."""
        lo, hi = self.range()
        for container, fig, key in self.pending:
            for t in heatmaps(fig):
                t.update(zmin=lo, zmax=hi, zauto=False)
            if any(t.coloraxis for t in heatmaps(fig)):  # a shared colour axis overrides the traces' own range
                fig.update_layout(coloraxis={"cmin": lo, "cmax": hi})
            with container:
                _draw(fig, key)
                values = [as_array(t.z, float) for t in heatmaps(fig)]
                own = np.concatenate([v[np.isfinite(v)].ravel() for v in values]) if values else np.zeros(0)
                this = f"; this model's values {own.min():.3g} to {own.max():.3g}" if own.size else ""
                st.caption(f"Colour scale {self.label}: {lo:.3g} to {hi:.3g}, the same in both columns{this}.")
        self.pending = []
        return lo, hi


#: heatmap cells are labelled with their text only when a window holds at most this many positions
MAX_LABELLED_POSITIONS = 40
#: the position window shown first on long inputs
DEFAULT_WINDOW = 64


def position_window(ctx: Context, key: str) -> tuple[int, int] | None:
    """``(first, last)`` positions to show (inclusive), picked with a range slider when the input is
    longer than :data:`DEFAULT_WINDOW` tokens; ``None`` (all) for short inputs."""
    n = n_tokens(ctx)
    if n is None or n <= DEFAULT_WINDOW:
        return None
    lo, hi = st.slider("Positions shown", 0, n - 1, (0, DEFAULT_WINDOW - 1), key=key,
                       help=f"The input is {n} tokens; the heatmap shows this window (hover a cell for its tokens). "
                            f"Cells carry their top token as text when the window holds at most "
                            f"{MAX_LABELLED_POSITIONS} positions.")
    return int(lo), int(hi)


def window_heatmap(fig, window: tuple[int, int] | None):
    """The figure's heatmaps cut to positions ``window`` (the last axis of ``z``, ``text`` and
    ``customdata``, and ``x``); cell text only when the window is narrow enough to read it."""
    n = max((as_array(t.z).shape[-1] for t in heatmaps(fig)), default=0)
    lo, hi = (0, n - 1) if window is None else (min(window[0], n - 1), min(window[1], n - 1))
    cut = slice(lo, hi + 1)
    for t in heatmaps(fig):
        update = {"z": as_array(t.z)[..., cut]}
        if t.x is not None:
            update["x"] = list(t.x)[cut]
        for name in ("text", "customdata"):
            value = getattr(t, name)
            if value is not None and not isinstance(value, str):
                update[name] = as_array(value, object)[..., cut]
        if hi - lo + 1 > MAX_LABELLED_POSITIONS:
            update["texttemplate"] = ""
        else:
            update["textfont"] = {"size": 11}
        t.update(**update)
    return fig


def download_figure(fig, key: str) -> None:
    """A download button for a figure: PNG through plotly's static export when the optional ``kaleido``
    package is installed, else an interactive HTML file. The file is built only when clicked."""
    name = key.replace(" ", "_")
    if static_export_available():
        st.download_button("Figure (PNG)", lambda: fig.to_image(format="png", scale=2), f"{name}.png", "image/png",
                           key=f"dl-fig-{key}", on_click="ignore")
    else:
        st.download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs="cdn"), f"{name}.html", "text/html",
                           key=f"dl-fig-{key}", on_click="ignore",
                           help="An interactive HTML file; PNG export needs plotly's static export: "
                                "pip install kaleido.")


def static_export_available() -> bool:
    """Whether plotly can write PNG/SVG (the optional ``kaleido`` package is installed)."""
    import importlib.util

    return importlib.util.find_spec("kaleido") is not None


def show_table(frame, key: str, **kwargs) -> None:
    """A table with a CSV download button."""
    st.dataframe(frame, hide_index=True, **kwargs)
    st.download_button("Table (CSV)", lambda: frame.to_csv(index=False), f"{key.replace(' ', '_')}.csv", "text/csv",
                       key=f"dl-csv-{key}", on_click="ignore")


def colored_tokens(str_tokens: list[str], values: list[float], title: str = "", top: float | None = None) -> str:
    """HTML of the tokens with a red (negative) / blue (positive) background scaled by ``|value| / top``
    (``top``: the largest ``|value|`` unless given, e.g. shared by both columns)."""
    top = top or max((abs(v) for v in values), default=0.0) or 1.0
    spans = []
    for tok, v in zip(str_tokens, values):
        a = min(1.0, abs(v) / top)
        rgb = "31,119,180" if v >= 0 else "214,39,40"
        shown = html.escape(tok).replace("\n", "↵<br>")
        spans.append(f'<span title="{v:+.4f}" style="background: rgba({rgb},{a:.2f}); padding: 1px 0; '
                     f'font-family: monospace; white-space: pre">{shown}</span>')
    head = f"<div style='font-size: 0.85em; color: gray'>{html.escape(title)}</div>" if title else ""
    return head + "<div style='line-height: 1.9'>" + "".join(spans) + "</div>"
