r"""The training data mix: code windows interleaved with packed synthetic-task examples.

Every row of a batch is, independently, with probability ``task_fraction`` a *task row*
(examples of tasks drawn with ``task_weights``, each starting with its BOS, packed back to back and
cut at ``seq_len + 1`` tokens) and otherwise a *text row* (a window of the token stream at a
random offset). A batch is a pure function of the generator passed in; the trainer passes
``numpy.random.default_rng([seed, step])`` so that batches do not depend on history.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probe.data.corpus import TokenStream
from probe.data.tasks import Task, get_task
from probe.errors import InputError


@dataclass
class DataMix:
    """Args: ``text`` the stream of text rows, ``tasks`` task names or instances,
    ``task_fraction`` the expected share of task rows (0 = text only), ``task_weights`` the
    relative frequency of each task's examples in task rows (default: equal)."""

    text: TokenStream
    tasks: Sequence[Task | str] = ()
    task_fraction: float = 0.0
    task_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        self.tasks = [get_task(t) for t in self.tasks]
        weights = np.ones(len(self.tasks)) if self.task_weights is None else np.asarray(self.task_weights, float)
        if weights.shape != (len(self.tasks),) or (weights < 0).any() or (self.tasks and weights.sum() <= 0):
            raise InputError(f"task_weights must be {len(self.tasks)} non-negative numbers, not all zero.")
        self._p = weights / weights.sum() if self.tasks else weights
        self._uniform = bool(len(weights) == 0 or np.all(weights == weights[0]))
        if not 0.0 <= self.task_fraction <= 1.0:
            raise InputError(f"task_fraction must be in [0, 1], got {self.task_fraction}.")
        if self.task_fraction > 0 and not self.tasks:
            raise InputError("task_fraction > 0 but no tasks were given.")

    def check(self, seq_len: int) -> None:
        if self.task_fraction < 1.0:
            self.text.check_length(seq_len)

    def mix_at(self, step: int) -> DataMix:
        """The mix of training step ``step``: always this one (a
        :class:`~probe.data.curriculum.Curriculum` changes with the step)."""
        return self

    def shape_at(self, step: int, batch_size: int, seq_len: int) -> tuple[int, int]:
        """The batch shape of training step ``step``: always the one given (the training config's)."""
        return batch_size, seq_len

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> np.ndarray:
        """``[batch_size, seq_len + 1]`` int64 token ids."""
        is_task = rng.random(batch_size) < self.task_fraction
        rows = np.empty((batch_size, seq_len + 1), dtype=np.int64)
        n_text = int((~is_task).sum())
        if n_text:
            rows[~is_task] = self.text.sample(rng, n_text, seq_len)
        for i in np.flatnonzero(is_task):
            rows[i] = self.task_row(rng, seq_len + 1)
        return rows

    def task_row(self, rng: np.random.Generator, length: int) -> np.ndarray:
        out: list[int] = []
        while len(out) < length:
            if self._uniform:  # the draw the zoo's data was made with (same generator use)
                task = self.tasks[int(rng.integers(len(self.tasks)))]
            else:
                task = self.tasks[int(rng.choice(len(self.tasks), p=self._p))]
            out += task.example(rng).tokens
        return np.asarray(out[:length], dtype=np.int64)
