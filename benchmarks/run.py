"""Run every benchmark suite and write ``results/<device>.json`` plus a markdown table.

    python -m benchmarks.run            # full mode: also writes benchmarks/README.md and scaling.png
    python -m benchmarks.run --quick    # seconds: checks the suites run and write valid output
    python -m benchmarks.run --suite bench_model --merge   # re-run one suite, keep the others' rows

Each suite is a module ``benchmarks/bench_*.py`` with ``run(quick: bool) -> list[dict]``;
every row carries its own reference measurement from the same run, so ratios are
comparable even when the machine's load differs between runs. No timing is asserted.
The README (targets met or not, tables, the growth-with-length plot, what remains) is
built by :mod:`benchmarks.report`; ``--readme PATH`` writes it elsewhere (or in quick mode).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.common import machine

HERE = Path(__file__).parent
#: forward passes per architecture, scan forms, reference implementations, interpretability methods
SUITES = ["bench_model", "bench_scans", "bench_references", "bench_methods"]


def available_suites() -> list[str]:
    return [s for s in SUITES if (HERE / f"{s}.py").exists()]


def run_all(quick: bool, suites: list[str] | None = None) -> dict:
    results = {"machine": machine(), "quick": quick, "suites": {}, "seconds": {}}
    names = suites or available_suites()
    for i, name in enumerate(names, start=1):
        print(f"[{i}/{len(names)}] {name}...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results["suites"][name] = module.run(quick=quick)
        except Exception:  # one failing suite must not hide the others' numbers
            results["suites"][name] = [{"error": traceback.format_exc(limit=3)}]
        results["seconds"][name] = time.perf_counter() - start
        print(f"[{i}/{len(names)}] {name}: {results['seconds'][name]:.1f} s", file=sys.stderr, flush=True)
    return results


def merge(old: dict, new: dict) -> dict:
    """``new``'s suites over ``old``'s: the machine and date of each suite are kept in
    ``runs[suite]`` so a README built from a merged file says when each was measured."""
    runs = dict(old.get("runs") or {s: old["machine"] for s in old.get("suites", {})})
    runs.update({s: new["machine"] for s in new["suites"]})
    return {"machine": new["machine"], "quick": new["quick"], "suites": {**old.get("suites", {}), **new["suites"]},
            "seconds": {**old.get("seconds", {}), **new["seconds"]}, "runs": runs}


def markdown_table(rows: list[dict]) -> str:
    """A GitHub markdown table of ``rows`` (the union of their keys as columns)."""
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(report.fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"### {m.get('cuda') or 'CPU'} ({m['cpu_count']} cores, torch {m['torch']}, {m['date']})", ""]
    for name, rows in results["suites"].items():
        lines += [f"#### {name}", ""]
        lines.append(markdown_table(rows))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--readme", help="write the README (targets, tables, scaling.png beside it) here; "
                        "default: benchmarks/README.md in a full run of every suite, none otherwise")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other suites' rows of the existing results file (a full run done suite by "
                        "suite); the README is rewritten from the merged results")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suite or []) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = ("cuda" if torch.cuda.is_available() else "cpu") + ("-quick" if args.quick else "")
    path = out / f"{tag}.json"
    results = run_all(args.quick, args.suite)
    if args.merge and path.is_file():
        results = merge(json.loads(path.read_text()), results)
    path.write_text(json.dumps(results, indent=1))
    (out / f"{tag}.md").write_text(to_markdown(results))
    print(f"wrote {path}")
    complete = not args.suite or set(results["suites"]) >= set(available_suites())
    readme = args.readme or (None if args.quick or not complete else str(HERE / "README.md"))
    if readme:
        print(f"wrote {report.write(results, Path(readme), results.get('seconds'))}")
    return path


if __name__ == "__main__":
    main()
