r"""Clean / corrupted pairs for activation patching, built from the synthetic tasks.

A task's own minimal pair (``good`` / ``bad``) differs *at* the answer, which patching
cannot use: the prefix before the answer is the same in both. For patching the two inputs
must differ in the *context* so that each run predicts a different answer at the same
position. From a task example with its first answer at position ``p`` (the logits at ``p``
predict ``text[p]``) and the context position ``s`` that answer depends on
(``meta["source_positions"]``)::

    clean     = text[:p]                           answers text[p]   (correct)
    corrupted = text[:p] with text[s] changed      answers contrast  (recall, induction, brackets)

For agreement the subject noun is swapped for one of the other number and the same length
(so positions line up); the verb's differing byte is the answer.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.examples import Example


@dataclass(frozen=True)
class PatchPair:
    label: str
    clean: str
    corrupted: str
    answer: str  # one token: the clean run's answer
    contrast: str  # one token: the corrupted run's answer


def _agreement(e: Example) -> PatchPair | None:
    from probe.data.tasks.agreement import NOUNS

    p = e.answer_positions[0]
    end = e.meta["subject_pos"] + 1  # text index just past the subject noun
    start = e.text.rindex(" ", 0, end) + 1
    noun = e.text[start:end]
    other = 1 - int(e.meta["plural"])
    swaps = [forms[other] for forms in NOUNS if len(forms[other]) == len(noun)]
    if not swaps:
        return None
    corrupted = e.text[:start] + swaps[0] + e.text[end:p]
    return PatchPair(f"{e.label}: '{noun}' -> '{swaps[0]}'", e.text[:p], corrupted, chr(e.correct[0]),
                     chr(e.contrast[0]))


_OPENER_OF = {")": "(", "]": "[", "}": "{"}


def _source_swap(e: Example) -> PatchPair | None:
    p, s = e.answer_positions[0], e.meta["source_positions"][0]
    answer, contrast = chr(e.correct[0]), chr(e.contrast[0])
    new = _OPENER_OF[contrast] if e.task == "brackets" else contrast
    if not 0 <= s < p or e.text[s] == new:
        return None
    corrupted = e.text[:s] + new + e.text[s + 1 : p]
    return PatchPair(f"{e.label}: position {s + 1} '{e.text[s]}' -> '{new}'", e.text[:p], corrupted, answer,
                     contrast)


def patch_pair(e: Example) -> PatchPair | None:
    """The patching pair of a task example, or None when this example has none."""
    if not e.task or not e.answer_positions:
        return None
    if e.task == "agreement":
        return _agreement(e)
    if "source_positions" in e.meta:
        return _source_swap(e)
    return None


def task_pairs(examples: list[Example], limit: int = 12) -> list[PatchPair]:
    out = []
    for e in examples:
        pair = patch_pair(e)
        if pair is not None:
            out.append(pair)
        if len(out) >= limit:
            break
    return out
