"""Linear probes on the hidden state and on the recurrent state: bracket depth in Python code.

    python examples/probing.py [zoo-name] [--bytes N] [--out DIR]

Collects resid_post / mixer_out / state features over the first N bytes of the stdlib test
split, fits a logistic-regression probe per layer and site with a control task, and prints
the per-layer table and the best hidden vs best state score.
"""
import argparse
from pathlib import Path

import numpy as np
from _model import example_model

from probe.data import CodeCorpus
from probe.methods import collect_activations, fit_probes

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--bytes", type=int, default=40_000)
p.add_argument("--out", default="probing_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

data = []
for tokens, labels in CodeCorpus("test").labelled():
    n = min(2048, len(tokens))  # the start of many files rather than all of a few
    data.append((tokens[:n], {"bracket_depth": np.minimum(labels["bracket_depth"][:n], 4),
                              "in_string": labels["in_string"][:n]}))
    if sum(len(t) for t, _ in data) >= args.bytes:
        break
acts = collect_activations(model, data, sites=["resid_post", "mixer_out", "state"], seq_len=256)
print(acts, f"collected in {acts.seconds:.1f}s")
res = fit_probes(acts)
cols = ["label", "site", "kind", "layer", "mixer", "score", "control_score", "selectivity"]
print(res.to_frame()[cols].to_string(index=False))
print(res.summary().to_string(index=False))
for label in ("bracket_depth", "in_string"):
    res.figure(label).write_html(out / f"{label}.html")
print(f"probes fitted in {res.seconds:.1f}s; figures in {out}/")
