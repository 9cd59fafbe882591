"""Patching heatmaps for a chosen clean / corrupted pair: patch each (site, layer, position) of the
clean run into the corrupted run and see how much of the clean answer comes back (1 = all).

Pairs come from :mod:`probe.data.patching_pairs` (recall: the queried value changed; agreement: the
subject's number changed, positions aligned) or are typed in. Sites include ``state``: the
whole recurrent memory after a token (for attention, the key and value written there);
because state edits propagate, patching it at position t changes every later position as
the recurrence would.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import probe
from app import examples, loading
from app.context import Context, Slot, side_by_side
from app.widgets import ColorScale, display_token, show_figure, show_table
from probe import methods
from probe.methods.support.site_hooks import DEFAULT_PATCH_SITES

SITES = DEFAULT_PATCH_SITES
CUSTOM = "Your own pair"
N_PAIRS = 12


@dataclass(frozen=True)
class PairChoice:
    """What the user picked (hashable, the cache key): a task pair (``task``, ``index`` into
    ``task_pairs(task, N_PAIRS)``, or ``example`` >= 0: the pair of that task example) or typed texts."""

    task: str = ""
    index: int = 0
    example: int = -1
    clean: str = ""
    corrupted: str = ""
    answer: str = ""
    contrast: str = ""


def _task_pair(choice: PairChoice):
    from probe.data.patching_pairs import patching_pair, task_pairs

    if choice.example >= 0:
        return patching_pair(examples.task_example(choice.task, choice.example))
    pairs = task_pairs(choice.task, N_PAIRS)
    return pairs[choice.index] if choice.index < len(pairs) else None


def _bytes_text(ids) -> str:
    return bytes(int(t) for t in ids if int(t) < 256).decode("utf-8", errors="replace")


@st.cache_data(show_spinner=False, max_entries=64)
def describe(choice: PairChoice) -> dict | None:
    """Display strings of a pair: clean / corrupted text and the two answer tokens."""
    if not choice.task:
        return {"clean": choice.clean, "corrupted": choice.corrupted, "answer": choice.answer,
                "contrast": choice.contrast}
    pair = _task_pair(choice)
    if pair is None:
        return None
    return {"clean": _bytes_text(pair.clean), "corrupted": _bytes_text(pair.corrupted),
            "answer": display_token(chr(pair.answer)), "contrast": display_token(chr(pair.contrast)),
            "roles": dict(pair.roles)}


def _inputs(model, choice: PairChoice):
    """``(clean, corrupted, answer, contrast)`` for ``model``."""
    if not choice.task:
        return (loading.check_text(model, choice.clean), loading.check_text(model, choice.corrupted),
                choice.answer, choice.contrast)
    if model.tokenizer.vocab_size != 257:
        raise probe.InputError("Task pairs are byte-level token ids; this model has another tokenizer. "
                               "Type your own pair instead.")
    pair = _task_pair(choice)
    return pair.clean, pair.corrupted, pair.answer, pair.contrast


@st.cache_data(show_spinner="Patching every site, layer and position...", max_entries=32)
def patching(source: str, choice: PairChoice, method: str, sites: tuple[str, ...]) -> dict:
    from probe.methods.support.site_hooks import site_hooks

    model = loading.load_model(source)
    clean, corrupted, answer, contrast = _inputs(model, choice)
    present = [s for s in sites if any(site_hooks(model, s, layer) for layer in range(model.cfg.n_layers))]
    if not present:
        raise probe.InputError(f"This model has none of the sites {', '.join(sites)}.")
    fn = (methods.attribution_patching if method == "attribution" else methods.activation_patching)
    res = fn(model, clean, corrupted, answer=answer, contrast=contrast, sites=present)
    return {"figure": res.figure(), "frame": res.to_frame(), "seconds": res.seconds,
            "passes": res.forward_passes, "clean": res.clean_metric, "corrupted": res.corrupted_metric}


def _pick_pair(ctx: Context) -> PairChoice | None:
    from probe.data.patching_pairs import PAIR_TASKS

    e = ctx.example if ctx.example is not None and ctx.example.text == ctx.text else None
    tasks = list(PAIR_TASKS)
    current = PairChoice(e.task, example=e.index) if e is not None and e.task in tasks and e.index >= 0 else None
    if current is not None and describe(current) is None:
        current = None
    options = tasks + [CUSTOM]
    c1, c2 = st.columns([1, 2])
    task = c1.selectbox("Pairs from", options, index=options.index(current.task) if current else 0, key="patch_task",
                        bind="query-params")
    if task == CUSTOM:
        a, b = st.columns(2)
        choice = PairChoice(clean=a.text_input("Clean text", "g1 i3 d1|d", key="patch_clean"),
                            corrupted=b.text_input("Corrupted text (same length)", "g1 i3 d3|d", key="patch_corrupted"),
                            answer=a.text_input("Answer token (clean run)", "1", key="patch_answer"),
                            contrast=b.text_input("Contrast token (corrupted run)", "3", key="patch_contrast"))
        if not all((choice.clean, choice.corrupted, choice.answer, choice.contrast)):
            st.warning("Give both texts and both tokens.")
            return None
        return choice
    choices = ([current] if current is not None and current.task == task else []) + [
        PairChoice(task, i) for i in range(N_PAIRS)]
    choices = [c for c in choices if describe(c) is not None]
    if not choices:
        st.warning(f"No patching pairs for the {task} task.")
        return None

    def label(c: PairChoice) -> str:
        d = describe(c)
        where = f"example #{c.example} (the input)" if c.example >= 0 else f"pair {c.index}"
        return f"{where}: {d['clean']!r} vs {d['corrupted']!r}"

    return c2.selectbox("Pair", choices, format_func=label, key=f"patch_pair_{task}")


def _column(slot: Slot, choice: PairChoice, method: str, sites: tuple[str, ...], scale: ColorScale) -> None:
    out = patching(slot.source, choice, method, sites)
    show_figure(out["figure"], key=f"patch-{slot.name}", scale=scale)
    st.caption(f"Logit difference: clean {out['clean']:.3f}, corrupted {out['corrupted']:.3f}. "
               f"{out['passes']} forward passes, {out['seconds']:.1f} s.")
    with st.expander("Table"):
        show_table(out["frame"], key=f"patch-{slot.name}")


def render(ctx: Context) -> None:
    st.subheader("Activation patching")
    st.caption("Score = (metric patched - corrupted) / (clean - corrupted) for the logit difference of the "
               "two answers at the last position: 1 means patching that site restores the clean answer.")
    choice = _pick_pair(ctx)
    if choice is None:
        return
    d = describe(choice)
    roles = ", ".join(f"{k} at {v}" for k, v in d.get("roles", {}).items())
    st.markdown(f"clean `{d['clean']}` → **{d['answer']}** · corrupted `{d['corrupted']}` → **{d['contrast']}**"
                + (f" · positions: {roles}" if roles else ""))
    c1, c2 = st.columns(2)
    method = c1.radio("Method", ["activation", "attribution"], horizontal=True, key="patch_method", bind="query-params",
                      format_func={"activation": "activation patching",
                                   "attribution": "attribution patching (gradient estimate)"}.get)
    sites = c2.multiselect("Sites", SITES, default=list(SITES), key="patch_sites")
    if not sites:
        st.warning("Pick at least one site.")
        return
    scale = ColorScale("(score; 1 restores the clean answer)", symmetric=True, floor=1.0)
    side_by_side(ctx, lambda slot: _column(slot, choice, method, tuple(sites), scale))
    scale.draw()
