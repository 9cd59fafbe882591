"""Logit lens and tuned lens: layer x position heatmaps of what the residual stream predicts.

The heatmap is the method's own figure (``LensResult.figure``); the explorer adds the top
``HOVER_K`` tokens and their probabilities to every cell's hover text (from the lens logits,
kept when ``layers x positions x vocab`` is small enough).

A tuned lens saved beside a checkpoint (``tuned_lens.safetensors``, see
:meth:`probe.methods.TunedLens.save`) is used when present; otherwise one can be fitted here
on the code corpus (a short run: the translators start at the identity, so even a few
steps move them from the logit lens towards the final distribution).
"""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import ColorScale, display_token, position_window, show_figure, show_table, window_heatmap
from probe import methods
from probe.methods.support.input_checks import token_str

HOVER_K = 5
#: keep lens logits for the hover text only below this many floats
MAX_HOVER_FLOATS = 30_000_000
#: on-the-fly tuned lens training: windows per step and their length
FIT_BATCH, FIT_SEQ_LEN = 4, 64
FIT_CORPUS_BYTES = 150_000


def _hover_text(model, logits: torch.Tensor) -> np.ndarray:
    """``[layer, pos]`` strings "tok p / tok p / ..." of the top ``HOVER_K`` tokens of each cell."""
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(min(HOVER_K, probs.shape[-1]), -1)
    tok_str = lambda t: token_str(model, t)
    ids, ps = top.indices.tolist(), top.values.tolist()
    return np.array([[" · ".join(f"{display_token(tok_str(i))} {p:.2f}" for i, p in zip(cell_i, cell_p))
                      for cell_i, cell_p in zip(row_i, row_p)] for row_i, row_p in zip(ids, ps)], dtype=object)


def _with_hover(model, result, color: str):
    fig = result.figure(color=color)
    if result.logits is not None:
        fig.update_traces(customdata=_hover_text(model, result.logits[:, 0]),
                          hovertemplate=("layer %{y}<br>input %{x}<br>top tokens: %{customdata}<br>"
                                         + ("KL to final %{z:.3f}" if color == "kl" else "top-1 prob %{z:.3f}")
                                         + "<extra></extra>"))
    return fig


def _keep_logits(model, text: str) -> bool:
    n = loading.check_text(model, text).shape[1]
    return (model.cfg.n_layers + 1) * n * model.cfg.vocab_size <= MAX_HOVER_FLOATS


@st.cache_data(show_spinner="Running the logit lens...", max_entries=32)
def logit_lens_figures(source: str, text: str) -> dict:
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    res = methods.logit_lens(model, tokens, keep_logits=_keep_logits(model, text))
    return {"kl": _with_hover(model, res, "kl"), "prob": _with_hover(model, res, "prob"),
            "metrics": res.metric_figure(), "frame": res.to_frame()}


@st.cache_resource(show_spinner=False, max_entries=8)
def saved_tuned_lens(source: str):
    """The tuned lens saved beside the model's checkpoint, or None."""
    from probe.errors import ProbeError

    TunedLens = methods.TunedLens
    model = loading.load_model(source)
    if not getattr(model, "checkpoint_path", None):
        return None
    try:
        return TunedLens.load(model)
    except ProbeError:
        return None


@st.cache_resource(show_spinner=False)
def fit_corpus() -> list[str]:
    from probe.data.code_corpus import CodeCorpus

    return [f.text for f in CodeCorpus("train", max_bytes=FIT_CORPUS_BYTES).files]


