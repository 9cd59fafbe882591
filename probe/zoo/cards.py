r"""Model cards: evaluate a zoo model, store the numbers as JSON, render the zoo table.

A card (``probe/zoo/NAME/card.json``) holds the training facts written by
:func:`probe.zoo.build.train_zoo_model` and the metrics of :func:`evaluate_card`:

* ``val_bpb``: bits-per-byte on the first :data:`EVAL_WINDOWS` windows of 256 bytes of the
  stdlib validation split; ``unigram_bpb``: the add-one unigram model of the train split on
  the same bytes (the baseline every model must clearly beat);
* ``tasks``: per synthetic task, pair accuracy (correct vs contrast token, chance 0.5),
  top-1 accuracy and its chance level, on :data:`EVAL_EXAMPLES` held-out examples; also the
  :data:`DIAGNOSTICS` (task variants not trained on, e.g. content-based induction);
* ``minimal_pairs``: per task, the share of minimal pairs where the model gives the good
  text the higher log-probability (chance 0.5);
* ``quick``: the same metrics on a small slice (:data:`QUICK`), which the tests recompute
  to check that the shipped weights still produce the card.

``render_table(cards)`` gives the markdown table of ``probe/zoo/README.md`` and ``probe zoo list``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from probe.data.corpus import TokenStream, unigram_bpb
from probe.data.tasks import TASKS, get_task
from probe.errors import CheckpointError
from probe.evaluate import evaluate_bpb, evaluate_minimal_pairs, task_scores
from probe.zoo.recipes import RECIPES, describe_curriculum

CARD_FILE = "card.json"
EVAL_SEQ_LEN = 256
EVAL_WINDOWS = 256
#: held-out examples per task: 2000 single-answer examples put 3 standard errors at 0.5 +- 0.034
EVAL_EXAMPLES = 2000
#: held-out seed for task examples (training draws from ``[train seed, step]`` generators)
EVAL_SEED = 1_000_003
QUICK = {"windows": 4, "examples": 24, "seed": EVAL_SEED + 1}
#: evaluated like the tasks, not trained on: card key -> (task, options). "induction-content" starts
#: the copy at a random given letter, so its first answer needs content-based induction, as recall
#: does; the trained "induction" can be solved by position alone.
DIAGNOSTICS = {"induction-content": ("induction", {"start": "random"})}


def evaluate_card(model, val: TokenStream, train: TokenStream | None = None, windows: int = EVAL_WINDOWS,
                  examples: int = EVAL_EXAMPLES, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Every metric of a card (see the module docstring) for ``model``."""
    out: dict[str, Any] = {"eval": {"val_windows": windows, "seq_len": EVAL_SEQ_LEN, "task_examples": examples,
                                    "seed": seed}}
    out["val_bpb"] = round(evaluate_bpb(model, val, EVAL_SEQ_LEN, windows), 4)
    if train is not None:
        out["unigram_bpb"] = round(unigram_bpb(train, val.head(windows * EVAL_SEQ_LEN + 1), model.cfg.vocab_size), 4)
    out["tasks"], out["minimal_pairs"] = task_metrics(model, examples, seed)
    q = QUICK
    quick_tasks, quick_pairs = task_metrics(model, q["examples"], q["seed"])
    out["quick"] = {**q, "val_bpb": round(evaluate_bpb(model, val, EVAL_SEQ_LEN, q["windows"]), 5),
                    "tasks": {k: v["pair_accuracy"] for k, v in quick_tasks.items()}, "minimal_pairs": quick_pairs}
    return out


def task_metrics(model, examples: int, seed: int) -> tuple[dict[str, dict], dict[str, float]]:
    tasks, pairs = {}, {}
    variants = {name: (name, {}) for name in TASKS} | DIAGNOSTICS
    for name, (task_name, options) in variants.items():
        task = get_task(task_name, **options)
        exs = task.examples(examples, seed)
        scores = task_scores(model, exs)
        tasks[name] = {"pair_accuracy": round(scores["pair_accuracy"], 4), "top1": round(scores["top1"], 4),
                       "top1_chance": round(task.chance, 4), "answers": scores["answers"]}
        by_condition = condition_scores(model, task, exs)
        if by_condition:
            tasks[name]["by_condition"] = by_condition
        result = evaluate_minimal_pairs(model, [(e.good, e.bad) for e in exs])
        pairs[name] = round(result.accuracy, 4)
    return tasks, pairs


