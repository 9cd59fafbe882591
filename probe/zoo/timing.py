r"""CPU training cost of a zoo recipe, as recorded in its card (``cpu_timing``): one step's median
wall time on a few threads times the recipe's step count, optionally rescaled to the machine that
timed a reference model (``probe zoo card --cpu-timing [--scale-to NAME]``)."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import torch

from probe.data.corpus import TokenStream
from probe.train import Trainer
from probe.zoo.build import build_model
from probe.zoo.recipes import STAGES, TRAIN


def cpu_seconds_per_step(name: str, threads: int = 2, steps: int = 3) -> float:
    """Wall time of one training step of recipe ``name`` on the CPU with ``threads`` threads: per
    curriculum stage the median of ``steps`` steps (after one warm-up step) on random tokens of the
    stage's batch shape, averaged with the stages' step counts as weights. Times the recipe's step
    count gives the CPU training time of ``probe zoo train NAME --device cpu``."""
    torch.set_num_threads(threads)
    model = build_model(name)
    stream = TokenStream(torch.randint(0, 256, (TRAIN.seq_len * 4,)).numpy(), TRAIN.seq_len * 4)
    trainer = Trainer(model, stream, replace(TRAIN, device="cpu"), progress=False)
    firsts = [s.first_step for s in STAGES] + [TRAIN.steps]
    total = 0.0
    for stage, first, end in zip(STAGES, firsts, firsts[1:]):
        batch_size, seq_len = stage.shape(TRAIN.batch_size, TRAIN.seq_len)
        tokens = torch.randint(0, 256, (batch_size, seq_len + 1))
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            trainer.train_step(tokens)
            times.append(time.perf_counter() - t0)
        total += sorted(times[1:])[len(times[1:]) // 2] * (end - first)
    return float(total / TRAIN.steps)


def cpu_timing(name: str, threads: int = 2) -> dict[str, Any]:
    """The CPU training cost of recipe ``name``: one step's median wall time on ``threads`` threads
    of an otherwise idle machine, times the recipe's steps (what ``probe zoo train NAME --device cpu``
    takes), recorded in the card as ``cpu_timing``."""
    per_step = cpu_seconds_per_step(name, threads=threads, steps=7)
    return {"seconds_per_step": round(per_step, 3), "minutes": round(per_step * TRAIN.steps / 60, 1),
            "threads": threads, "cores": os.cpu_count(), "torch": torch.__version__}


def scaled_cpu_timing(name: str, reference: dict[str, Any], threads: int = 2) -> dict[str, Any]:
    """:func:`cpu_timing` of ``name`` on this machine, rescaled to the machine that measured
    ``reference`` (a card holding ``cpu_timing``): both recipes are measured now, and ``name``'s step
    is multiplied by the reference's step then over its step now. The zoo's CPU column compares
    models on one machine; this keeps it comparable when one model is re-measured on another
    (this machine's speed drifts 2-4x between sessions). The card keeps the raw numbers."""
    ref_then = reference["cpu_timing"]["seconds_per_step"]
    ref_now = cpu_timing(reference["name"], threads)["seconds_per_step"]
    own = cpu_timing(name, threads)
    per_step = own["seconds_per_step"] * ref_then / ref_now
    return {**own, "seconds_per_step": round(per_step, 3), "minutes": round(per_step * TRAIN.steps / 60, 1),
            "scaled_by": {"model": reference["name"], "reference_then": ref_then, "reference_now": ref_now,
                          "measured_now": own["seconds_per_step"]}}
