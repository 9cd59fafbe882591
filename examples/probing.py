"""Linear probes on the hidden stream vs the recurrent state (subject number in agreement sentences).

    python examples/probing.py [zoo-name (default qrnn-hybrid)] [--n N] [--out DIR]

Collects resid_post / mixer_out / state features at every token of N agreement sentences, fits a
logistic probe per (site, layer) for the subject's number with a control task, prints accuracy and
selectivity and writes the figure to DIR as HTML.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.data.tasks import get_task
from probe.methods import collect_activations, fit_probes, hidden_vs_state

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--n", type=int, default=200)
p.add_argument("--out", default="probing_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

examples = get_task("agreement").examples(args.n, seed=1)
data = [(e.tokens, {"number": e.labels["number"]}) for e in examples]
# features reduced to 64 columns and 100 solver iterations: seconds per probe, as in notebook 03
acts = collect_activations(model, data, sites=["resid_post", "mixer_out", "state"], max_dim=64)
res = fit_probes(acts, "number", max_iter=100)
print(res.to_frame().to_string(index=False))
print("\nhidden vs state:")
print(hidden_vs_state([res]).to_string(index=False))
res.figure("number").write_html(out / "probes.html")
print(f"{len(data)} sentences; figure in {out}/")
