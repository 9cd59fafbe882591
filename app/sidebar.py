"""The sidebar: pick model A and model B, and the input (typed text, a code snippet or a task example).

Returns a :class:`app.context.Context` that every view shares.
"""
from __future__ import annotations

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
    """One model picker; the model is loaded (cached) and any failure becomes ``slot.error``."""
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
    try:
        model = loading.load_model(source)
    except Exception as exc:  # noqa: BLE001 - shown in the page, never as a traceback
        message = str(exc) if isinstance(exc, probe.ProbeError) else f"{type(exc).__name__}: {exc}"
        st.error(f"Model {name}: {message}")
        return Slot(name, source, error=f"Model {name} could not be loaded: {message}")
    st.caption(loading.describe(model))
    return Slot(name, source, model)


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
    with st.sidebar:
        st.header("Models")
        a, b = loading.default_sources()
        slots = [pick_model("A", a), pick_model("B", b)]
        if not loading.zoo_sources():
            st.caption("No zoo models are installed: the demo models are untrained (random weights).")
        st.header("Input")
        text, example = pick_input()
    return Context(slots, text, example)
