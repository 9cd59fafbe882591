"""Small shared pieces of the views: token display, the position picker, figure output."""
from __future__ import annotations

import html

import streamlit as st

import probe
from app import loading
from app.context import Context


def display_token(s: str) -> str:
    """A token readable in a table or on an axis (whitespace made visible)."""
    from probe.methods.inputs import printable

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


def show_figure(fig, key: str, height: int | None = None) -> None:
    if height is not None:
        fig.update_layout(height=height)
    fig.update_layout(margin=dict(l=10, r=10, t=60, b=10), title_font_size=13)
    st.plotly_chart(fig, width="stretch", key=key)


def colored_tokens(str_tokens: list[str], values: list[float], title: str = "") -> str:
    """HTML of the tokens with a red (negative) / blue (positive) background scaled by ``|value|``."""
    top = max((abs(v) for v in values), default=0.0) or 1.0
    spans = []
    for tok, v in zip(str_tokens, values):
        a = min(1.0, abs(v) / top)
        rgb = "31,119,180" if v >= 0 else "214,39,40"
        shown = html.escape(tok).replace("\n", "↵<br>")
        spans.append(f'<span title="{v:+.4f}" style="background: rgba({rgb},{a:.2f}); padding: 1px 0; '
                     f'font-family: monospace; white-space: pre">{shown}</span>')
    head = f"<div style='font-size: 0.85em; color: gray'>{html.escape(title)}</div>" if title else ""
    return head + "<div style='line-height: 1.9'>" + "".join(spans) + "</div>"
