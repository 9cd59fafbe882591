"""Integrated gradients on the shipped zoo, per token, on held-out code (issue 27's table).

For each model and ``--windows`` random ``--length``-byte windows of the stdlib ``test`` split
(seed ``--seed``): the default ``integrated_gradients`` call against a converged reference (the
same adaptive rule at ``until=--reference`` on a float64 copy of the model): the worst per-token
error as a share of the largest reference attribution, the reported completeness error, the
reported per-token error estimate (largest ``attribution_error`` over the largest attribution) and
whether it bounds the true error, the gradient evaluations used, the seconds per call, and the
reference's own estimate. Prints a markdown table.

Why float64: the zoo xLSTM's path has steps ~1e-7 wide in ``alpha`` (an mLSTM head's output flips
sign where ``n . q`` crosses zero at the first token; see ``integrated_gradients``), below what a
float32 path can resolve (its embeddings round at ~1e-7 relative). A float32 reference at
``until=1e-4`` ran out of a 30000-evaluation budget and sat 0.26 % from the float64 one;
the float64 reference converges in 5000-6000 evaluations.

    python -m benchmarks.ig_zoo_completeness                       # every zoo model
    python -m benchmarks.ig_zoo_completeness --models xlstm mamba --windows 2
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import probe
from probe.methods import integrated_gradients


def held_out_windows(seed: int, n: int, length: int) -> list[str]:
    """``n`` random ``length``-byte windows of the stdlib test split (bytes decoded, bad ones replaced)."""
    from probe.data.code_corpus import stdlib_stream

    tokens = stdlib_stream("test").tokens
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length, n)
    return [bytes(tokens[s : s + length].tolist()).decode("utf-8", "replace") for s in starts]


def measure(model, text: str, reference: float, exact=None) -> dict:
    """One window: the default call on ``model`` against the reference, computed on ``exact`` (a
    float64 copy of the model; ``model`` itself when None)."""
    start = time.perf_counter()
    res = integrated_gradients(model, text)
    seconds = time.perf_counter() - start
    ref = integrated_gradients(model if exact is None else exact, text, until=reference, max_steps=100_000)
    top = float(ref.attributions.abs().max())
    gap = (res.attributions.double() - ref.attributions.double()).abs()
    return {"true": float(gap.max()) / top, "estimate": float(res.error_share()[0]),
            "completeness": float(res.completeness_error[0]), "steps": res.steps, "seconds": seconds,
            "converged": bool(res.converged[0]),
            "bounded": bool((gap <= res.attribution_error.double() + ref.attribution_error.double()).all()),
            "reference_estimate": float(ref.error_share()[0])}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="zoo names (default: every shipped model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=3, help="held-out windows per model")
    p.add_argument("--length", type=int, default=32, help="bytes per window")
    p.add_argument("--reference", type=float, default=1e-3, help="the reference's until")
    p.add_argument("--reference-dtype", choices=("float64", "float32"), default="float64",
                   help="the dtype of the model copy the reference runs on")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"default integrated_gradients vs until={args.reference} in {args.reference_dtype}; {args.windows} windows "
          f"of {args.length} bytes (seed {args.seed}); torch threads: {torch.get_num_threads()}\n")
    print("| model | worst per-token error, % of largest | reported estimate, % | estimate bounds it | "
          "completeness, % | gradient evaluations | s per call | converged | reference's estimate, % |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    texts = held_out_windows(args.seed, args.windows, args.length)
    rows = []
    for name in args.models or probe.zoo_names():
        model = probe.load(f"zoo:{name}")
        exact = copy.deepcopy(model).to(getattr(torch, args.reference_dtype))
        out = [measure(model, t, args.reference, exact) for t in texts]
        rows.append({"model": name, "windows": out})
        col = lambda key, fmt: ", ".join(fmt.format(o[key]) for o in out)
        print(f"| {name} | {col('true', '{:.2%}')} | {col('estimate', '{:.2%}')} | "
              f"{sum(o['bounded'] for o in out)}/{len(out)} | {col('completeness', '{:.3%}')} | {col('steps', '{}')} | "
              f"{col('seconds', '{:.1f}')} | {sum(o['converged'] for o in out)}/{len(out)} | "
              f"{col('reference_estimate', '{:.3%}')} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
