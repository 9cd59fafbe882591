"""Hidden vs state probes, state patching and steering on every zoo model (issue 7's runs).

Three tables, one row per model:

1. **Probes** (hidden vs state): linear probes on the stdlib ``test`` split's byte labels
   (``in_string``, ``bracket_depth`` and ``indent``, the last two clipped at 4) and on the
   subject's number in agreement sentences with at least one attractor, read at the position
   that predicts the verb. For each label: the best held-out score over layers of the hidden
   sites (``resid_post``, ``mixer_out``) and of the state (every ``hook_state*``, randomly
   projected to 512 dims when larger; attention: the key/value written at the position),
   with the control-task selectivity (Hewitt & Liang 2019).
2. **Patching**: activation patching (and its attribution-patching estimate, with their
   correlation per site) of clean/corrupted pairs from associative recall (the
   queried value changed) and agreement (the subject's number changed), at named positions:
   recall's ``value`` (the state right after reading the key's value) and ``query``;
   agreement's ``subject``, ``attractor`` and ``verb``. The score is
   ``sum(m_patched - m_corr) / sum(m_clean - m_corr)`` over pairs (1: the answer transfers),
   for the layer where it is highest.
3. **Steering**: an agreement direction (mean plural - singular difference at the position
   before the verb, from aligned pairs) added at ``resid_pre`` (CAA) and to the state
   (state steering) of each layer at the prompt's last token (where the verb is predicted; a
   recurrent memory would otherwise accumulate one addition per token); the change of the
   "are" preference ``logit('a') - logit('i')`` on held-out is/are prompts at coefficients
   -2 and +2.

The full study (every zoo model at the sizes of ``probe/zoo/results/methods``: about two hours on 2 cores):

    python examples/probe_zoo_table.py --full --out probe/zoo/results/methods

By default a quick run (about a minute on one idle core; it shows the method, its numbers are
rough): the transformer and the QRNN, 10,000 bytes of code, probes of 500 rows fitted for 30
iterations, 60 agreement sentences, 2 patching / steering pairs per task; any option given
overrides its preset.

    python examples/probe_zoo_table.py                          # the quick run
    python examples/probe_zoo_table.py --models zoo:qrnn zoo:transformer --out results/
    python examples/probe_zoo_table.py --random-tiny            # tiny random models of every zoo layout
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import probe
from probe.methods import activation_patching, attribution_patching, collect_activations, fit_probes, hidden_vs_state, steer, steering_vector
from probe.data.patching_pairs import task_pairs

sys.path.insert(0, str(Path(__file__).parent))  # the examples' helpers, also when imported by a test
from _sizes import add_full_flag, apply  # noqa: E402

#: the quick run's sizes and the full study's (``--full``); ``models=None``: every zoo model
QUICK = {"models": ["zoo:transformer", "zoo:qrnn"], "code_bytes": 10_000, "fit_rows": 500, "max_iter": 30,
         "sentences": 60, "pairs": 2}
FULL = {"models": None, "code_bytes": 200_000, "fit_rows": 10_000, "max_iter": 500, "sentences": 600, "pairs": 40}

CODE_LABELS = ("in_string", "bracket_depth", "indent")
CLIP = 4
PATCH_ROLES = {"recall": ("value", "query"), "agreement": ("subject", "attractor", "verb")}


# -- models --------------------------------------------------------------------------------
def zoo_models(names=None) -> dict[str, probe.HookedLM]:
    names = names or [f"zoo:{n}" for n in probe.zoo_names()]
    return {str(n).removeprefix("zoo:"): probe.load(n).eval() for n in names}


def tiny_models(names=None, d_model: int = 32) -> dict[str, probe.HookedLM]:
    """Random models with every available zoo recipe's layout (at most 4 layers), for testing."""
    from probe.zoo import RECIPES, available_recipes

    out = {}
    for name in names or available_recipes():
        r = RECIPES[name]
        torch.manual_seed(0)
        layout = list(r.layout)[:4]
        cfg = probe.ModelConfig(d_model=d_model, n_heads=4, d_mlp=0 if r.d_mlp == 0 else 2 * d_model,
                                layout=layout, mixer_options={k: dict(v) for k, v in r.mixer_options.items()},
                                mlp_layout=list(r.mlp_layout)[:4] if r.mlp_layout else None, name=f"tiny-{name}")
        out[name] = probe.HookedLM(cfg).eval()
    return out


