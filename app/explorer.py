"""probe explorer: compare two models side by side on the same input, method by method.

Run with ``probe explore``, ``bash scripts/dev.sh explore`` or ``streamlit run app/explorer.py``.
The sidebar picks model A and model B (shipped zoo, untrained demo models, a checkpoint
directory or a Hugging Face id) and the input (typed text, a code snippet or a synthetic
task example); each tab is one view (``app/views/``) and only the open tab is computed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/explorer.py` puts app/ on the path, not the repo
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="probe explorer", layout="wide")
st.title("probe explorer")

# The title and the sidebar's pickers need no torch, so they show at once; each model then loads
# under a spinner naming it (the first load of a server imports torch and TransformerLens), and
# only the open tab's view module is imported.
from app.context import guarded  # noqa: E402 - after the title on purpose
from app.limits import fit_to_limits  # noqa: E402
from app.sidebar import sidebar  # noqa: E402
from app.views import VIEWS, renderer  # noqa: E402
from app.widgets import n_tokens  # noqa: E402

ctx = sidebar()
if not ctx.text.strip():
    st.warning("Enter some text to analyse (or pick an example in the sidebar).")
    st.stop()
ctx = fit_to_limits(ctx)
n = n_tokens(ctx)
st.caption(f"Input: {len(ctx.text)} characters" + (f", {n} tokens" if n is not None else "")
           + " · model A on the left, model B on the right.")

labels = [label for label, _ in VIEWS]
tabs = st.tabs(labels, key="view", on_change="rerun", bind="query-params")
for tab, (label, target) in zip(tabs, VIEWS):
    if tab.open:
        with tab:
            guarded(lambda: renderer(target)(ctx), label)
