"""probe explorer: compare two models side by side on the same input.

Run with ``bash scripts/dev.sh explore`` or ``streamlit run app/explorer.py``.
Models come from the shipped zoo (``probe/zoo``), a local checkpoint directory, or, when
no zoo is installed, small random demo models so the page always renders.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

import probe

st.set_page_config(page_title="probe explorer", layout="wide")

DEMO = {
    "demo:transformer": ["attn", "attn"],
    "demo:qrnn-hybrid": ["qrnn", "qrnn", "attn", "ff"],
    "demo:lstm": ["lstm", "lstm"],
}


@st.cache_resource(show_spinner="Loading model...")
def load_model(source: str) -> probe.HookedLM:
    if source in DEMO:
        torch.manual_seed(0)
        return probe.HookedLM(probe.ModelConfig(d_model=64, layout=DEMO[source], name=source)).eval()
    return probe.load(source).eval()


def choices() -> list[str]:
    return [f"zoo:{n}" for n in probe.zoo_names()] or list(DEMO)


def pick(label: str, default_index: int) -> probe.HookedLM | None:
    options = choices() + ["local path..."]
    choice = st.selectbox(label, options, index=min(default_index, len(options) - 2))
    if choice == "local path...":
        choice = st.text_input(f"{label}: checkpoint directory", "")
        if not choice:
            return None
    try:
        return load_model(choice)
    except probe.ProbeError as exc:
        st.error(f"{label}: {exc}")
        return None


@st.cache_data(show_spinner="Running...")
def analyse(source_key: str, _model: probe.HookedLM, text: str):
    tokens = _model.to_tokens(text)
    with torch.no_grad():
        logits, cache = _model.run_with_cache(tokens)
    probs = torch.softmax(logits[0, -1], -1)
    top = probs.topk(10)
    preds = pd.DataFrame({"token": [repr(_model.tokenizer.token_str(i)) for i in top.indices.tolist()],
                          "prob": top.values.tolist()})
    norms = {name: cache[name][0].flatten(1).norm(dim=-1).tolist() for name in cache.state_names()}
    return preds, norms, _model.to_str_tokens(tokens)


def column(model: probe.HookedLM, text: str, key: str) -> None:
    cfg = model.cfg
    st.caption(f"layout {cfg.layout} · d_model {cfg.d_model} · "
               f"{sum(p.numel() for p in model.parameters()):,} parameters")
    try:
        preds, norms, str_tokens = analyse(key, model, text)
    except probe.ProbeError as exc:
        st.error(str(exc))
        return
    st.subheader("Next-token prediction")
    st.dataframe(preds, hide_index=True, use_container_width=True)
    st.subheader("State norm over positions")
    if not norms:
        st.info("This model has no recurrent state (attention keeps a KV cache that grows with position).")
    else:
        fig = go.Figure([go.Scatter(y=v, name=k.replace("blocks.", "L").replace(".mixer.hook_", " "))
                         for k, v in norms.items()])
        fig.update_layout(xaxis_title="position", yaxis_title="||state||", height=320, margin=dict(t=10))
        st.plotly_chart(fig, use_container_width=True, key=f"norms-{key}")


st.title("probe explorer")
text = st.text_area("Input text", "def add(a, b):\n    return a + b\n", max_chars=2000)
if not text.strip():
    st.warning("Enter some text to analyse.")
    st.stop()
left, right = st.columns(2)
with left:
    model_a = pick("Model A", 0)
    if model_a is not None:
        column(model_a, text, "A")
with right:
    model_b = pick("Model B", 1)
    if model_b is not None:
        column(model_b, text, "B")
