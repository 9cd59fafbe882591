r"""A curriculum: training data (and, optionally, the batch's shape) that changes with the step.

``Curriculum([(0, easy), (600, full)])`` draws step ``s``'s batch from the last stage whose
first step is ``<= s``: here ``easy`` for steps 0-599 and ``full`` from step 600 on. Each
stage is a :class:`~probe.data.mix.DataMix`, optionally with its own ``(batch_size, seq_len)``
(``(0, easy, (64, 64))``: 64 rows of 64 tokens in that stage; stages without one use the
training config's). The trainer asks for the mix and shape at each step (:meth:`Curriculum.mix_at`,
:meth:`Curriculum.shape_at`; a plain ``DataMix`` answers with itself and the config's shape), and
batches stay a pure function of ``(seed, step)``, so an interrupted and resumed run still equals
one run straight through.

Why: in the zoo's mix no model learns multi-query associative recall at the zoo's budget, and a
larger share of recall rows alone does not change that for the LSTM; recall rows with 2-4 pairs
in the first half and the cards' 3-8 pairs after it do (``probe/zoo/README.md``, recall section).
A short-sequence first stage (the same tokens per step in more, shorter rows) lowered the zoo
transformer's validation bits-per-byte from 1.956 to 1.880 at the same budget (one run: 64 x 64 for
steps 0-599, then 16 x 256; the shipped zoo does not use it yet).

Example::

    from probe.data import Curriculum, DataMix
    from probe.data.tasks.recall import AssociativeRecall

    easy = DataMix(code, ["agreement", AssociativeRecall(2, 4), "induction", "brackets"], 0.5, (1, 3, 1, 1))
    full = DataMix(code, ["agreement", "recall", "induction", "brackets"], 0.5, (1, 3, 1, 1))
    train(model, Curriculum([(0, easy, (64, 64)), (600, full)]), TrainConfig(steps=1200, batch_size=16, seq_len=256))
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from probe.data.mix import DataMix
from probe.errors import InputError


class Curriculum:
    """Stages ``[(first_step, DataMix[, (batch_size, seq_len)]), ...]``: the first at step 0, first
    steps strictly increasing."""

    def __init__(self, stages: Sequence[tuple]):
        stages = list(stages)
        if not stages:
            raise InputError("A curriculum needs at least one stage (first_step, DataMix).")
        self.firsts, self.mixes, self.shapes = [], [], []
        for i, stage in enumerate(stages):
            if not (isinstance(stage, tuple) and len(stage) in (2, 3)):
                raise InputError(f"Curriculum stage {i} must be a (first_step, DataMix) pair or a (first_step, "
                                 f"DataMix, (batch_size, seq_len)) triple, got {stage!r}.")
            first, mix = stage[:2]
            if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
                raise InputError(f"Curriculum stage {i}: first_step must be a non-negative integer, got {first!r}.")
            if not isinstance(mix, DataMix):
                raise InputError(f"Curriculum stage {i}: expected a DataMix, got {type(mix).__name__}.")
            shape = stage[2] if len(stage) == 3 else None
            if shape is not None and not (isinstance(shape, tuple) and len(shape) == 2 and all(
                    isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in shape)):
                raise InputError(f"Curriculum stage {i}: the shape must be (batch_size, seq_len), two positive "
                                 f"integers, got {shape!r}.")
            self.firsts.append(int(first))
            self.mixes.append(mix)
            self.shapes.append(None if shape is None else (int(shape[0]), int(shape[1])))
        if self.firsts[0] != 0:
            raise InputError(f"The first curriculum stage must start at step 0, not {self.firsts[0]}.")
        if any(b <= a for a, b in zip(self.firsts, self.firsts[1:])):
            raise InputError(f"Curriculum stages must start at strictly increasing steps, got {self.firsts}.")

    def check(self, seq_len: int) -> None:
        """Every stage's text can fill a row of its sequence length (``seq_len`` where it has none)."""
        for mix, shape in zip(self.mixes, self.shapes):
            mix.check(seq_len if shape is None else shape[1])

    def _stage(self, step: int) -> int:
        if step < 0:
            raise InputError(f"step must be >= 0, got {step}.")
        return bisect.bisect_right(self.firsts, int(step)) - 1

    def mix_at(self, step: int) -> DataMix:
        """The stage's mix for training step ``step`` (>= 0)."""
        return self.mixes[self._stage(step)]

    def shape_at(self, step: int, batch_size: int, seq_len: int) -> tuple[int, int]:
        """``(batch_size, seq_len)`` of step ``step``: its stage's, else the ones given (the config's)."""
        shape = self.shapes[self._stage(step)]
        return (batch_size, seq_len) if shape is None else shape

    def __repr__(self) -> str:
        return f"Curriculum(stages at steps {self.firsts})"
