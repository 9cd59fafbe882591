"""Example inputs: snippets of the code corpus (held-out stdlib files) and synthetic-task examples.

Both are deterministic (the corpus split and the task seeds are fixed), cached, and only
built when the user asks for them, so the first page does not wait for the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

SNIPPET_LINES = 10
SNIPPET_CHARS = 400


@dataclass(frozen=True)
class Example:
    """An input text with what the views can use from it.

    ``tokens``: the task's token ids (byte tokenizer with BOS); ``answer_positions`` /
    ``correct`` / ``contrast``: scored next-token predictions (the logits at position ``p`` should
    prefer ``correct`` over ``contrast``), valid for a model that tokenises ``text`` to ``tokens``;
    ``good`` / ``bad``: the task's minimal pair (``bad`` empty for code snippets).
    """

    label: str
    text: str
    task: str = ""
    tokens: tuple[int, ...] = ()
    answer_positions: tuple[int, ...] = ()
    correct: tuple[int, ...] = ()
    contrast: tuple[int, ...] = ()
    good: str = ""
    bad: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    index: int = -1  # the example's index among ``task_examples(task, n, seed=0)``


def _snippets(text: str, relpath: str, limit: int) -> list[Example]:
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("def ", "class ")):
            body = "\n".join(lines[i : i + SNIPPET_LINES])[:SNIPPET_CHARS]
            if body.isascii() and len(body) > 80:
                out.append(Example(f"{relpath}:{i + 1}", body + "\n"))
            if len(out) >= limit:
                break
    return out


@st.cache_data(show_spinner="Reading the code corpus...")
def code_examples(n: int = 8) -> list[Example]:
    """``n`` function/class openings from the held-out (test) split of the stdlib corpus."""
    from probe.data.code_corpus import CodeCorpus

    corpus = CodeCorpus("test", max_files=24)
    out: list[Example] = []
    for f in corpus.files:
        if f.relpath.startswith("_") or "/test" in f.relpath:
            continue
        out += _snippets(f.text, f.relpath, 2)
        if len(out) >= n:
            break
    return out[:n]


def task_names() -> list[str]:
    from probe.data.tasks import TASKS

    return list(TASKS)


def task_example(task: str, index: int, seed: int = 0):
    """The original :class:`probe.data.tasks.TaskExample` behind ``task_examples(task, n, seed)[index]``."""
    from probe.data.tasks import get_task

    return get_task(task).examples(index + 1, seed)[index]


@st.cache_data(show_spinner=False)
def task_examples(task: str, n: int = 10, seed: int = 0) -> list[Example]:
    """``n`` examples of a synthetic task (deterministic in ``seed``)."""
    from probe.data.tasks import get_task

    out = []
    for i, e in enumerate(get_task(task).examples(n, seed)):
        out.append(Example(f"{task} #{i}", e.text, task, tuple(e.tokens), tuple(e.answer_positions), tuple(e.correct),
                           tuple(e.contrast), e.good, e.bad, dict(e.meta), i))
    return out


def task_description(task: str) -> str:
    from probe.data.tasks import TASKS

    cls = TASKS[task]
    return f"{cls.description} (chance {cls.chance:.2f})"
