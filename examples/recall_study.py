"""How many steps does each zoo architecture need to learn associative recall on its own?

The zoo's models do not learn multi-query associative recall (MQAR) in the shared mix
(``probe/zoo/README.md``). This study asks whether that is the budget or the architecture: each
zoo recipe (same widths, same seeded initial weights as the zoo) is trained from scratch on
*recall rows only* (packed ``AssociativeRecall`` examples, by default 2-4 pairs), and its recall
accuracy on held-out examples of the same task is measured every ``--eval-every`` steps.

"Learned" is the first evaluation where the pair accuracy (correct value vs another pair's value,
chance 0.5) is 3 binomial standard errors above chance *and* top-1 accuracy is above the share
a model gets by naming any value of the context (``1 / pairs``, averaged over the examples),
i.e. the model picks the value of the queried key, not just some value it saw.

The full study (every zoo recipe, 600 steps of 16 x 256 bytes: about two hours on 2 cores):

    python examples/recall_study.py --full --markdown probe/zoo/results/recall_study.md

By default a quick run (about a minute on one idle core; it shows the method, too few steps for
any model to learn recall): the QRNN alone, 60 steps of 8 x 64 bytes, 40 held-out examples scored
every 20 steps; any option given overrides its preset.

    python examples/recall_study.py                                  # the quick run
    python examples/recall_study.py --models transformer lstm --steps 300
    python examples/recall_study.py --full --markdown probe/zoo/results/recall_study.md --json out.json
    python examples/recall_study.py --render a.json b.json --markdown table.md   # merge runs, no training
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the examples' helpers, also when imported by a test
from _sizes import add_full_flag, apply  # noqa: E402

#: the quick run's sizes and the full study's (``--full``); ``models=None``: every zoo recipe
QUICK = {"models": ["qrnn"], "steps": 60, "eval_every": 20, "examples": 40, "batch": 8, "seq_len": 64}
FULL = {"models": None, "steps": 600, "eval_every": 50, "examples": 300, "batch": 16, "seq_len": 256}


def any_value_share(examples) -> float:
    """Top-1 accuracy of a model that names a uniformly random value of the example's context."""
    return float(np.mean([1 / e.meta["n_pairs"] for e in examples for _ in e.answer_positions]))


def learned(scores: dict, floor: float) -> bool:
    """Pair accuracy 3 standard errors above 0.5 (the zoo cards' criterion) and top-1 above ``floor``."""
    from probe.zoo.cards import above_chance

    return above_chance(scores["pair_accuracy"], scores["answers"]) and scores["top1"] > floor


def study(name: str, task, steps: int, lr: float, eval_every: int, examples: int, batch: int, seq_len: int) -> dict:
    """Train recipe ``name`` on recall rows only; the curve of held-out recall scores."""
    from probe.data.code_corpus import stdlib_stream
    from probe.data.mix import DataMix
    from probe.evaluate import task_scores
    from probe.train import Trainer
    from probe.zoo.build import build_model
    from probe.zoo.recipes import TRAIN

    model = build_model(name)
    data = DataMix(stdlib_stream("val"), [task], task_fraction=1.0)  # all rows are task rows: no text is drawn
    config = replace(TRAIN, steps=steps, lr=lr, batch_size=batch, seq_len=seq_len, warmup_steps=min(50, steps),
                     eval_every=0, save_every=0, log_every=10**9, device="cpu")
    trainer = Trainer(model, data, config, val=None, progress=False)
    held_out = task.examples(examples, seed=1_000_003)
    floor = any_value_share(held_out)
    curve, first, t0 = [], None, time.perf_counter()
    while trainer.step < steps:
        trainer.train(stop_after=eval_every)
        scores = task_scores(model, held_out)
        curve.append({"step": trainer.step, "pair_accuracy": round(scores["pair_accuracy"], 4),
                      "top1": round(scores["top1"], 4)})
        if first is None and learned(scores, floor):
            first = trainer.step
        print(f"  {name:12s} step {trainer.step:5d}  pair {scores['pair_accuracy']:.3f}  top-1 {scores['top1']:.3f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"model": name, "learned_at": first, "final": curve[-1], "curve": curve, "any_value_top1": round(floor, 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [f"Recall rows only, {settings['min_pairs']}-{settings['max_pairs']} pairs, {settings['steps']} steps of "
             f"{settings['batch']} x {settings['seq_len']} bytes, lr {settings['lr']}; scored on "
             f"{settings['examples']} held-out examples every {settings['eval_every']} steps (top-1 of a model naming "
             f"any context value: {rows[0]['any_value_top1']:.2f}; chance top-1 0.10).", "",
             "| model | learned at step | final pair | final top-1 | best pair | CPU s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        best = max(c["pair_accuracy"] for c in r["curve"])
        at = r["learned_at"] if r["learned_at"] is not None else f"not in {settings['steps']}"
        lines.append(f"| {r['model']} | {at} | {r['final']['pair_accuracy']:.3f} | {r['final']['top1']:.3f} | "
                     f"{best:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write(table: str, path: Path | None) -> None:
    print(table)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)


def main(argv=None) -> None:
    from probe.data.tasks import get_task
    from probe.zoo.recipes import available_recipes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="zoo recipes to train")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-pairs", type=int, default=2)
    parser.add_argument("--max-pairs", type=int, default=4)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--examples", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write every curve here")
    parser.add_argument("--render", nargs="+", type=Path, metavar="JSON",
                        help="train nothing: merge the --json files of earlier runs (same settings) into one table")
    add_full_flag(parser, QUICK, FULL)
    args = apply(parser.parse_args(argv), QUICK, FULL)
    args.models = args.models or available_recipes()
    if args.render:
        runs = [json.loads(p.read_text()) for p in args.render]
        if any(r["settings"] != runs[0]["settings"] for r in runs):
            raise SystemExit("--render: the runs were made with different settings; their table would mislead.")
        order = {name: i for i, name in enumerate(available_recipes())}  # the zoo table's order
        rows = sorted((m for r in runs for m in r["models"]), key=lambda m: order.get(m["model"], len(order)))
        settings = runs[0]["settings"]
        return write(markdown(rows, settings), args.markdown)
    for flag in ("steps", "eval_every", "examples", "batch", "seq_len"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task("recall", min_pairs=args.min_pairs, max_pairs=args.max_pairs)
    settings = {k: getattr(args, k) for k in ("steps", "lr", "min_pairs", "max_pairs", "eval_every", "examples",
                                              "batch", "seq_len")}
    rows = []
    for name in args.models:
        rows.append(study(name, task, args.steps, args.lr, args.eval_every, args.examples, args.batch, args.seq_len))
    write(markdown(rows, settings), args.markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
