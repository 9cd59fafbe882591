r"""Bracket depth / Dyck completion: close every open bracket in the right order.

    "([]{(|)})"

A random walk over three bracket types (never deeper than ``max_depth``) leaves some
brackets open; after ``|`` the model must emit their closers, innermost first. Every closer
after ``|`` is an answer; the contrast is a closer of another type. Solving it needs the
stack of open brackets, i.e. the bracket depth and the type at each depth.

Labels: ``depth`` (open brackets after reading each token; the BOS has depth 0).
Meta: ``open_depth`` (depth at ``|``), ``source_positions`` (position of the opener that
each answer closes).
"""
from __future__ import annotations

import numpy as np

from probe.data.tasks.base import Task, TaskExample, byte_example, replace_char

PAIRS = {"(": ")", "[": "]", "{": "}"}
OPENERS = tuple(PAIRS)
CLOSERS = tuple(PAIRS.values())


class Brackets(Task):
    name = "brackets"
    chance = 1 / 3
    description = "close the open brackets of a random Dyck prefix (three bracket types)"

    def __init__(self, min_len: int = 4, max_len: int = 16, max_depth: int = 5):
        if not 1 <= min_len <= max_len or max_depth < 1:
            raise ValueError("need 1 <= min_len <= max_len and max_depth >= 1")
        self.min_len, self.max_len, self.max_depth = min_len, max_len, max_depth

    def example(self, rng: np.random.Generator) -> TaskExample:
        length = int(rng.integers(self.min_len, self.max_len + 1))
        text, stack, depth = "", [], []
        for _ in range(length):
            if not stack or (len(stack) < self.max_depth and rng.random() < 0.55):
                c = OPENERS[rng.integers(3)]
                stack.append((c, len(text)))
            else:
                c = PAIRS[stack.pop()[0]]
            text += c
            depth.append(len(stack))
        if not stack:
            c = OPENERS[rng.integers(3)]
            stack.append((c, len(text)))
            text += c
            depth.append(1)
        open_depth = len(stack)
        text += "|"
        depth.append(open_depth)
        answers, sources = [], []
        while stack:
            opener, pos = stack.pop()
            closer = PAIRS[opener]
            others = [k for k in CLOSERS if k != closer]
            answers.append((len(text), others[rng.integers(2)]))
            sources.append(pos)
            text += closer
            depth.append(len(stack))
        bad = replace_char(text, answers[0][0], answers[0][1])
        meta = {"open_depth": open_depth, "source_positions": sources}
        return byte_example(self.name, text, answers, {"depth": [0] + depth}, meta, text, bad)
