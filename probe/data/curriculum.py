r"""A curriculum: training data that changes with the step.

``Curriculum([(0, easy), (600, full)])`` draws step ``s``'s batch from the last stage whose
first step is ``<= s``: here ``easy`` for steps 0-599 and ``full`` from step 600 on. Each
stage is a :class:`~probe.data.mix.DataMix`. The trainer asks for the mix at each step
(:meth:`Curriculum.mix_at`; a plain ``DataMix`` answers with itself), and batches stay a pure
function of ``(seed, step)``, so an interrupted and resumed run still equals one run straight
through.

Why: in the zoo's mix no model learns multi-query associative recall at the zoo's budget, and a
larger share of recall rows alone does not change that for the LSTM; recall rows with 2-4 pairs
in the first half and the cards' 3-8 pairs after it do (``probe/zoo/README.md``, recall section).

Example::

    from probe.data import Curriculum, DataMix
    from probe.data.tasks.recall import AssociativeRecall

    easy = DataMix(code, ["agreement", AssociativeRecall(2, 4), "induction", "brackets"], 0.5, (1, 3, 1, 1))
    full = DataMix(code, ["agreement", "recall", "induction", "brackets"], 0.5, (1, 3, 1, 1))
    train(model, Curriculum([(0, easy), (600, full)]), TrainConfig(steps=1200))
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from probe.data.mix import DataMix
from probe.errors import InputError


class Curriculum:
    """Stages ``[(first_step, DataMix), ...]``: the first at step 0, first steps strictly increasing."""

    def __init__(self, stages: Sequence[tuple[int, DataMix]]):
        stages = list(stages)
        if not stages:
            raise InputError("A curriculum needs at least one stage (first_step, DataMix).")
        for i, stage in enumerate(stages):
            if not (isinstance(stage, tuple) and len(stage) == 2):
                raise InputError(f"Curriculum stage {i} must be a (first_step, DataMix) pair, got {stage!r}.")
            first, mix = stage
            if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
                raise InputError(f"Curriculum stage {i}: first_step must be a non-negative integer, got {first!r}.")
            if not isinstance(mix, DataMix):
                raise InputError(f"Curriculum stage {i}: expected a DataMix, got {type(mix).__name__}.")
        firsts = [int(first) for first, _ in stages]
        if firsts[0] != 0:
            raise InputError(f"The first curriculum stage must start at step 0, not {firsts[0]}.")
        if any(b <= a for a, b in zip(firsts, firsts[1:])):
            raise InputError(f"Curriculum stages must start at strictly increasing steps, got {firsts}.")
        self.firsts = firsts
        self.mixes = [mix for _, mix in stages]

    def check(self, seq_len: int) -> None:
        for mix in self.mixes:
            mix.check(seq_len)

    def mix_at(self, step: int) -> DataMix:
        """The stage's mix for training step ``step`` (>= 0)."""
        if step < 0:
            raise InputError(f"step must be >= 0, got {step}.")
        return self.mixes[bisect.bisect_right(self.firsts, int(step)) - 1]

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int, step: int) -> np.ndarray:
        """``[batch_size, seq_len + 1]`` token ids of step ``step``'s stage."""
        return self.mix_at(step).batch(rng, batch_size, seq_len)

    def __repr__(self) -> str:
        return f"Curriculum(stages at steps {self.firsts})"
