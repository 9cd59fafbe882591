r"""The common shape of every labelled synthetic task.

A task draws examples from a ``numpy.random.Generator``; ``task.examples(n, seed)`` is
deterministic (the generator is seeded with ``[seed, crc32(task name)]``), so every
machine sees the same examples for the same seed.

Each :class:`TaskExample` carries what the methods need:

* ``tokens``: the model input, ``[BOS] + UTF-8 bytes of text`` (byte tokenizer);
* ``answer_positions``: positions ``p`` whose *next-token* prediction is scored, i.e. the
  model's logits at ``p`` should put ``correct[i] == tokens[p + 1]`` above ``contrast[i]``.
  Because of the BOS, ``p`` is also the index in ``text`` of the answer character;
* ``labels``: per-token integer labels (length ``len(tokens)``) for probing;
* ``meta``: task-specific facts (source positions, attractor count, ...);
* ``good`` / ``bad``: a minimal pair of texts that differ only in the answer.

Scores: ``pair accuracy`` is the share of answers with ``logit[correct] > logit[contrast]``
(chance 0.5); ``top-1`` the share where ``correct`` is the arg-max (chance ``task.chance``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from probe.errors import InputError

BOS = 256


@dataclass
class TaskExample:
    task: str
    text: str
    tokens: list[int]
    answer_positions: list[int]
    correct: list[int]
    contrast: list[int]
    labels: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    good: str = ""
    bad: str = ""

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if not (len(self.answer_positions) == len(self.correct) == len(self.contrast)):
            raise ValueError("answer_positions, correct and contrast must have one entry per answer.")
        for p, c, k in zip(self.answer_positions, self.correct, self.contrast):
            if not 0 <= p < n - 1 or self.tokens[p + 1] != c or c == k:
                raise ValueError(f"Inconsistent answer at position {p} of {self.text!r}.")
        for name, values in self.labels.items():
            if len(values) != n:
                raise ValueError(f"Label {name!r} has {len(values)} entries for {n} tokens.")


def byte_example(task: str, text: str, answers: list[tuple[int, str]], labels: dict[str, list[int]] | None = None,
                 meta: dict[str, Any] | None = None, good: str | None = None, bad: str | None = None) -> TaskExample:
    """Build an example from ASCII ``text`` and ``answers = [(index in text, contrast char)]``."""
    if not text.isascii():
        raise ValueError("Synthetic task text must be ASCII (one byte per character).")
    tokens = [BOS] + list(text.encode("ascii"))
    return TaskExample(task, text, tokens, [i for i, _ in answers], [ord(text[i]) for i, _ in answers],
                       [ord(c) for _, c in answers], labels or {}, meta or {},
                       good if good is not None else text, bad if bad is not None else "")


def replace_char(text: str, i: int, c: str) -> str:
    return text[:i] + c + text[i + 1 :]


class Task:
    """Base class: subclasses set ``name``, ``chance`` and implement :meth:`example`."""

    name: ClassVar[str] = ""
    #: probability that a uniform guess over the answer's candidate set is the correct token
    chance: ClassVar[float] = 0.0
    description: ClassVar[str] = ""

    def example(self, rng: np.random.Generator) -> TaskExample:
        raise NotImplementedError

    def condition(self, example: TaskExample) -> str | None:
        """The experimental condition ``example`` belongs to, for scores broken down by condition
        (e.g. agreement with or without a mismatching attractor); ``None``: the task has none."""
        return None

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed), zlib.crc32(self.name.encode())])

    def examples(self, n: int, seed: int = 0) -> list[TaskExample]:
        """``n`` examples, a deterministic function of ``seed``."""
        if n < 0:
            raise InputError(f"n must be >= 0, got {n}.")
        rng = self.rng(seed)
        return [self.example(rng) for _ in range(n)]

    def minimal_pairs(self, n: int, seed: int = 0):
        """``n`` :class:`~probe.data.minimal_pairs.MinimalPair` s (good text vs the answer swapped)."""
        from probe.data.minimal_pairs import MinimalPair

        return [MinimalPair(e.good, e.bad, self.name) for e in self.examples(n, seed)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
