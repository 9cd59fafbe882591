"""Next-token predictions: the top tokens at a chosen position and the surprisal of every token.

One forward pass per model and text (cached); changing the position only re-reads the cached
``[pos, k]`` table.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import clamp_position, display_token, position_picker, show_figure
from probe.methods.support.input_checks import token_str

TOP_K = 10


@st.cache_data(show_spinner="Running the model...", max_entries=64)
def predictions(source: str, text: str) -> dict:
    """Top-``TOP_K`` next tokens at every position and the per-token loss (nats)."""
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    with torch.no_grad():
        logits = model(tokens)[0].float()
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(min(TOP_K, logp.shape[-1]), -1)
    loss = -logp[:-1].gather(-1, tokens[0, 1:, None])[:, 0]
    tok_str = lambda t: token_str(model, t)
    return {
        "str_tokens": [display_token(tok_str(t)) for t in tokens[0].tolist()],
        "top_tokens": [[display_token(tok_str(t)) for t in row] for row in top.indices.tolist()],
        "top_probs": top.values.exp().tolist(),
        "loss": loss.tolist(),
    }


def _column(slot: Slot, text: str, position: int) -> None:
    res = predictions(slot.source, text)
    n = len(res["str_tokens"])
    pos = clamp_position(position, n)
    st.markdown(f"After `{res['str_tokens'][pos]}` (position {pos} of {n}):")
    frame = pd.DataFrame({"token": res["top_tokens"][pos], "probability": res["top_probs"][pos]})
    fig = go.Figure(go.Bar(x=frame["probability"][::-1], y=[f"{t} " for t in frame["token"][::-1]],
                           orientation="h", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=f"Top {len(frame)} next tokens", xaxis_title="probability", yaxis={"type": "category"})
    show_figure(fig, key=f"pred-top-{slot.name}", height=330)
    if res["loss"]:
        bits = [v / math.log(2) for v in res["loss"]]
        mean = sum(bits) / len(bits)
        x = [f"{i + 1}:{t}" for i, t in enumerate(res["str_tokens"][1:])]
        fig = go.Figure(go.Scatter(x=x, y=bits, mode="lines+markers",
                                   hovertemplate="%{x}<br>%{y:.2f} bits<extra></extra>"))
        fig.update_layout(title=f"Surprisal of each token: mean {mean:.2f} bits/token",
                          xaxis={"type": "category", "title": "position : token"}, yaxis_title="bits")
        show_figure(fig, key=f"pred-loss-{slot.name}", height=300)


def render(ctx: Context) -> None:
    st.subheader("Next-token predictions")
    position = position_picker(ctx, key="pred_position")
    side_by_side(ctx, lambda slot: _column(slot, ctx.text, position))