@st.cache_resource(show_spinner=False, max_entries=8)
def fitted_tuned_lens(source: str, steps: int):
    """A tuned lens fitted here for ``steps`` steps on the code corpus (kept for this server's life)."""
    model = loading.load_model(source)
    seq_len = min(FIT_SEQ_LEN, model.cfg.context_limit or FIT_SEQ_LEN)
    lens = methods.TunedLens(model)
    return lens.fit(model, fit_corpus(), steps=steps, batch_size=FIT_BATCH, seq_len=seq_len, warmup=max(1, steps // 10))


def tuned_lens_for(source: str, steps: int | None):
    """``(lens, description)``: the saved lens, else the one fitted with ``steps`` (None if not fitted)."""
    lens = saved_tuned_lens(source)
    if lens is not None:
        info = lens.train_info
        return lens, f"saved beside the checkpoint ({info.get('steps', '?')} steps)"
    if steps is None:
        return None, ""
    return fitted_tuned_lens(source, steps), f"fitted here: {steps} steps x {FIT_BATCH} x {FIT_SEQ_LEN} tokens"


@st.cache_data(show_spinner="Running the tuned lens...", max_entries=32)
def tuned_lens_figures(source: str, text: str, steps: int | None) -> dict | None:
    lens, desc = tuned_lens_for(source, steps)
    if lens is None:
        return None
    model = loading.load_model(source)
    tokens = loading.check_text(model, text)
    res = lens.run(model, tokens, keep_logits=_keep_logits(model, text))
    return {"kl": _with_hover(model, res, "kl"), "prob": _with_hover(model, res, "prob"),
            "metrics": res.metric_figure(), "frame": res.to_frame(), "desc": desc}


def color_scale(color: str) -> ColorScale:
    """Both columns' lens heatmaps on one range: a probability on [0, 1], KL from 0 to the larger maximum."""
    if color == "prob":
        return ColorScale("(top-1 probability)", 0.0, 1.0)
    return ColorScale("(KL to the final distribution, nats)", lo=0.0)


def _show(slot: Slot, figs: dict, color: str, kind: str, window: tuple[int, int] | None = None,
          scale: ColorScale | None = None) -> None:
    if "desc" in figs:
        st.caption(f"Tuned lens {figs['desc']}.")
    fig = window_heatmap(figs[color], window)
    n_layers = len(fig.data[0].y)
    show_figure(fig, key=f"{kind}-{slot.name}", height=max(380, 200 + 45 * n_layers), scale=scale)
    with st.expander("By layer: KL, loss, top-1 agreement"):
        show_figure(figs["metrics"], key=f"{kind}-metrics-{slot.name}", height=300)
        show_table(figs["frame"], key=f"{kind}-{slot.name}")


def render_logit(ctx: Context) -> None:
    st.subheader("Logit lens")
    st.caption("Each residual stream read out with the final norm and unembedding. Cell text (when the window "
               "is narrow enough to read it): the top next-token prediction after that layer; hover for the top "
               "tokens and probabilities. Both columns share one colour scale.")
    color = st.radio("Colour", ["prob", "kl"], horizontal=True, key="logit_lens_color", bind="query-params",
                     format_func={"prob": "top-1 probability", "kl": "KL to the final distribution"}.get)
    window = position_window(ctx, "logit_lens_window")
    scale = color_scale(color)
    side_by_side(ctx, lambda slot: _show(slot, logit_lens_figures(slot.source, ctx.text), color, "logit-lens",
                                         window, scale))
    scale.draw()


def _tuned_column(slot: Slot, text: str, color: str, steps: int, window, scale: ColorScale) -> None:
    fit_key = f"tuned_fit::{slot.source}"
    if saved_tuned_lens(slot.source) is None and st.session_state.get(fit_key) is None:
        offer = st.empty()  # the offer and its button, replaced by the result once fitted
        with offer.container():
            st.info("No tuned lens is saved beside this model.")
            clicked = st.button(f"Fit a tuned lens now ({steps} steps)", key=f"fit-{slot.name}")
        if not clicked:
            return
        offer.empty()
        with st.spinner(f"Fitting the tuned lens of model {slot.name} ({steps} steps on the code corpus)..."):
            fitted_tuned_lens(slot.source, steps)
        st.session_state[fit_key] = steps
    figs = tuned_lens_figures(slot.source, text, st.session_state.get(fit_key))
    _show(slot, figs, color, "tuned-lens", window, scale)


def render_tuned(ctx: Context) -> None:
    st.subheader("Tuned lens")
    st.caption("Each residual stream mapped by a learned affine translator before the readout "
               "(Belrose et al. 2023); compare with the logit lens tab.")
    left, right = st.columns(2)
    color = left.radio("Colour", ["prob", "kl"], horizontal=True, key="tuned_lens_color", bind="query-params",
                       format_func={"prob": "top-1 probability", "kl": "KL to the final distribution"}.get)
    steps = right.select_slider("Steps when fitting here", [5, 10, 20, 50, 100, 200, 500], value=20,
                                key="tuned_steps", help="Each step: 4 windows of 64 tokens of the stdlib corpus.")
    window = position_window(ctx, "tuned_lens_window")
    scale = color_scale(color)
    side_by_side(ctx, lambda slot: _tuned_column(slot, ctx.text, color, int(steps), window, scale))
    scale.draw()
