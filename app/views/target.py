"""The metric picker shared by the attribution and saliency views: a position, a target token and an
optional contrast token (``logit[target] - logit[contrast]``).

With a task example as input the defaults are the task's first answer: its position, the
correct token and the contrast token (e.g. ``are`` vs ``is`` after an attractor).
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from app.context import Context
from app.widgets import n_tokens
from probe.methods.support.input_checks import token_str


@dataclass(frozen=True)
class Metric:
    position: int  # -1: the last
    target: str | None  # None: the model's top prediction
    contrast: str | None


def _token_text(model_slots, token_id: int) -> str:
    for slot in model_slots:
        if slot.model is not None:
            return token_str(slot.model, token_id)
    return ""


def metric_picker(ctx: Context, key: str) -> Metric:
    """Widgets for the metric; keys are prefixed with ``key`` so each view keeps its own choice."""
    n = n_tokens(ctx)
    example = ctx.example if ctx.example is not None and ctx.example.text == ctx.text else None
    answer = example is not None and example.answer_positions
    default_pos = (example.answer_positions[0] if answer else (n - 1 if n else 0))
    default_target = _token_text(ctx.slots, example.correct[0]) if answer else ""
    default_contrast = _token_text(ctx.slots, example.contrast[0]) if answer else ""
    if answer:
        st.caption(f"Defaults: the {example.task} task's answer at position {default_pos} "
                   f"({default_target!r} vs {default_contrast!r}).")
    c1, c2, c3 = st.columns([3, 1, 1])
    suffix = example.label if answer else "text"
    if n is not None and n >= 2:
        position = c1.slider("Position whose next-token logit is explained", 0, n - 1,
                             max(0, min(n - 1, default_pos)), key=f"{key}_pos::{suffix}")
    else:
        position = -1
    target = c2.text_input("Target token", default_target, key=f"{key}_target::{suffix}",
                           help="One token; empty: the model's top prediction.")
    contrast = c3.text_input("Contrast token", default_contrast, key=f"{key}_contrast::{suffix}",
                             help="Optional: explain logit[target] - logit[contrast].")
    return Metric(int(position), target or None, contrast or None)
