"""Steering: add ``coefficient x v`` to the residual stream (contrastive activation addition) or to the
recurrent state (state steering), see the effect on a logit difference and on generated text.

``v`` is the mean activation difference over contrast pairs (:func:`probe.methods.steering_vector`;
for ``"state"`` every ``hook_state*`` of the layer, concatenated);
:func:`probe.methods.steer` sweeps the coefficient and generates with the steering applied
while the state is carried token by token.
"""
from __future__ import annotations

import streamlit as st

from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import show_figure
from probe import methods
from probe.data.contrast import NUMBER, PAIRS, ContrastPairs

SWEEP = (-8.0, -4.0, 0.0, 4.0, 8.0)
SITES = {"resid_pre": "residual stream (CAA)", "state": "recurrent state (state steering)"}


#: the explorer's presets: the shared contrast pairs of probe.data.contrast (the README and notebooks use them too)
PRESETS = {pairs.description: pairs for pairs in PAIRS.values()}
CUSTOM = "your own pairs"


@st.cache_resource(show_spinner="Computing the steering vector...", max_entries=16)
def vector(source: str, preset: ContrastPairs, site: str):
    model = loading.load_model(source)
    return methods.steering_vector(model, list(preset.positive), list(preset.negative), site=site)


@st.cache_data(show_spinner="Steering...", max_entries=32)
def sweep(source: str, preset: ContrastPairs, site: str) -> dict:
    model = loading.load_model(source)
    loading.check_text(model, preset.prompt)
    res = methods.steer(model, preset.prompt, vector(source, preset, site), coefficients=list(SWEEP),
                               answer=preset.answer, contrast=preset.contrast)
    return {"figure": res.figure(), "norms": res.norms, "layers": res.layers}


@st.cache_data(show_spinner="Generating with and without steering...", max_entries=64)
def generate(source: str, preset: ContrastPairs, site: str, layer: int, coefficient: float, n: int) -> dict:
    model = loading.load_model(source)
    res = methods.steer(model, preset.prompt, vector(source, preset, site), coefficients=[0.0, coefficient],
                               layers=[layer], max_new_tokens=n, answer=preset.answer, contrast=preset.contrast)
    plain, steered = res.generations[layer, 0.0][0], res.generations[layer, float(coefficient)][0]
    return {"plain": plain, "steered": steered, "metric": res.metric[0].tolist()}


def _pick_preset() -> ContrastPairs | None:
    name = st.selectbox("Contrast pairs", list(PRESETS) + [CUSTOM], key="steer_preset", bind="query-params")
    if name != CUSTOM:
        preset = PRESETS[name]
        st.caption(f"{len(preset.positive)} pairs, e.g. {preset.positive[0]!r} vs {preset.negative[0]!r}.")
        return preset
    a, b = st.columns(2)
    st.caption("One text per line; a line's spaces are kept (end a subject with a space when the next token "
               "is the verb's first letter).")
    pos = a.text_area("Positive texts (one per line)", "\n".join(NUMBER.positive[:3]), key="steer_pos")
    neg = b.text_area("Negative texts (one per line)", "\n".join(NUMBER.negative[:3]), key="steer_neg")
    prompt = a.text_input("Prompt", NUMBER.prompt, key="steer_prompt")
    c1, c2 = b.columns(2)
    answer = c1.text_input("Answer token", NUMBER.answer, key="steer_answer")
    contrast = c2.text_input("Contrast token", NUMBER.contrast, key="steer_contrast")
    positive = tuple(line for line in pos.split("\n") if line.strip())
    negative = tuple(line for line in neg.split("\n") if line.strip())
    if not (positive and negative and prompt and answer and contrast):
        st.warning("Give positive and negative texts, a prompt and the two tokens of the metric.")
        return None
    return ContrastPairs(positive, negative, prompt, answer, contrast, CUSTOM)


def _column(slot: Slot, preset: ContrastPairs, site: str, coefficient: float, n_new: int) -> None:
    model = slot.model
    if site == "state" and not model.state_hook_names():
        st.info("This model has no recurrent state to steer (attention only); use the residual stream.")
        return
    out = sweep(slot.source, preset, site)
    show_figure(out["figure"], key=f"steer-{slot.name}", height=360)
    layers = out["layers"]
    layer = st.selectbox("Layer to steer for generation", layers, index=len(layers) // 2,
                         key=f"steer_layer_{slot.name}",
                         format_func=lambda l: f"{l} ({model.cfg.layout[l]}), |v| = {out['norms'][l]:.2f}")
    gen = generate(slot.source, preset, site, int(layer), float(coefficient), n_new)
    st.markdown(f"**Unsteered** (logit difference {gen['metric'][0]:+.3f})")
    st.code(gen["plain"], language=None)
    st.markdown(f"**Steered, coefficient {coefficient:+g}** (logit difference {gen['metric'][1]:+.3f})")
    st.code(gen["steered"], language=None)


def render(ctx: Context) -> None:
    st.subheader("Steering")
    st.caption("Add coefficient x v at one layer, v = mean activation difference over contrast pairs (last "
               "token). The curve: logit[answer] - logit[contrast] after the prompt against the coefficient, "
               "one line per layer; below, greedy generation without and with steering. With the default "
               "pairs (plural minus singular subject, from `probe.data.contrast`, as in the README) a positive "
               "coefficient on the residual stream raises logit[a] - logit[i] (are over is) at every layer after "
               "the embedding of the zoo models (layer 0 sees the same last token, a space, in every pair).")
    preset = _pick_preset()
    if preset is None:
        return
    c1, c2, c3 = st.columns([2, 3, 1])
    site = c1.radio("Steer", list(SITES), format_func=SITES.get, key="steer_site", bind="query-params")
    coefficient = c2.slider("Coefficient", -8.0, 8.0, 4.0, step=0.5, key="steer_coefficient", bind="query-params")
    n_new = c3.number_input("New tokens", 1, 200, 24, key="steer_tokens")
    st.markdown(f"Prompt `{preset.prompt}` · metric logit[`{preset.answer}`] - logit[`{preset.contrast}`]")
    side_by_side(ctx, lambda slot: _column(slot, preset, site, float(coefficient), int(n_new)))

