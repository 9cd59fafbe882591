"""The sidebar: pick model A and model B, and the input (typed text, a code snippet or a task example).

Returns a :class:`app.context.Context` that every view shares. Every picker is drawn before any
model loads (drawing them needs no torch), then each model loads under a spinner in the page that
names it; its description or error is written back under its picker.
"""
from __future__ import annotations

import sys

import streamlit as st

import probe
from app import examples, loading
from app.context import Context, Slot

LOCAL, HUB = "Local checkpoint...", "Hugging Face id..."
DEFAULT_TEXT = "def add(a, b):\n    return a + b\n"
INPUT_MODES = ("Your text", "Code corpus", "Synthetic task")
#: the longest typed text kept in the page's address (query parameter ``text::own``)
MAX_URL_TEXT = 2000


def _label(option: str) -> str:
    if option.startswith("zoo:"):
        return f"zoo: {option[4:]}"
    if option.startswith("demo:"):
        return f"demo: {option[5:]} (untrained)"
    return option


def pick_model(name: str, default: str) -> Slot:
    """One model picker: a :class:`Slot` holding the chosen source (no model yet), or its error
    when the source is still to be typed."""
    options = loading.zoo_sources() + loading.demo_sources() + [LOCAL, HUB]
    index = options.index(default) if default in options else 0
    choice = st.selectbox(f"Model {name}", options, index=index, format_func=_label, key=f"model_{name}",
                          bind="query-params")
    if choice == LOCAL:
        source = st.text_input(f"Model {name}: checkpoint directory", key=f"path_{name}", bind="query-params",
                               placeholder="runs/mine/model  (config.json + model.safetensors)").strip()
        if not source:
            return Slot(name, "", error=f"Model {name}: type the path of a checkpoint directory in the sidebar.")
    elif choice == HUB:
        hub_id = st.text_input(f"Model {name}: Hugging Face id", key=f"hub_{name}", bind="query-params",
                               placeholder="openai-community/gpt2").strip()
        st.caption("Needs a network connection and `pip install -e '.[hf]'` (gpt2, rwkv, mamba, xlstm).")
        if not hub_id:
            return Slot(name, "", error=f"Model {name}: type a Hugging Face id (owner/name) in the sidebar.")
        source = f"hf:{hub_id}"
    else:
        source = choice
    return Slot(name, source)


def load_slot(slot: Slot, note) -> Slot:
    """``slot`` with its model loaded (cached) under a spinner naming it; its description, or the
    failure as ``slot.error``, is written to ``note`` (a placeholder under the picker)."""
    if slot.error:
        return slot
    first = "transformer_lens" not in sys.modules  # the first load of a server imports the model code
    message = f"Loading model {slot.name}: {slot.source}" + (
        " (the first model also imports PyTorch and TransformerLens: several seconds)..." if first else "...")
    try:
        with st.spinner(message):
            model = loading.load_model(slot.source)
    except Exception as exc:  # noqa: BLE001 - shown in the page, never as a traceback
        text = str(exc) if isinstance(exc, probe.ProbeError) else f"{type(exc).__name__}: {exc}"
        note.error(f"Model {slot.name}: {text}")
        return Slot(slot.name, slot.source, error=f"Model {slot.name} could not be loaded: {text}")
    note.caption(loading.describe(model))
    return Slot(slot.name, slot.source, model)


def pick_input() -> tuple[str, examples.Example | None]:
    """The input text and, for a task example or code snippet, the :class:`Example` it came from.

    The text box is keyed by the example, so picking another example resets it while edits to
    the current one are kept."""
    mode = st.radio("Input", INPUT_MODES, horizontal=True, key="input_mode", bind="query-params")
    example = None
    if mode == "Code corpus":
        choices = examples.code_examples()
        if choices:
            example = st.selectbox("Snippet (held-out stdlib files)", choices, format_func=lambda e: e.label,
                                   key="code_example")
        else:
            st.warning("No code snippets found in this Python's standard library.")
    elif mode == "Synthetic task":
        task = st.selectbox("Task", examples.task_names(), key="task_name", bind="query-params")
        st.caption(examples.task_description(task))
        index = st.number_input("Example", min_value=0, max_value=49, value=0, step=1, key="task_index",
                                bind="query-params")
        example = examples.task_examples(task, 50)[int(index)]
    default = example.text if example is not None else DEFAULT_TEXT
    key = f"text::{example.label}" if example is not None else "text::own"
    # your own text goes into the page's address (a shareable view) while it is short enough for a URL
    own_short = example is None and len(st.session_state.get(key, default)) <= MAX_URL_TEXT
    if example is None and not own_short:
        st.query_params.pop(key, None)  # a stale short text in the address would come back on reload
    text = st.text_area("Text", default, height=160, key=key, bind="query-params" if own_short else None,
                        help=f"Any length; the explorer analyses the first {loading.MAX_TOKENS} tokens.")
    return text, example


def sidebar() -> Context:
    """Draw every picker, then load the two models (spinners in the page); the shared context."""
    with st.sidebar:
        st.header("Models")
        a, b = loading.default_sources()
        picked = []
        for name, default in (("A", a), ("B", b)):
            picked.append((pick_model(name, default), st.empty()))
        if not loading.zoo_sources():
            st.caption("No zoo models are installed: the demo models are untrained (random weights).")
        st.header("Input")
        text, example = pick_input()
    slots = [load_slot(slot, note) for slot, note in picked]
    return Context(slots, text, example)
