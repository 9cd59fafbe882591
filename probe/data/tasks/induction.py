r"""Induction / copy: a random letter string, a ``|``, then the same string again.

    "kqzmfw|kqzmfw"          (start="first", the training task)
    "kqzmfw|zmfw"            (start="random": the copy starts at a random letter, given)

With ``start="first"`` every byte of the copy is an answer (the first one too: the copy always
starts at the string's first letter); the contrast is a random other letter. This can be solved
by *position* alone (copy the byte ``n + 1`` places back), without matching content.
With ``start="random"`` the copy starts at a random letter of the string, which is given, and
the one answer is the letter after it: it needs *content-based* induction ("after X came Y
before, so predict Y"), as recall does; the zoo cards report it as a diagnostic.

Labels: ``copy_index`` (index into the string, -1 outside the copy).
Meta: ``length``, ``start`` (the string index where the copy starts: 0, or random),
``source_positions`` (for each answer, the position of its letter in the first half).
"""
from __future__ import annotations

import string

import numpy as np

from probe.data.tasks.base import Task, TaskExample, byte_example, replace_char


class Induction(Task):
    name = "induction"
    chance = 1 / 26
    description = "copy a random letter string after a separator"

    def __init__(self, min_len: int = 5, max_len: int = 12, start: str = "first"):
        if start not in ("first", "random"):
            raise ValueError(f"start must be 'first' or 'random', got {start!r}")
        if not (2 if start == "random" else 1) <= min_len <= max_len:
            raise ValueError("need 1 <= min_len <= max_len (2 <= min_len with start='random')")
        self.min_len, self.max_len, self.start = min_len, max_len, start

    def example(self, rng: np.random.Generator) -> TaskExample:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        letters = "".join(string.ascii_lowercase[i] for i in rng.integers(26, size=n))
        k = 0 if self.start == "first" else int(rng.integers(n - 1))  # the copy starts at letter k
        text = f"{letters}|{letters[k:]}"
        # with a random start, letter k is given and only the letter after it is scored: the one
        # answer that needs content (the rest of the copy follows by position)
        scored = range(n) if self.start == "first" else range(k + 1, k + 2)
        answers = []
        for j in scored:
            other = string.ascii_lowercase[(ord(letters[j]) - 97 + 1 + int(rng.integers(25))) % 26]
            answers.append((n + 1 + j - k, other))
        j = 0 if self.start == "random" else int(rng.integers(n))  # the pair: the content-matched answer
        bad = replace_char(text, answers[j][0], answers[j][1])
        copy_index = [-1] * (n + 2) + list(range(k, n))
        meta = {"length": n, "start": k, "source_positions": list(scored)}
        return byte_example(self.name, text, answers, {"copy_index": copy_index}, meta, text, bad)
