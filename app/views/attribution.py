"""Direct logit attribution: the logit (difference) at one position split over the embedding, every
mixer, every MLP and the biases (attention optionally by head), with the final-norm scale frozen.
"""
from __future__ import annotations

import streamlit as st

from app import loading
from app.context import Context, Slot, side_by_side
from app.views.target import Metric, metric_picker
from app.widgets import clamp_position, show_figure, show_table
from probe import methods



@st.cache_data(show_spinner="Attributing the logit to components...", max_entries=64)
def dla(source: str, text: str, metric: Metric, per_head: bool) -> dict:
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    pos = clamp_position(metric.position, tokens.shape[1])
    dla_fn = methods.direct_logit_attribution
    res = dla_fn(model, tokens, target=metric.target, contrast=metric.contrast, position=pos, per_head=per_head)
    return {"figure": res.figure(heads=per_head), "frame": res.to_frame(), "label": res.metric_label[0],
            "rel_error": float(res.rel_error[0]), "logit": float(res.logit[0])}


def _column(slot: Slot, text: str, metric: Metric, per_head: bool) -> None:
    out = dla(slot.source, text, metric, per_head)
    show_figure(out["figure"], key=f"dla-{slot.name}", height=420)
    st.caption(f"{out['label']} = {out['logit']:.3f}; the parts sum to it within relative error "
               f"{out['rel_error']:.1e}.")
    with st.expander("Table"):
        show_table(out["frame"], key=f"dla-{slot.name}")


def render(ctx: Context) -> None:
    st.subheader("Direct logit attribution by component")
    st.caption("logit = sum over the residual stream's parts (embedding, each mixer, each MLP) of their "
               "projection through the frozen final norm and the unembedding, plus the biases.")
    metric = metric_picker(ctx, "dla")
    per_head = st.checkbox("Split attention layers by head", value=False, key="dla_heads", bind="query-params")
    side_by_side(ctx, lambda slot: _column(slot, ctx.text, metric, per_head))
