"""What every view receives: the two models (A, B), the input text and the picked example,
plus :func:`side_by_side`, which lays a view out in two columns and turns errors into messages.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
import probe
from app.examples import Example


@dataclass
class Slot:
    """One of the compared models: ``name`` "A" or "B", its ``source`` string (the cache key of
    the model and of every result), the loaded ``model`` or the ``error`` that prevented it."""

    name: str
    source: str
    model: probe.HookedLM | None = None
    error: str | None = None

    @property
    def title(self) -> str:
        return f"Model {self.name}: {self.source or '(none)'}"


@dataclass
class Context:
    slots: list[Slot]
    text: str
    example: Example | None = None

    def example_for(self, model: probe.HookedLM) -> Example | None:
        """The picked task example if the text is still it and ``model`` tokenises it the same way
        (answer positions and token ids are then valid for this model)."""
        e = self.example
        if e is None or not e.tokens or e.text != self.text:
            return None
        try:
            same = model.to_tokens(self.text)[0].tolist() == list(e.tokens)
        except probe.ProbeError:
            return None
        return e if same else None


def show_error(exc: BaseException, what: str = "") -> None:
    """A :class:`probe.ProbeError` as a message; anything else as a reported internal error with its
    traceback folded away (never a bare traceback on the page)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, probe.ProbeError):
        st.error(f"{prefix}{exc}")
        return
    st.error(f"Internal error {prefix}{type(exc).__name__}: {exc}. This is a bug in probe; please report it.")
    with st.expander("Details"):
        st.code("".join(traceback.format_exception(exc)), language="text")


def guarded(body: Callable[[], None], what: str = "") -> None:
    """Run ``body``; an exception becomes a message (see :func:`show_error`)."""
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - the page never shows a raw traceback (st.stop/st.rerun
        # raise BaseException subclasses, which pass through)
        show_error(exc, what)


def side_by_side(ctx: Context, body: Callable[[Slot], None]) -> None:
    """Two columns, model A then model B; ``body(slot)`` renders one of them. A model that failed to
    load shows its error; an error in ``body`` shows a message in that column only."""
    columns = st.columns(len(ctx.slots), gap="medium")
    for column, slot in zip(columns, ctx.slots):
        with column:
            st.markdown(f"##### {slot.title}")
            if slot.model is None:
                st.info(slot.error or "No model selected.")
                continue
            guarded(lambda: body(slot), f"Model {slot.name}")
