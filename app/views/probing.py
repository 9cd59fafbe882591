"""Probe accuracy by layer, hidden activations vs the recurrent state.

Precomputed results are read when present: a ``probes.csv`` (or ``probes.json``, records) holding
``ProbeResult.to_frame()`` rows, as ``examples/probe_zoo_table.py --out DIR`` writes them,
found beside the model's checkpoint, in ``probe/zoo/``, ``probe/zoo/results/``,
``probe/zoo/results/methods/`` (where the shipped zoo's results are) or the folder
``$PROBE_RESULTS`` (searched before the zoo's); rows are matched to a model by its ``model`` column (``qrnn`` or
``zoo:qrnn``; a file beside a checkpoint may omit it). When a shared file covers several
models, a table compares the best hidden and best state score of every architecture.

A button fits probes here on a small labelled set (a synthetic task or the code corpus) with
:func:`probe.methods.collect_activations` and :func:`probe.methods.fit_probes`, control task
included (selectivity = score - control).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import streamlit as st

import probe
from app import loading
from app.context import Context, Slot, side_by_side
from app.widgets import show_figure, show_table
from probe import methods
from probe.loading import ZOO_DIR
from probe.methods.probing import DEFAULT_PROBE_SITES

RESULTS_FILES = ("probes.csv", "probes.json")
#: datasets for on-the-fly probes: label -> (source, label name, description)
DATASETS = {
    "agreement: subject number": ("task:agreement", "number", "singular / plural subject, on every token"),
    "brackets: depth": ("task:brackets", "depth", "open brackets after each token"),
    "induction: copy index": ("task:induction", "copy_index", "index being copied (-1 outside the copy)"),
    "recall: query part": ("task:recall", "is_query", "1 on the query part"),
    "code: bracket depth": ("code", "bracket_depth", "open ( [ { in held-out stdlib code"),
    "code: inside a string": ("code", "in_string", "1 inside a string literal"),
    "code: token type": ("code", "token_type", "Python tokenize type of each byte"),
}
SITES = DEFAULT_PROBE_SITES
CONTROL_HELP = """\
**Baseline**: the score of always answering the most frequent label (accuracy), or 0 (R²).
A probe at the baseline has found nothing.

**Control task** (dotted lines, `control_score`): the same probe fitted on labels that have nothing to
do with the text: each sequence takes the label sequence of another sequence. The control keeps how
often each label occurs and how labels run along a sequence, so a probe beats the baseline on it only
by reading the position or the label frequency.

**Selectivity** = score − control score: what the activations hold about *this* text beyond that.
Near 0: the probe's score is explained by position and frequency alone. **Negative**: the probe does
worse on the real labels than on the control, i.e. the label is not linearly readable there (the
real probe sits near the baseline while the control fits some positional pattern).

A control that gives every token type its own random label (Hewitt & Liang 2019) is a function of the
token at the probed position, which every residual stream holds: it scores about 1.0 at every layer,
so a contextual label (inside a string, bracket depth) always shows a negative selectivity, whatever
the model knows. Results computed with that control (a `control_score` near 1.0 everywhere) should be
refitted (`examples/probe_zoo_table.py`) before reading their selectivity.
"""
#: on-the-fly probes: features reduced to MAX_DIM columns (random projection), MAX_TRAIN training rows
MAX_DIM, MAX_TRAIN = 128, 2000


def _read(path: Path) -> pd.DataFrame | None:
    return _read_file(str(path), path.stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=32)
def _read_file(name: str, mtime: float) -> pd.DataFrame | None:
    """A results file (cached until it changes: ``mtime`` is part of the key)."""
    path = Path(name)
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.DataFrame(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
    needed = {"label", "site", "kind", "layer", "score", "baseline", "score_name"}
    return frame if needed <= set(frame.columns) else None


def _result_files(checkpoint: str | None) -> list[Path]:
    """Results files in search order: beside the checkpoint, ``$PROBE_RESULTS``, then the shipped zoo's."""
    folders = [Path(checkpoint)] if checkpoint else []
    if os.environ.get("PROBE_RESULTS"):
        folders.append(Path(os.environ["PROBE_RESULTS"]))
    folders += [ZOO_DIR, ZOO_DIR / "results", ZOO_DIR / "results" / "methods"]
    return [d / f for d in folders for f in RESULTS_FILES if (d / f).is_file()]


