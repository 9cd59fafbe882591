"""Completeness error of integrated gradients on the shipped zoo, on held-out code (issue 6's target:
< 1 % at 64 steps).

For each model: the worst completeness error of the zoo test's three inputs, and the errors on
``--windows`` random ``--length``-byte windows of the stdlib ``test`` split per ``--seeds`` seed,
with the adaptive rule as shipped and, with ``--compare``, with the re-planning of rough paths off
(``path_quadrature.PLAN_TOLERANCE = inf``: the panel rule alone). Prints a markdown table.

    python -m benchmarks.ig_zoo_completeness                       # every zoo model, seeds 0 1 2
    python -m benchmarks.ig_zoo_completeness --models xlstm mamba --compare
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import probe
from probe.methods import integrated_gradients
from probe.methods import path_quadrature as pq

TEXT = "def area(radius):\n    return 3.14159 * radius ** 2\n"
TEST_INPUTS = (TEXT[:32], TEXT[8:40], "import os\nfor i in range(10):\n  print(i)")  # tests/test_methods_zoo.py


def held_out_windows(seed: int, n: int, length: int) -> list[str]:
    from probe.data.code_corpus import stdlib_stream

    tokens = stdlib_stream("test").tokens
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length, n)
    return [bytes(tokens[s : s + length].tolist()).decode("utf-8", "replace") for s in starts]


def errors(model, texts, steps: int, replan: bool) -> list[float]:
    saved = pq.PLAN_TOLERANCE
    pq.PLAN_TOLERANCE = saved if replan else float("inf")
    try:
        return [float(integrated_gradients(model, t, steps=steps).completeness_error.max()) for t in texts]
    finally:
        pq.PLAN_TOLERANCE = saved


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="zoo names (default: every shipped model)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--windows", type=int, default=8, help="held-out windows per seed")
    p.add_argument("--length", type=int, default=40, help="bytes per window")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--compare", action="store_true", help="also measure the panel rule without re-planning")
    args = p.parse_args(argv)
    print(f"{args.steps} steps, mean baseline; held out: {args.windows} windows of {args.length} bytes per seed "
          f"{args.seeds}; torch threads: {torch.get_num_threads()}\n")
    print("| model | rule | worst of the 3 test inputs | held out below 1 % | held-out median | held-out worst |")
    print("|---|---|---:|---:|---:|---:|", flush=True)
    held = [t for s in args.seeds for t in held_out_windows(s, args.windows, args.length)]
    rows = []
    for name in args.models or probe.zoo_names():
        model = probe.load(f"zoo:{name}")
        for rule, replan in (("adaptive", True), ("panel rule only", False))[: 2 if args.compare else 1]:
            test, out = errors(model, TEST_INPUTS, args.steps, replan), errors(model, held, args.steps, replan)
            rows.append({"model": name, "rule": rule, "test_worst": max(test), "held_out_below_1pct": sum(e < 0.01 for e in out),
                         "held_out": len(out), "held_out_median": float(np.median(out)), "held_out_worst": max(out)})
            r = rows[-1]
            print(f"| {name} | {rule} | {r['test_worst']:.4f} | {r['held_out_below_1pct']} of {r['held_out']} | "
                  f"{r['held_out_median']:.4f} | {r['held_out_worst']:.4f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
