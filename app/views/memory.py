"""Memory maps: what each position reads from the past, per layer and head, for every mixer
(attention pattern; exact implicit attention of linear recurrences; gradient influence of LSTMs),
with the state size and the state norm over positions.

The maps come from :func:`probe.methods.memory_map` (cached per model, text and method as a
resource: the ``[batch, head, t, s]`` tensors are not copied on every rerun).
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
import torch

from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import ColorScale, show_figure, show_table
from probe import methods

#: random probes per position for the gradient influence unless "exact" is on (exact costs
#: ``positions x d_model`` backward rows, ``d_model / PROBES`` times more)
PROBES = 8
#: the state size is measured token by token over at most this many tokens
STATE_SIZE_TOKENS = 64


@st.cache_resource(show_spinner="Computing memory maps...", max_entries=16)
def memory(source: str, text: str, method: str, exact: bool):
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    return methods.memory_map(model, tokens, method=method, probes=None if exact else PROBES,
                                     with_state_sizes=False)


@st.cache_data(show_spinner="Measuring the state size token by token...", max_entries=32)
def state_size_figure(source: str, text: str):
    from probe.methods import MemoryMapResult

    model = loading.load_model(source)
    tokens = loading.check_text(model, text)[:, :STATE_SIZE_TOKENS]
    sizes = methods.state_sizes(model, tokens)
    return MemoryMapResult(tokens, [], [], sizes).state_size_figure()


@st.cache_data(show_spinner=False, max_entries=32)
def state_norms(source: str, text: str) -> dict[str, list[float]]:
    """``||state||`` after every token, for every ``hook_state*`` of the model (flattened over its dims)."""
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    names = model.state_hook_names()
    if not names:
        return {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {name: cache[name][0].flatten(1).float().norm(dim=-1).tolist() for name in names if name in cache}


def _short(name: str) -> str:
    return name.replace("blocks.", "L").replace(".mixer.hook_", " ").replace(".mlp.hook_", " mlp ")


def _column(slot: Slot, text: str, method: str, exact: bool, normalize: bool, scale: ColorScale | None) -> None:
    model = slot.model
    res = memory(slot.source, text, method, exact)
    with_map = [lm for lm in res.layers if lm.matrix is not None]
    if not with_map:
        st.info("No layer of this model mixes positions.")
    else:
        labels = {lm.layer: f"L{lm.layer} {lm.mixer}: {lm.kind}" for lm in with_map}
        c1, c2 = st.columns(2)
        layer = c1.selectbox("Layer", list(labels), format_func=labels.get, key=f"mem_layer_{slot.name}")
        lm = res.layer(layer)
        heads = lm.matrix.shape[1]
        head_options = [None] + list(range(heads)) if heads > 1 else [None]
        head = c2.selectbox(lm.head_label.capitalize() or "Head", head_options, key=f"mem_head_{slot.name}",
                            format_func=lambda h: "mean |A| over all" if h is None else str(h))
        show_figure(res.figure(layer=layer, head=head, normalize=normalize), key=f"mem-{slot.name}", height=480,
                    scale=scale)
        err = f"; rebuilds the mixer output within {lm.reconstruction_error:.1e}" \
            if lm.reconstruction_error is not None else ""
        st.caption(f"{lm.description}{err}")
    norms = state_norms(slot.source, text)
    if norms:
        fig = go.Figure([go.Scatter(y=v, name=_short(k), mode="lines") for k, v in norms.items()])
        fig.update_layout(title="State norm over positions", xaxis_title="position", yaxis_title="||state||")
        show_figure(fig, key=f"norms-{slot.name}", height=320)
    else:
        st.info("No recurrent state: attention keeps a KV cache that grows with position.")
    show_figure(state_size_figure(slot.source, text), key=f"sizes-{slot.name}", height=320)
    with st.expander("Per layer"):
        show_table(res.layer_frame(), key=f"memory-{slot.name}")


def render(ctx: Context) -> None:
    st.subheader("Memory maps: attention vs implicit attention")
    st.caption("Row t: how much position t reads each earlier position s. Attention: its pattern; linear "
               "recurrences: the exact implicit attention of the unrolled recurrence; LSTMs: the gradient "
               "influence ||d y_t / d x_s||.")
    c1, c2, c3 = st.columns(3)
    method = c1.radio("Map", ["auto", "gradient"], horizontal=True, key="mem_method", bind="query-params",
                      format_func={"auto": "native (pattern / implicit)", "gradient": "gradient influence (all)"}.get)
    exact = c2.checkbox("Exact gradient influence", value=False, key="mem_exact",
                        help=f"LSTM maps (and 'gradient influence (all)') are estimated with {PROBES} random "
                        "probes per position unless this is on (exact is d_model / 8 times slower).")
    normalize = c3.checkbox("Scale rows to max 1", value=True, key="mem_normalize", bind="query-params")
    # row-scaled maps mean the same thing in both columns (each row's largest read is 1): one colour scale;
    # unscaled ones are in each mixer's own units (attention weight, gradient norm), each on its own
    scale = ColorScale("(row-scaled: each row's largest read is 1)", 0.0, 1.0) if normalize else None
    side_by_side(ctx, lambda slot: _column(slot, ctx.text, method, exact, normalize, scale))
    if scale is not None:
        scale.draw()