# -- 1. probes -----------------------------------------------------------------------------
def code_data(n_bytes: int, per_file: int = 4096):
    """``(tokens, labels)`` from the start of each stdlib test file (at most ``per_file`` bytes of each,
    so many files are seen), up to ``n_bytes`` in all; depth and indent clipped at 4."""
    from probe.data import CodeCorpus

    out, total = [], 0
    for toks, labels in CodeCorpus("test", max_files=2 * (n_bytes // per_file + 1)).labelled():
        if total >= n_bytes:
            break
        n = min(per_file, n_bytes - total, len(toks))
        labs = {k: np.minimum(labels[k][:n].astype(np.int64), CLIP) for k in CODE_LABELS}
        out.append((toks[:n], labs))
        total += n
    return out


def code_positions(data, seq_len: int, skip: int, stride: int):
    """Every ``stride``-th position of each ``seq_len`` window after its first ``skip`` tokens (the
    model needs some context before a label is decidable)."""
    per_window = []
    for toks, _ in data:
        for start in range(0, len(toks), seq_len):
            n = min(seq_len, len(toks) - start)
            per_window.append(list(range(skip, n, stride)))
    return per_window


def agreement_data(n: int, seed: int = 0):
    from probe.data import get_task

    examples = [e for e in get_task("agreement").examples(3 * n, seed) if e.meta["n_attractors"] >= 1][:n]
    tokens = [e.tokens[: e.answer_positions[0] + 1] for e in examples]
    number = np.array([e.meta["plural"] for e in examples], dtype=np.int64)
    return tokens, number


def probe_table(name: str, model, code, code_pos, agree, seq_len: int, fit_rows: int, max_iter: int) -> pd.DataFrame:
    sites = ["resid_post", "mixer_out", "state"]
    t0 = time.perf_counter()
    data = collect_activations(model, code, sites=sites, seq_len=seq_len, positions=code_pos, batch_size=8)
    varied = [k for k in CODE_LABELS if len(np.unique(data.labels[k])) > 1]  # a tiny sample may lack a class
    res_code = fit_probes(data, varied, max_train=fit_rows, max_test=fit_rows // 2, max_iter=max_iter)
    tokens, number = agree
    agree_data = collect_activations(model, tokens, {"number": number}, sites=sites, positions=[-1])
    res_agree = fit_probes(agree_data, max_iter=max_iter)
    frame = pd.concat([res_code.to_frame(), res_agree.to_frame()])
    frame["model"] = name
    print(f"  probes: {len(data):,} code rows + {len(agree_data)} sentences in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    return frame


# -- 2. patching ---------------------------------------------------------------------------
def patching_table(name: str, model, n_pairs: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(scores by task x site x layer x role, attribution-vs-activation agreement per site)``."""
    rows, cells = [], []
    for task, roles in PATCH_ROLES.items():
        num, den = {}, 0.0
        for pair in task_pairs(task, n_pairs, seed=seed):
            positions = sorted({pair.roles[r] for r in roles if r in pair.roles})
            kw = dict(answer=pair.answer, contrast=pair.contrast, sites=["state", "resid_pre", "mixer_out"],
                      positions=positions, normalize=False)
            res = activation_patching(model, pair.clean, pair.corrupted, **kw)
            approx = attribution_patching(model, pair.clean, pair.corrupted, **kw)
            for i, site in enumerate(res.sites):
                ok = torch.isfinite(res.metric[i])
                for a, b in zip(res.metric[i][ok].tolist(), approx.metric[i][ok].tolist()):
                    cells.append({"model": name, "site": site, "activation": a - res.corrupted_metric,
                                  "attribution": b - res.corrupted_metric})
            den += res.clean_metric - res.corrupted_metric
            for role in roles:
                if role not in pair.roles:
                    continue
                k = res.positions.index(pair.roles[role])
                for i, site in enumerate(res.sites):
                    for j, layer in enumerate(res.layers):
                        key = (site, layer, role)
                        num[key] = num.get(key, 0.0) + float(res.metric[i, j, k]) - res.corrupted_metric
        for (site, layer, role), v in num.items():
            rows.append({"model": name, "task": task, "site": site, "layer": layer, "mixer": model.cfg.layout[layer],
                         "role": role, "score": v / den if den else float("nan"), "clean_minus_corrupted": den})
    cells = pd.DataFrame(cells)
    agree = [{"model": name, "site": site, "cells": len(part),
              "pearson": float(np.corrcoef(part["activation"], part["attribution"])[0, 1]) if len(part) > 2 else np.nan}
             for site, part in cells.groupby("site", sort=False)]
    return pd.DataFrame(rows), pd.DataFrame(agree)


# -- 3. steering ---------------------------------------------------------------------------
def steering_table(name: str, model, n_pairs: int, seed: int = 2) -> pd.DataFrame:
    pairs = [p for p in task_pairs("agreement", 3 * n_pairs, seed=seed) if {chr(p.answer), chr(p.contrast)} == {"a", "i"}]
    half = max(1, len(pairs) // 2)
    train, held_out = pairs[:half], pairs[half:] or pairs[:half]
    plural = [p.clean if chr(p.answer) == "a" else p.corrupted for p in train]  # "are" follows a plural subject
    singular = [p.corrupted if chr(p.answer) == "a" else p.clean for p in train]
    prompts = [p.clean for p in held_out]
    a, i = ord("a"), ord("i")
    rows = []
    for site in ("resid_pre", "state"):
        try:
            v = steering_vector(model, plural, singular, site=site)
        except probe.ProbeError:
            continue  # no recurrent state in this model
        res = steer(model, prompts, v, [-2.0, 0.0, 2.0], answer=[a] * len(prompts), contrast=[i] * len(prompts),
                    positions="last")
        for row in res.to_frame().itertuples():
            rows.append({"model": name, "site": site, "layer": row.layer, "mixer": row.mixer,
                         "coefficient": row.coefficient, "are_minus_is": row.metric, "change": row.change})
    return pd.DataFrame(rows)


# -- summaries -----------------------------------------------------------------------------
def probe_summary(frame: pd.DataFrame) -> pd.DataFrame:
    return hidden_vs_state(frame)


def markdown_probes(summary: pd.DataFrame) -> str:
    labels = list(dict.fromkeys(summary["label"]))
    head = "| model | " + " | ".join(f"{l} hidden / state" for l in labels) + " |"
    lines = [head, "|---|" + "---:|" * len(labels)]
    for model, part in summary.groupby("model", sort=False):
        cells = []
        for l in labels:
            r = part[part["label"] == l]
            if not len(r):
                cells.append("")
                continue
            r = r.iloc[0]
            state = f"{r['state']:.2f}" if np.isfinite(r["state"]) else "-"
            cells.append(f"{r['hidden']:.2f} / {state} (sel {r['hidden_selectivity']:.2f} / "
                         f"{r['state_selectivity']:.2f})" if np.isfinite(r["state"]) else f"{r['hidden']:.2f} / -")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_patching(frame: pd.DataFrame) -> str:
    lines = ["| model | task | role | best state layer: score | best resid_pre layer: score |", "|---|---|---|---|---|"]
    for (model, task, role), part in frame.groupby(["model", "task", "role"], sort=False):
        cells = []
        for site in ("state", "resid_pre"):
            s = part[part["site"] == site]
            s = s[np.isfinite(s["score"])]
            if len(s):
                best = s.loc[s["score"].idxmax()]
                cells.append(f"{int(best['layer'])} ({best['mixer']}): {best['score']:.2f}")
            else:
                cells.append("-")
        lines.append(f"| {model} | {task} | {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_steering(frame: pd.DataFrame) -> str:
    lines = ["| model | site | best layer | change at -2 | change at +2 |", "|---|---|---|---:|---:|"]
    for (model, site), part in frame.groupby(["model", "site"], sort=False):
        plus = part[part["coefficient"] == 2.0].set_index("layer")["change"]
        minus = part[part["coefficient"] == -2.0].set_index("layer")["change"]
        best = (plus - minus).idxmax()
        mixer = part[part["layer"] == best]["mixer"].iloc[0]
        lines.append(f"| {model} | {site} | {best} ({mixer}) | {minus[best]:+.2f} | {plus[best]:+.2f} |")
    return "\n".join(lines)


def tables_markdown(out: dict) -> str:
    """The markdown of the tables present in ``out`` (frames keyed probe_summary, patching,
    patching_agreement, steering; e.g. concatenated from several runs' CSV files)."""
    text = []
    if "probe_summary" in out:
        text += ["### Linear probes: best layer, hidden vs state (held-out score; control selectivity)", "",
                 markdown_probes(out["probe_summary"]), ""]
    if "patching" in out:
        text += ["### Activation patching: share of the clean answer restored", "", markdown_patching(out["patching"]), ""]
    if "patching_agreement" in out:
        wide = out["patching_agreement"].pivot(index="model", columns="site", values="pearson")
        text += ["### Attribution vs activation patching: Pearson r over the cells above, per site", "",
                 "| model | " + " | ".join(wide.columns) + " |", "|---|" + "---:|" * len(wide.columns)]
        text += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for m, row in wide.iterrows()] + [""]
    if "steering" in out:
        text += ["### Steering with the agreement direction: change of logit('a') - logit('i')", "",
                 markdown_steering(out["steering"]), ""]
    return "\n".join(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="zoo:NAME or checkpoint directories")
    p.add_argument("--random-tiny", nargs="*", metavar="RECIPE",
                   help="tiny random models with these zoo layouts (all when none named): a test of the script")
    p.add_argument("--code-bytes", type=int, help="stdlib test-split bytes to probe on")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--stride", type=int, default=4, help="probe every stride-th position of a window")
    p.add_argument("--skip", type=int, default=32, help="positions skipped at the start of each window")
    p.add_argument("--fit-rows", type=int, help="training rows per probe")
    p.add_argument("--max-iter", type=int, help="solver iterations per probe")
    p.add_argument("--sentences", type=int, help="agreement sentences for the number probe")
    p.add_argument("--pairs", type=int, help="patching / steering pairs per task")
    p.add_argument("--out", help="directory for the CSV files and tables.md")
    p.add_argument("--skip-probes", action="store_true")
    p.add_argument("--skip-patching", action="store_true")
    p.add_argument("--skip-steering", action="store_true")
    add_full_flag(p, QUICK, FULL)
    args = apply(p.parse_args(argv), QUICK, FULL)
    with torch.no_grad():  # the methods turn gradients on where they need them (attribution patching)
        return run(args)


def run(args) -> dict:
    if args.random_tiny is not None:
        models = tiny_models(args.random_tiny or None)
    else:
        models = zoo_models(args.models)
    if not models:
        print("No zoo model is shipped yet; run with --models PATH... or --random-tiny.", file=sys.stderr)
        return {}
    frames = {"probes": [], "patching": [], "patching_agreement": [], "steering": []}
    if not args.skip_probes:
        code = code_data(args.code_bytes)
        code_pos = code_positions(code, args.seq_len, args.skip, args.stride)
        agree = agreement_data(args.sentences)
    for name, model in models.items():
        print(f"{name}: {model}", file=sys.stderr)
        t0 = time.perf_counter()
        if not args.skip_probes:
            frames["probes"].append(probe_table(name, model, code, code_pos, agree, args.seq_len, args.fit_rows,
                                                args.max_iter))
        if not args.skip_patching:
            scores, agreement_r = patching_table(name, model, args.pairs)
            frames["patching"].append(scores)
            frames["patching_agreement"].append(agreement_r)
        if not args.skip_steering:
            frames["steering"].append(steering_table(name, model, args.pairs))
        print(f"  done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    out = {k: pd.concat(v, ignore_index=True) for k, v in frames.items() if v}
    if "probes" in out:
        out["probe_summary"] = probe_summary(out["probes"])
    text = tables_markdown(out)
    print(text)
    if args.out:
        path = Path(args.out)
        path.mkdir(parents=True, exist_ok=True)
        for k, df in out.items():
            df.to_csv(path / f"{k}.csv", index=False)
        (path / "tables.md").write_text(text)
    out["markdown"] = text
    return out


if __name__ == "__main__":
    main()
