"""Patching heatmaps for a chosen clean / corrupted pair: patch each (site, layer, position) of the
clean run into the corrupted run and see how much of the clean answer comes back (1 = all).

Sites include ``state``: the whole recurrent memory after a token (for attention, the key and
value written there); because state edits propagate, patching it at position t changes
every later position as the recurrence would.
"""
from __future__ import annotations

import streamlit as st

import probe
from app import examples, loading, methods, pairs
from app.context import Context, Slot, side_by_side
from app.pairs import PatchPair
from app.widgets import show_figure

TITLE = "Patching"
SITES = ("resid_pre", "mixer_out", "mlp_out", "state")
CUSTOM = "Your own pair"


@st.cache_data(show_spinner="Patching every site, layer and position...", max_entries=32)
def patching(source: str, pair: PatchPair, method: str, sites: tuple[str, ...]) -> dict:
    model = loading.load_model(source)
    clean = loading.check_text(model, pair.clean)
    corrupted = loading.check_text(model, pair.corrupted)
    fn = methods.get("attribution_patching" if method == "attribution" else "activation_patching")
    available = [s for s in sites if any(_site_hooks(model, s, layer) for layer in range(model.cfg.n_layers))]
    if not available:
        raise probe.InputError(f"This model has none of the sites {', '.join(sites)}.")
    res = fn(model, clean, corrupted, answer=pair.answer, contrast=pair.contrast, sites=available)
    return {"figure": res.figure(), "frame": res.to_frame(), "seconds": res.seconds,
            "passes": res.forward_passes, "clean": res.clean_metric, "corrupted": res.corrupted_metric}


def _site_hooks(model, site: str, layer: int) -> list[str]:
    from probe.methods.sites import site_hooks

    return site_hooks(model, site, layer)


def _pick_pair(ctx: Context) -> PatchPair | None:
    current = pairs.patch_pair(ctx.example) if ctx.example is not None and ctx.example.text == ctx.text else None
    c1, c2 = st.columns([1, 2])
    tasks = examples.task_names()
    default_task = ctx.example.task if current is not None else ("recall" if "recall" in tasks else tasks[0])
    task = c1.selectbox("Pairs from", tasks + [CUSTOM], index=(tasks + [CUSTOM]).index(default_task),
                        key="patch_task")
    if task == CUSTOM:
        a, b = st.columns(2)
        clean = a.text_input("Clean text", "g1 i3 d1|d", key="patch_clean")
        corrupted = b.text_input("Corrupted text (same length)", "g1 i3 d3|d", key="patch_corrupted")
        answer = a.text_input("Answer token (clean run)", "1", key="patch_answer")
        contrast = b.text_input("Contrast token (corrupted run)", "3", key="patch_contrast")
        if not (clean and corrupted and answer and contrast):
            st.warning("Give both texts and both tokens.")
            return None
        return PatchPair("custom", clean, corrupted, answer, contrast)
    choices = pairs.task_pairs(examples.task_examples(task, 50))
    if current is not None and current.label.startswith(task) and current not in choices:
        choices = [current] + choices
    if not choices:
        st.warning(f"No patching pairs for the {task} task.")
        return None
    index = choices.index(current) if current in choices else 0
    return c2.selectbox("Pair", choices, index=index, format_func=lambda p: p.label, key=f"patch_pair_{task}")


def _column(slot: Slot, pair: PatchPair, method: str, sites: tuple[str, ...]) -> None:
    out = patching(slot.source, pair, method, sites)
    show_figure(out["figure"], key=f"patch-{slot.name}")
    st.caption(f"Logit difference {pair.answer!r} - {pair.contrast!r}: clean {out['clean']:.3f}, corrupted "
               f"{out['corrupted']:.3f}. {out['passes']} forward passes, {out['seconds']:.1f} s.")
    with st.expander("Table"):
        st.dataframe(out["frame"], hide_index=True)


def render(ctx: Context) -> None:
    st.subheader("Activation patching")
    st.caption("Score = (metric patched - corrupted) / (clean - corrupted) for the logit difference of the "
               "two answers at the last position: 1 means patching that site restores the clean answer.")
    if not methods.available("activation_patching"):
        return
    pair = _pick_pair(ctx)
    if pair is None:
        return
    st.markdown(f"clean `{pair.clean}` → **{pair.answer}** · corrupted `{pair.corrupted}` → **{pair.contrast}**")
    c1, c2 = st.columns(2)
    method = c1.radio("Method", ["activation", "attribution"], horizontal=True, key="patch_method",
                      format_func={"activation": "activation patching",
                                   "attribution": "attribution patching (gradient estimate)"}.get)
    sites = c2.multiselect("Sites", SITES, default=list(SITES), key="patch_sites")
    if not sites:
        st.warning("Pick at least one site.")
        return
    side_by_side(ctx, lambda slot: _column(slot, pair, method, tuple(sites)))