def condition_scores(model, task, examples) -> dict[str, dict[str, float]]:
    """Pair accuracy per condition of ``task`` (:meth:`~probe.data.tasks.base.Task.condition`), in the
    task's ``CONDITIONS`` order: ``{condition: {"pair_accuracy", "answers"}}``; empty when it has none."""
    groups: dict[str, list] = {}
    for e in examples:
        label = task.condition(e)
        if label is not None:
            groups.setdefault(label, []).append(e)
    out = {}
    for label in condition_order(task, groups):
        scores = task_scores(model, groups[label])
        out[label] = {"pair_accuracy": round(scores["pair_accuracy"], 4), "answers": scores["answers"]}
    return out


def condition_order(task, labels) -> list[str]:
    """``labels`` in the order a table shows them: the task's ``CONDITIONS`` first, then any other sorted."""
    known = [c for c in getattr(task, "CONDITIONS", ()) if c in labels]
    return known + sorted(set(labels) - set(known))


def write_card(directory: str | Path, card: dict[str, Any]) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return path


def read_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(directory)!r} has no {CARD_FILE}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def render_table(cards: list[dict[str, Any]]) -> str:
    """The markdown table of the zoo (one row per card)."""
    task_names = list(TASKS) + [d for d in DIAGNOSTICS if any(d in c.get("tasks", {}) for c in cards)]
    head = (["model", "layout", "params", "tokens", "val bpb", "unigram bpb"]
            + [f"{t} (pair / top-1)" for t in task_names]
            + ["minimal pairs (agreement)", "train time", "hardware", "CPU time, 2 cores (measured step x steps)",
               "seed", "code"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cards:
        layout = _compress_layout(c.get("layout", []))
        tasks = c.get("tasks", {})
        cells = [f"`{c['name']}`", layout, f"{c.get('params', 0) / 1e6:.2f}M",
                 f"{c.get('tokens_seen', 0) / 1e6:.1f}M", _fmt(c.get("val_bpb"), ".3f"), _fmt(c.get("unigram_bpb"), ".3f")]
        for t in task_names:
            s = tasks.get(t, {})
            cells.append(f"{_fmt(s.get('pair_accuracy'), '.2f')} / {_fmt(s.get('top1'), '.2f')}")
        cpu = c.get("cpu_timing", {})
        cpu_cell = (f"{cpu['minutes']:.1f} min ({cpu['seconds_per_step']:.2f} s/step)" if cpu else "-")
        if cpu.get("scaled_by"):
            by = cpu["scaled_by"]
            cpu_cell += (f", scaled: {by['measured_now']:.2f} s/step measured with `{by['model']}` at "
                         f"{by['reference_now']:.2f} (its column: {by['reference_then']:.2f})")
        cells += [_fmt(c.get("minimal_pairs", {}).get("agreement"), ".2f"), f"{_fmt(c.get('train_seconds'), '.0f')} s",
                  c.get("hardware", "-"), cpu_cell, str(c.get("seed", "-")), f"`{c.get('code_version', '-')}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_conditions(cards: list[dict[str, Any]]) -> str:
    """Per task with conditions (agreement: is there an attractor, does it share the subject's number),
    a table of pair accuracy per condition and model; ``""`` when no card has any."""
    parts = []
    for task in TASKS:
        rows = [(c["name"], c["tasks"][task]["by_condition"]) for c in cards
                if c.get("tasks", {}).get(task, {}).get("by_condition")]
        if not rows:
            continue
        conditions = condition_order(get_task(task), {k for _, by in rows for k in by})  # cards store keys sorted
        head = ["model"] + [f"{k} (n)" for k in conditions]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(conditions)]
        for name, by in rows:
            cells = [f"{by[k]['pair_accuracy']:.2f} ({by[k]['answers']})" if k in by else "-" for k in conditions]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        parts.append(f"{task.capitalize()} pair accuracy by condition (chance 0.5):\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def _compress_layout(layout: list[str]) -> str:
    out, i = [], 0
    while i < len(layout):
        j = i
        while j < len(layout) and layout[j] == layout[i]:
            j += 1
        out.append(layout[i] if j - i == 1 else f"{layout[i]}x{j - i}")
        i = j
    return " ".join(out)


README_HEAD = """# The probe model zoo

Small byte-level language models of twelve architectures, trained with one recipe
(`probe/zoo/recipes.py`): the same data (the Python standard library's train split
interleaved with four synthetic tasks, in the same two-stage curriculum), the same tokens
seen, parameter counts matched within 10 %. The curriculum is what teaches associative
recall at this budget (why: the recall section below). Its stages: {curriculum}. Load one with
`probe.load("zoo:NAME")`; retrain one with `probe zoo train NAME`; regenerate this page with
`probe zoo card`.

Columns: validation bits-per-byte on {windows} windows of 256 bytes of the stdlib validation
split and the unigram baseline on the same bytes; per task, pair accuracy (the correct
answer byte scores above the contrast byte; chance 0.5) / top-1 accuracy (chance:
agreement n/a, recall 0.10, induction 0.04, brackets 0.33) on {examples} held-out examples;
induction-content is a diagnostic, not trained on: the copy starts at a random given letter,
so the scored answer (the letter after it) needs content-based induction, as recall does,
while the trained induction task can be solved by position alone (copy the byte n + 1 back);
minimal pairs: share of agreement pairs ("the key to the cabinets is/are ...") where the
good sentence has the higher log-probability (chance 0.5). Train time is the wall time of
the optimisation steps on the hardware named. The CPU time column is what retraining takes
on 2 CPU threads: per curriculum stage one training step at the stage's batch shape measured
(`probe zoo card --cpu-timing`, the median of seven steps on an idle 2-core machine), times the
stage's steps. This machine's speed drifts between sessions (the same transformer step measured
0.47 s in one and 0.20 s in another), so compare the column within one run, not across runs.
Mamba-2's step is the slowest (1.3 s at the first stage's shape on 2 threads of an idle machine, read
off its training run: the chunked SSD form, 8 layers of 8 heads of 32 with 64 states each), then Mamba's:
about a third of Mamba's is the selective scan (a compiled kernel,
`probe.ops.native`, built where a C++ compiler exists; the PyTorch path without it is about 1.5x
slower per step), a quarter its matmuls, the rest the elementwise work of its 8 layers. The
sLSTM layer is a nonlinear recurrence run one position at a time (xLSTM).

"""


CONDITIONS_CAPTION = (
    "Agreement split by the noun nearest the verb, on the same held-out examples: a model that"
    " makes the verb agree with the nearest noun instead of the subject scores above chance with no"
    " attractor or an agreeing one, and below chance when the attractor disagrees (Linzen et al. 2016);"
    " one that tracks the subject scores above chance in all three.")


def above_chance(pair_accuracy: float, answers: int, z: float = 3.0) -> bool:
    """True when ``pair_accuracy`` over ``answers`` is ``z`` binomial standard errors above 0.5."""
    return (pair_accuracy - 0.5) / math.sqrt(0.25 / max(int(answers), 1)) >= z


def not_learned(card: dict[str, Any], z: float = 3.0) -> list[str]:
    """Tasks whose pair accuracy is not ``z`` binomial standard errors above chance (0.5)."""
    return [task for task, s in card.get("tasks", {}).items()
            if not above_chance(s.get("pair_accuracy", 0.5), s.get("answers", 0), z)]


def render_limits(cards: list[dict[str, Any]]) -> str:
    """A sentence per task that some models did not clearly learn (pair accuracy < chance + 3 SE)."""
    by_task: dict[str, list[str]] = {}
    for c in cards:
        for task in not_learned(c):
            by_task.setdefault(task, []).append(c["name"])
    if not by_task:
        return "Every model learned every task beyond chance (pair accuracy > 0.5 + 3 standard errors).\n"
    lines = ["Not clearly learned (pair accuracy within 3 standard errors of chance):"]
    lines += [f"- {task}: {', '.join(f'`{n}`' for n in names)}" for task, names in by_task.items()]
    return "\n".join(lines) + "\n"


#: result sections of the zoo README: file under ``probe/zoo/results/`` -> (title, the command writing it)
RESULTS = {
    "lens.md": ("Tuned lens vs logit lens (held-out KL to the final distribution, per layer)",
                "python examples/lens_zoo_table.py --full --save --markdown probe/zoo/results/lens.md"),
    "recall_study.md": ("Associative recall on its own: how many steps each architecture needs",
                        "python examples/recall_study.py --full --markdown probe/zoo/results/recall_study.md"),
    "methods/tables.md": ("Hidden vs state probes, patching and steering",
                          "python examples/probe_zoo_table.py --full --code-bytes 100000 --fit-rows 6000 --pairs 24 --out probe/zoo/results/methods"),
}


#: what a reader needs to read each result section
RESULT_CAPTIONS = {
    "recall_study.md": (
        " How the zoo came to learn recall. Each recipe (the zoo's widths and seeded initial weights)"
        " trained from scratch on recall rows only (2-4 pairs), with \"learned\" the first evaluation"
        " where pair accuracy is 3 standard errors above chance and top-1 beats naming a random context"
        " value: every recurrent recipe learns it in 150-500 steps (Mamba best), the transformer not"
        " within 600, so at this size attention is the slowest to find the circuit, not the fastest."
        " In the earlier one-stage mix (recall 1/8 of the rows, 3-8 pairs, 16 rows of 256 bytes per"
        " step) no model learned it, and tripling recall's share did not help (LSTM 0.498 / 0.122"
        " against chance 0.5 / 0.1). A 2-layer attention-only model learned recall with 64 rows per"
        " step and not with 16, whatever the row length: the number of sequences per step held"
        " attention back. The shipped recipe follows from that (the table at the top, and `STAGES` in"
        " probe/zoo/recipes.py): a first stage of short rows (64 x 64, the same tokens per step) with"
        " three-quarters task rows and recall weighted 6 (2-4 pairs), then the cards' 16 x 256 with 3-8"
        " pairs. The cost is about 0.1-0.2 bits per byte on code against the one-stage zoo. The LMUs"
        " learned recall only once their memory resolved single bytes: with the mixer's default window"
        " (64 bytes in 16 Legendre coefficients per channel) neither learned it in 600 steps here"
        " (0.540 / 0.302 and 0.556 / 0.273) and the LMU stayed at chance in the zoo (0.504 / 0.091);"
        " with 32 bytes in 32 coefficients (`LMU_MEMORY`, the rows above, re-run on one thread, so"
        " their CPU seconds are not comparable) they learn it at 250 and 200 steps. So a linear"
        " time-invariant memory with no input-dependent gate can learn recall at this size; what the"
        " default lacked was resolution. The study predates the `mamba2` and `gdn` recipes, which it has"
        " not been run on."),
    "methods/tables.md": (
        " Scores are the held-out accuracy of logistic probes at the best layer (bracket depth and"
        " indentation clipped at 4: five classes). Selectivity is the score minus the score of a control"
        " task in which every sequence takes another sequence's labels (it keeps the labels' frequencies"
        " and their run along a sequence, not the text; Hewitt & Liang's per-byte-type control would be a"
        " function of the current byte, which every hidden state encodes, and made every selectivity"
        " negative). It is positive for every label and model but mamba's hidden number probe (-0.01):"
        " the probes read the text, not only position and frequency. Measured on the shipped weights"
        " (the curriculum zoo with the retrained LMUs; 41 s to 3.4 minutes per model on one thread; the"
        " probes alone, refitted with this control: 22 s to 1.7 minutes per model, 7 CPU minutes in all)."
        " The state decodes whether a byte is inside a string at least as"
        " well as the hidden stream on 10 of the 12 models (not the transformer's keys and values, nor"
        " lmu-attn's). State steering at the"
        " prompt's last token cannot move RWKV's prediction at that token: RWKV reads the state left"
        " by the previous token (its wkv uses a_{t-1}, b_{t-1} plus the current token's bonus term),"
        " so the 0.00 row is the architecture, not a failure."),
}


def render_results(results_dir: str | Path) -> str:
    """The result sections written by the zoo scripts (see :data:`RESULTS`), those that exist."""
    parts = []
    for name, (title, command) in RESULTS.items():
        path = Path(results_dir) / name
        if path.is_file():
            caption = RESULT_CAPTIONS.get(name, "")
            parts.append(f"## {title}\n\nGenerated by `{command}`.{caption}\n\n{path.read_text().strip()}\n")
    return "\n".join(parts)


def render_readme(cards: list[dict[str, Any]], results_dir: str | Path | None = None) -> str:
    """The zoo README: the card table, the tasks not learned, missing recipes, then the result sections."""
    head = README_HEAD.format(windows=EVAL_WINDOWS, examples=EVAL_EXAMPLES, curriculum=describe_curriculum())
    text = head + render_table(cards) + "\n\n" + render_limits(cards)
    conditions = render_conditions(cards)
    if conditions:
        text += "\n" + CONDITIONS_CAPTION + "\n\n" + conditions
    missing = [n for n in RECIPES if n not in {c["name"] for c in cards}]
    if missing:
        text += (f"\nNot shipped yet (recipe defined, no trained checkpoint): {', '.join(f'`{n}`' for n in missing)}; "
                 "train one with `probe zoo train NAME`.\n")
    results = render_results(results_dir if results_dir is not None else Path(__file__).parent / "results")
    return text + ("\n" + results if results else "")


def zoo_cards(zoo_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The cards of every model in ``zoo_dir`` (default: the shipped zoo), in recipe order."""
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else Path(__file__).parent
    order = {n: i for i, n in enumerate(RECIPES)}
    dirs = [p for p in zoo_dir.iterdir() if (p / CARD_FILE).is_file()] if zoo_dir.is_dir() else []
    return [read_card(p) for p in sorted(dirs, key=lambda p: (order.get(p.name, len(order)), p.name))]