def _model_keys(model) -> set[str]:
    name = model.cfg.name or ""
    keys = {name, name.removeprefix("zoo:")}
    if getattr(model, "checkpoint_path", None):
        keys.add(Path(model.checkpoint_path).name)
    return {k for k in keys if k}


def precomputed(source: str) -> pd.DataFrame | None:
    """Saved probe results of this model (the first file that has rows for it)."""
    model = loading.load_model(source)
    checkpoint = getattr(model, "checkpoint_path", None)
    for path in _result_files(checkpoint):
        frame = _read(path)
        if frame is None:
            continue
        if "model" not in frame:
            if checkpoint and path.parent == Path(checkpoint):
                return frame.assign(model=model.cfg.name)
            continue
        rows = frame[frame["model"].astype(str).isin(_model_keys(model))]
        if len(rows):
            return rows
    return None


def all_architectures() -> pd.DataFrame | None:
    """Precomputed results covering several models (the shared zoo files), or None."""
    for path in _result_files(None):
        frame = _read(path)
        if frame is not None and "model" in frame and frame["model"].nunique() > 1:
            return frame
    return None


@st.cache_data(show_spinner=False, max_entries=16)
def _labelled_data(dataset: str, size: int):
    """``([(tokens, {label: values})], label)``: byte-level sequences with per-token labels."""
    from probe.data.code_corpus import CodeCorpus
    from probe.data.tasks import get_task

    kind, label, _ = DATASETS[dataset]
    if kind == "code":
        return list(CodeCorpus("test", max_files=40).labelled(max_bytes=size)), label
    examples = get_task(kind[5:]).examples(size, seed=1)
    return [(e.tokens, {label: e.labels[label]}) for e in examples], label


