r"""Induction / copy: a random letter string, a ``|``, then the same string again.

    "kqzmfw|kqzmfw"

Every byte of the copy is an answer (the first one too: the copy always starts at the
string's first letter); the contrast is a random other letter. A model that learned
induction ("after X came Y before, so predict Y") gets them all.

Labels: ``copy_index`` (index into the string, -1 outside the copy).
Meta: ``length``, ``source_positions`` (position of the copied letter in the first half).
"""
from __future__ import annotations

import string

import numpy as np

from probe.data.tasks.base import Task, TaskExample, byte_example, replace_char


class Induction(Task):
    name = "induction"
    chance = 1 / 26
    description = "copy a random letter string after a separator"

    def __init__(self, min_len: int = 5, max_len: int = 12):
        if not 1 <= min_len <= max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        self.min_len, self.max_len = min_len, max_len

    def example(self, rng: np.random.Generator) -> TaskExample:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        letters = "".join(string.ascii_lowercase[i] for i in rng.integers(26, size=n))
        text = f"{letters}|{letters}"
        answers = []
        for j, c in enumerate(letters):
            other = string.ascii_lowercase[(ord(c) - 97 + 1 + int(rng.integers(25))) % 26]
            answers.append((n + 1 + j, other))
        j = int(rng.integers(n))
        bad = replace_char(text, answers[j][0], answers[j][1])
        copy_index = [-1] * (n + 2) + list(range(n))
        meta = {"length": n, "source_positions": list(range(n))}
        return byte_example(self.name, text, answers, {"copy_index": copy_index}, meta, text, bad)
