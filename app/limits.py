"""What of the input is analysed: the explorer's token limit (offered as a truncation) and each model's
trained context (a warning past it).

:func:`fit_to_limits` runs once per page before the views: a text longer than
:data:`app.loading.MAX_TOKENS` tokens is cut to its first ``MAX_TOKENS`` tokens when the
"analyse the first tokens" box is ticked (the default), and the page says so; a model trained on
shorter windows (the zoo: 256 bytes) gets a warning naming the position past which its
predictions leave the trained range.
"""
from __future__ import annotations

import dataclasses

import streamlit as st

from app import loading
from app.context import Context


def _first_model(ctx: Context):
    return next((slot.model for slot in ctx.slots if slot.model is not None), None)


def fit_to_limits(ctx: Context) -> Context:
    """``ctx`` with its text cut to the explorer's limit when the user agrees; the messages on the page."""
    model = _first_model(ctx)
    if model is None:
        return ctx
    n = int(model.to_tokens(ctx.text).shape[1])
    if n > loading.MAX_TOKENS:
        cut = st.checkbox(f"Analyse the first {loading.MAX_TOKENS} tokens", value=True, key="truncate",
                          help="Off: every view reports the text as too long.")
        if cut:
            text = loading.truncate_text(model, ctx.text)
            st.info(f"The text is {n} tokens ({len(ctx.text):,} characters); the explorer analyses at most "
                    f"{loading.MAX_TOKENS}, so the views show its first {len(text):,} characters "
                    f"(tokens 0-{loading.MAX_TOKENS - 1}). Untick the box to see the limit instead.")
            ctx = dataclasses.replace(ctx, text=text)
    for slot in ctx.slots:
        trained = loading.trained_context(slot.model) if slot.model is not None else None
        n = int(slot.model.to_tokens(ctx.text).shape[1]) if trained else 0
        if trained and n > trained:
            st.warning(f"Model {slot.name} was trained on {trained}-token windows; this input is {n} tokens. Past "
                       f"position {trained - 1} its predictions leave the trained range (the loss rises), so "
                       "differences there say more about length than about the architecture.")
    return ctx