@st.cache_data(show_spinner=False, max_entries=32)
def fit_here(source: str, dataset: str, size: int, sites: tuple[str, ...]) -> pd.DataFrame:
    """Probe results (``ProbeResult.to_frame()``) fitted here on ``dataset``."""
    model = loading.load_model(source)
    if model.tokenizer.vocab_size != 257:
        raise probe.InputError("Probing here uses byte-level labels (tasks, code corpus); this model has "
                             "another tokenizer.")
    data, label = _labelled_data(dataset, size)
    acts = methods.collect_activations(model, data, sites=list(sites), seq_len=256, max_dim=MAX_DIM)
    return methods.fit_probes(acts, labels=[label], max_train=MAX_TRAIN, max_test=MAX_TRAIN // 2).to_frame()


def _show(slot: Slot, frame: pd.DataFrame, key: str, caption: str) -> None:
    from probe.methods import ProbeResult

    res = ProbeResult(frame, model=slot.model.cfg.name)
    labels = list(dict.fromkeys(frame["label"]))
    label = st.selectbox("Label", labels, key=f"probe_label_{key}_{slot.name}") if len(labels) > 1 else labels[0]
    show_figure(res.figure(label), key=f"probe-{key}-{slot.name}", height=380)
    st.caption(caption)
    summary = res.summary()
    show_table(summary[summary["label"] == label], key=f"probe-{key}-{slot.name}")


def _column(slot: Slot, dataset: str, size: int, sites: tuple[str, ...]) -> None:
    saved = precomputed(slot.source)
    if saved is not None:
        _show(slot, saved, "saved", "Precomputed results shipped with the model.")
    else:
        st.caption("No precomputed probe results for this model.")
    flag = f"probes_fitted::{slot.source}::{dataset}::{size}::{sites}"
    if not st.session_state.get(flag):
        offer = st.empty()  # the button, below any saved results, replaced by the fitted ones once clicked
        if not offer.button(f"Fit probes on '{dataset}' now", key=f"probe-fit-{slot.name}"):
            return
        offer.empty()
        st.session_state[flag] = True
    with st.spinner(f"Collecting activations and fitting probes for model {slot.name}..."):
        frame = fit_here(slot.source, dataset, size, sites)
    _show(slot, frame, "here", f"Fitted here on {dataset} ({size} {'bytes' if 'code' in dataset else 'examples'}); "
                              "dotted: control task (another sequence's labels).")


def render(ctx: Context) -> None:
    st.subheader("Probe accuracy by layer: hidden vs state")
    st.caption("Linear probes read a label from each layer's residual stream (hidden: resid_post, mixer_out) "
               "and from its recurrent state (attention: the key and value written at the token); held-out "
               "score against layer.")
    with st.expander("Control task and selectivity: how to read them"):
        st.markdown(CONTROL_HELP)
    c1, c2, c3 = st.columns([2, 1, 2])
    dataset = c1.selectbox("Fit on", list(DATASETS), key="probe_dataset", bind="query-params",
                           help="; ".join(f"{k}: {v[2]}" for k, v in DATASETS.items()))
    if DATASETS[dataset][0] == "code":
        size = c2.select_slider("Bytes", [5_000, 10_000, 20_000, 50_000], value=10_000, key="probe_bytes")
    else:
        size = c2.select_slider("Examples", [30, 100, 200, 400], value=100, key="probe_examples")
    sites = c3.multiselect("Sites", SITES, default=list(SITES), key="probe_sites")
    folder = st.text_input("...or fit on a harvest folder", key="probe_harvest",
                           help="A folder written by `probe harvest` (or probe.harvest.harvest): the probes stream "
                                "its shards and fit every label it holds.")
    if folder.strip():
        _harvested(folder.strip())
        return
    if not sites:
        st.warning("Pick at least one site.")
        return
    side_by_side(ctx, lambda slot: _column(slot, dataset, int(size), tuple(sites)))
    _architectures()


def fit_harvest(folder: str) -> pd.DataFrame:
    """Probe results fitted on a harvest folder (streamed shard by shard), cached until its manifest changes."""
    manifest = Path(folder) / "manifest.json"
    return _fit_harvest(folder, manifest.stat().st_mtime if manifest.is_file() else 0.0)


@st.cache_data(show_spinner=False, max_entries=8)
def _fit_harvest(folder: str, mtime: float) -> pd.DataFrame:
    return methods.fit_probes(folder, max_train=MAX_TRAIN, max_test=MAX_TRAIN // 2).to_frame()


def _harvested(folder: str) -> None:
    from probe.methods import ProbeResult

    try:
        with st.spinner(f"Fitting probes on the harvest in {folder}..."):
            frame = fit_harvest(folder)
    except probe.ProbeError as exc:
        st.error(str(exc))
        return
    res = ProbeResult(frame, model=str(frame["model"].iloc[0]))
    labels = list(dict.fromkeys(frame["label"]))
    label = st.selectbox("Label", labels, key="probe_harvest_label")
    show_figure(res.figure(label), key="probe-harvest", height=380)
    summary = res.summary()
    show_table(summary[summary["label"] == label], key="probe-harvest")


def _architectures() -> None:
    """Best hidden vs best state score of every model in a shared results file."""
    frame = all_architectures()
    if frame is None:
        return
    from probe.methods import ProbeResult, hidden_vs_state, hidden_vs_state_figure

    st.markdown("##### Every architecture (precomputed)")
    results = [ProbeResult(part, model=str(name)) for name, part in frame.groupby("model", sort=False)]
    summary = hidden_vs_state(results)
    label = st.selectbox("Label", list(dict.fromkeys(summary["label"])), key="probe_arch_label")
    show_figure(hidden_vs_state_figure(results, label), key="probe-architectures", height=380)
    show_table(summary[summary["label"] == label], key="probe-architectures")
