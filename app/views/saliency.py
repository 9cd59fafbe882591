"""Token saliency: integrated gradients of a logit (difference) over the input embeddings, shown on
the text itself (blue pushes the logit up, red down) and as a bar per token.
"""
from __future__ import annotations

import streamlit as st

from app import loading
from app.context import Context, Slot, side_by_side
from app.views.target import Metric, metric_picker
from app.widgets import clamp_position, colored_tokens, show_figure
from probe import methods
from probe.methods.support.path_quadrature import TOLERANCE

#: per-token error targets offered (the library's default, path_quadrature.TOLERANCE, among them)
UNTIL = sorted({0.05, 0.02, TOLERANCE, 0.005})


@st.cache_data(show_spinner="Integrating gradients...", max_entries=64)
def saliency(source: str, text: str, metric: Metric, until: float, baseline: str) -> dict:
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    pos = clamp_position(metric.position, tokens.shape[1])
    ig = methods.integrated_gradients
    res = ig(model, tokens, target=metric.target, contrast=metric.contrast, position=pos, baseline=baseline,
             until=until)
    shown = res.str_tokens[0][: pos + 1]
    values = res.attributions[0, : pos + 1].tolist()
    return {"figure": res.figure(), "tokens": shown, "values": values,
            "title": f"{res.metric_label[0]} at position {pos}",
            "completeness": float(res.completeness_error[0]), "delta": float(res.metric[0] - res.baseline_metric[0]),
            "token_error": float(res.error_share()[0]), "converged": bool(res.converged[0]), "steps": res.steps}


def shared_top(ctx: Context, metric: Metric, until: float, baseline: str) -> float | None:
    """The largest ``|attribution|`` over both models: one colour scale for the two texts (None if neither
    computes; each column then reports its own error)."""
    tops = []
    for slot in ctx.slots:
        if slot.model is not None:
            try:
                tops.append(max((abs(v) for v in saliency(slot.source, ctx.text, metric, until, baseline)["values"]),
                                default=0.0))
            except Exception:  # noqa: BLE001 - shown in the model's column by side_by_side
                continue
    return max(tops, default=0.0) or None


def _column(slot: Slot, text: str, metric: Metric, until: float, baseline: str, top: float | None) -> None:
    out = saliency(slot.source, text, metric, until, baseline)
    st.markdown(colored_tokens(out["tokens"], out["values"], out["title"], top), unsafe_allow_html=True)
    if top:
        own = max((abs(v) for v in out["values"]), default=0.0)
        st.caption(f"Colour scale: |attribution| from 0 to {top:.3g}, the same in both columns; this model's "
                   f"largest {own:.3g}.")
    st.caption(f"Attributions sum to f(x) - f(baseline) = {out['delta']:.3f} within "
               f"{100 * out['completeness']:.2f}%; each token's estimated quadrature error is at most "
               f"{100 * out['token_error']:.2f}% of the largest attribution ({out['steps']} gradient evaluations).")
    if not out["converged"]:
        st.warning("The gradient budget ran out before the error target was met: read the attributions with "
                   "the error estimate above.")
    show_figure(out["figure"], key=f"ig-{slot.name}", height=360)


def render(ctx: Context) -> None:
    st.subheader("Token saliency (integrated gradients)")
    st.caption("How much each input token's embedding moves the chosen logit, integrated along the "
               "straight path from a baseline embedding (Sundararajan et al. 2017).")
    metric = metric_picker(ctx, "ig")
    c1, c2 = st.columns(2)
    until = c1.select_slider("Per-token error target (share of the largest attribution)", UNTIL, value=TOLERANCE,
                             format_func=lambda v: f"{100 * v:g}%", key="ig_until", bind="query-params")
    baseline = c2.radio("Baseline", ["mean", "zero", "pad"], horizontal=True, key="ig_baseline", bind="query-params",
                        format_func={"mean": "mean embedding", "zero": "zero embedding",
                                     "pad": "pad token everywhere"}.get)
    top = shared_top(ctx, metric, float(until), baseline)
    side_by_side(ctx, lambda slot: _column(slot, ctx.text, metric, float(until), baseline, top))
