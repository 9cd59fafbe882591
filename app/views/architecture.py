"""The architecture page: each model's layout drawn block by block, with the size of the memory every
mixer carries from one token to the next (from ``mixer.state_shapes()``).

For a recurrent mixer the state has a fixed size per sequence; attention's state is its KV
cache, ``2 x kv heads x d_head`` numbers per token seen (multi-head latent attention: its latent and
shared rotary key), so it grows with the input.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import n_tokens, show_figure, show_table

COLORS = {"attn": "#4c78a8", "ff": "#bab0ac", "lstm": "#f58518", "qrnn": "#e45756", "lmu": "#72b7b2",
          "hgrn2": "#54a24b", "mamba": "#eeca3b", "mlstm": "#b279a2", "slstm": "#ff9da6", "rwkv": "#9d755d"}
MLP_COLOR = "#d8d8d8"


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return " x ".join("T" if s == 0 else str(s) for s in shape) or "scalar"


def _size(shape: tuple[int, ...]) -> tuple[int, bool]:
    """Numbers per sequence (with a 0 dimension: per token) and whether it grows with the input."""
    grows = 0 in shape
    return math.prod(s for s in shape if s != 0), grows


def layer_table(model) -> pd.DataFrame:
    """One row per layer: mixer, MLP, state tensors, state numbers and parameters."""
    rows = []
    for i, block in enumerate(model.blocks):
        shapes = {f"mixer.{k}": s for k, s in block.mixer.state_shapes().items()}
        if block.mlp is not None and hasattr(block.mlp, "state_shapes"):
            shapes.update({f"mlp.{k}": s for k, s in block.mlp.state_shapes().items()})
        fixed = sum(_size(s)[0] for s in shapes.values() if not _size(s)[1])
        per_token = sum(_size(s)[0] for s in shapes.values() if _size(s)[1])
        rows.append({
            "layer": i, "mixer": model.cfg.layout[i], "mlp": model.cfg.mlp_layout[i],
            "state tensors": ", ".join(f"{k} [{_fmt_shape(s)}]" for k, s in shapes.items()) or "none",
            "state (fixed)": fixed, "state per token (grows)": per_token,
            "mixer params": sum(p.numel() for p in block.mixer.parameters()),
            "mlp params": sum(p.numel() for p in block.mlp.parameters()) if block.mlp is not None else 0,
        })
    return pd.DataFrame(rows)


def layout_figure(model, table: pd.DataFrame, n_tok: int | None) -> go.Figure:
    """Blocks stacked bottom (embedding) to top (unembedding); the mixer box is coloured by kind and
    labelled with its state size, the MLP box beside it."""
    fig = go.Figure()
    n = len(table)

    def box(x0, x1, y0, y1, color, text, hover):
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, fillcolor=color, line=dict(color="#444", width=1),
                      layer="below")
        fig.add_trace(go.Scatter(x=[(x0 + x1) / 2], y=[(y0 + y1) / 2], mode="text", text=[text],
                                 textfont=dict(color="black"), hovertext=[hover], hoverinfo="text", showlegend=False))

    cfg = model.cfg
    box(0, 1, -1, -0.2, "#eeeeee", f"embed  {cfg.vocab_size} x {cfg.d_model}", "token embedding")
    for i, row in table.iterrows():
        y0, y1 = i, i + 0.8
        state = []
        if row["state (fixed)"]:
            state.append(f"{row['state (fixed)']:,} state")
        if row["state per token (grows)"]:
            grown = f" = {row['state per token (grows)'] * n_tok:,} now" if n_tok else ""
            state.append(f"{row['state per token (grows)']:,}/token KV{grown}")
        label = f"L{i} {row['mixer']}" + (f"<br>{'; '.join(state)}" if state else "")
        box(0, 0.62 if row["mlp"] != "none" else 1, y0, y1, COLORS.get(row["mixer"], "#cccccc"), label,
            f"layer {i}: {row['mixer']}<br>{row['state tensors']}<br>{row['mixer params']:,} params")
        if row["mlp"] != "none":
            box(0.66, 1, y0, y1, MLP_COLOR, f"MLP {row['mlp']}", f"{row['mlp params']:,} params")
    box(0, 1, n, n + 0.8, "#eeeeee", f"norm + unembed  {cfg.d_model} x {cfg.vocab_size}", "final norm, unembedding")
    fig.update_xaxes(visible=False, range=[-0.02, 1.02])
    fig.update_yaxes(visible=False, range=[-1.1, n + 0.9])
    fig.update_layout(title=f"{n} layers, d_model {cfg.d_model} (residual stream runs bottom to top)",
                      plot_bgcolor="white")
    return fig


def _column(slot: Slot, n_tok: int | None) -> None:
    model = slot.model
    table = layer_table(model)
    show_figure(layout_figure(model, table, n_tok), key=f"arch-{slot.name}", height=110 + 70 * (len(table) + 2))
    fixed, grows = int(table["state (fixed)"].sum()), int(table["state per token (grows)"].sum())
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{loading.n_params(model):,}")
    c2.metric("Fixed state", f"{fixed:,}")
    c3.metric("KV per token", f"{grows:,}")
    show_table(table, key=f"architecture-{slot.name}")


def render(ctx: Context) -> None:
    st.subheader("Architecture and state sizes")
    st.caption("Memory carried between tokens, per sequence: a recurrent mixer's state has a fixed size; "
               "attention keeps keys and values of every token seen (T = tokens so far).")
    n_tok = n_tokens(ctx)
    side_by_side(ctx, lambda slot: _column(slot, n_tok))
