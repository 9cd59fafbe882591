r"""Multi-query associative recall (MQAR, Arora et al. 2023 "Zoology"), byte level.

    "q4 b7 x1 m5|x1 q4"

Key-value pairs (distinct lowercase keys, digit values), a ``|``, then queries: each query
key is followed by its value, which the model must recall from the context. Answers are
the value bytes of the queries; the contrast is another pair's value (a random other digit
when all values are equal).

Labels: ``is_query`` (1 on the query part). Meta: ``n_pairs``, ``source_positions``
(for each answer, the position of the matching value in the context), ``keys``.
"""
from __future__ import annotations

import string

import numpy as np

from probe.data.tasks.base import Task, TaskExample, byte_example, replace_char


class AssociativeRecall(Task):
    name = "recall"
    chance = 0.1
    description = "multi-query associative recall: letter keys, digit values"

    def __init__(self, min_pairs: int = 3, max_pairs: int = 8, max_queries: int = 4):
        if not 1 <= min_pairs <= max_pairs <= 26:
            raise ValueError("need 1 <= min_pairs <= max_pairs <= 26")
        self.min_pairs, self.max_pairs, self.max_queries = min_pairs, max_pairs, max_queries

    def example(self, rng: np.random.Generator) -> TaskExample:
        n = int(rng.integers(self.min_pairs, self.max_pairs + 1))
        keys = [string.ascii_lowercase[i] for i in rng.choice(26, size=n, replace=False)]
        values = [str(v) for v in rng.integers(10, size=n)]
        context = " ".join(k + v for k, v in zip(keys, values))
        n_q = int(rng.integers(1, min(self.max_queries, n) + 1))
        queries = [int(i) for i in rng.choice(n, size=n_q, replace=False)]
        text = context + "|" + " ".join(keys[i] + values[i] for i in queries)
        answers, sources = [], []
        pos = len(context) + 1
        for i in queries:
            others = [v for v in values if v != values[i]]
            contrast = others[rng.integers(len(others))] if others else str((int(values[i]) + 1 + rng.integers(9)) % 10)
            answers.append((pos + 1, contrast))
            sources.append(3 * i + 1)
            pos += 3
        bad = replace_char(text, answers[0][0], answers[0][1])
        is_query = [0] * (len(context) + 2) + [1] * (len(text) - len(context) - 1)
        meta = {"n_pairs": n, "keys": keys, "source_positions": sources}
        return byte_example(self.name, text, answers, {"is_query": is_query}, meta, text, bad)
