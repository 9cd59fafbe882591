"""Steering with a coefficient slider and steered generation (placeholder until probe.methods.steering lands)."""
from __future__ import annotations

import streamlit as st

from app import methods
from app.context import Context


def render(ctx: Context) -> None:
    st.subheader("Steering")
    if not methods.available("steering_vector", "steer"):
        return
