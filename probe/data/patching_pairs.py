r"""Clean / corrupted pairs for patching, built from the synthetic tasks (:mod:`probe.data.tasks`).

A task's own minimal pair (``good`` / ``bad``) differs *at* the answer, so the prefixes the
model reads are identical and there is nothing to patch. A patching pair differs in the
*context* instead, so that the two runs predict different answers at the same position.
For a task example whose first answer is predicted at token position ``p`` (the logits at
``p`` score ``tokens[p + 1]``)::

    clean     = tokens[: p + 1]                            answer   = the correct token
    corrupted = clean with the context changed             contrast = the corrupted run's answer

* ``recall``: the value bound to the queried key is replaced by the contrast digit; roles
  ``key`` and ``value`` (where the pair sits in the context) and ``query`` (= ``p``).
* ``agreement``: the subject noun is replaced by a noun of the other number and the same
  length (positions stay aligned); roles ``subject`` (last byte of the noun),
  ``attractor`` (last byte of the nearest attractor noun, when there is one) and ``verb`` (= ``p``).

Example::

    pairs = task_pairs("recall", 40)
    res = activation_patching(model, pairs[0].clean, pairs[0].corrupted, answer=pairs[0].answer,
                              contrast=pairs[0].contrast, sites=["state"])
    res.score("state", 0, pairs[0].roles["value"])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probe.errors import InputError

PAIR_TASKS = ("recall", "agreement")


@dataclass
class PatchingPair:
    """Token ids ``[pos]`` of the two runs (equal length), the answer / contrast ids predicted at
    the last position, and ``roles``: named token positions of interest."""

    task: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: int
    contrast: int
    roles: dict[str, int] = field(default_factory=dict)
    text: str = ""

    @property
    def length(self) -> int:
        """Tokens in each of the two sequences (clean and corrupted have the same length)."""
        return int(self.clean.shape[0])


def _recall(e) -> PatchingPair | None:
    p = e.answer_positions[0]
    value = e.meta["source_positions"][0] + 1  # text index -> token index (BOS first)
    if not 0 < value < p:
        return None
    clean = torch.tensor(e.tokens[: p + 1])
    corrupted = clean.clone()
    corrupted[value] = e.contrast[0]
    return PatchingPair("recall", clean, corrupted, e.correct[0], e.contrast[0],
                        {"key": value - 1, "value": value, "query": p}, e.text)


def _agreement(e) -> PatchingPair | None:
    from probe.data.tasks.agreement import NOUNS

    p = e.answer_positions[0]
    end = e.meta["subject_pos"] + 1  # text index just past the subject noun
    start = e.text.rindex(" ", 0, end) + 1
    noun = e.text[start:end]
    other = 1 - int(e.meta["plural"])
    swaps = [forms[other] for forms in NOUNS if len(forms[other]) == len(noun) and noun not in forms]
    if not swaps:
        return None
    swap = swaps[(start + len(e.text)) % len(swaps)]
    clean = torch.tensor(e.tokens[: p + 1])
    corrupted = clean.clone()
    corrupted[start + 1 : end + 1] = torch.tensor(list(swap.encode("ascii")))
    roles = {"subject": end, "verb": p}
    if e.meta["attractor_pos"]:
        roles["attractor"] = e.meta["attractor_pos"][-1] + 1
    return PatchingPair("agreement", clean, corrupted, e.correct[0], e.contrast[0], roles, e.text)


def patching_pair(example) -> PatchingPair | None:
    """The patching pair of one :class:`~probe.data.tasks.base.TaskExample` (``None`` when it has none,
    e.g. no same-length noun of the other number)."""
    builders = {"recall": _recall, "agreement": _agreement}
    if example.task not in builders:
        raise InputError(f"No patching pairs for task {example.task!r}; tasks with pairs: {', '.join(PAIR_TASKS)}.")
    return builders[example.task](example)


def task_pairs(task: str, n: int, seed: int = 0, **task_options) -> list[PatchingPair]:
    """Up to ``n`` patching pairs from ``task``'s examples with ``seed`` (examples without a pair are skipped)."""
    from probe.data.tasks import get_task

    if task not in PAIR_TASKS:
        raise InputError(f"No patching pairs for task {task!r}; tasks with pairs: {', '.join(PAIR_TASKS)}.")
    out: list[PatchingPair] = []
    for e in get_task(task, **task_options).examples(3 * n + 10, seed):
        pair = patching_pair(e)
        if pair is not None:
            out.append(pair)
        if len(out) == n:
            break
    return out
