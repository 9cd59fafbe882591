"""Probe accuracy by layer, hidden state vs recurrent state (placeholder until probe.methods.probing lands)."""
from __future__ import annotations

import streamlit as st

from app import methods
from app.context import Context


def render(ctx: Context) -> None:
    st.subheader("Probe accuracy by layer: hidden vs state")
    if not methods.available("fit_probes", "collect_activations"):
        return
