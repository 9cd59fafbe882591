"""Activation patching and attribution patching on an associative-recall pair.

    python examples/patching.py [zoo-name (default qrnn-hybrid)] [--seed N] [--sites S ...] [--out DIR]

Builds a clean / corrupted pair from probe.data's recall task (the value stored under the queried key
is changed in the corrupted context), patches every (site, layer, position) of the clean run into the
corrupted run, compares with the gradient estimate, and writes the heatmaps to DIR as HTML.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.data.tasks import get_task
from probe.methods import attribution_patching

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--seed", type=int, default=3)
p.add_argument("--sites", nargs="+", default=["resid_pre", "mixer_out", "mlp_out", "state"])
p.add_argument("--out", default="patching_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

# token position = text position + 1 (BOS); the logits at the end of `clean` predict text[p]
e = get_task("recall", min_pairs=3, max_pairs=4, max_queries=1).examples(1, seed=args.seed)[0]
p_ans, source = e.answer_positions[0], e.meta["source_positions"][0]
answer, contrast = chr(e.correct[0]), chr(e.contrast[0])
clean = e.text[:p_ans]
corrupted = e.text[:source] + contrast + e.text[source + 1:p_ans]
print(f"clean     {clean!r} -> {answer!r}\ncorrupted {corrupted!r} -> {contrast!r}")

attr = attribution_patching(model, clean, corrupted, answer=answer, contrast=contrast, sites=args.sites,
                            compare=True)
exact = attr.reference
print(f"logit difference: clean {exact.clean_metric:.3f}, corrupted {exact.corrupted_metric:.3f} "
      f"({exact.forward_passes} patched passes, {exact.seconds:.1f}s; attribution {attr.seconds:.1f}s)")
print(exact.to_frame().sort_values("score", ascending=False).head(8).to_string(index=False))
print("attribution vs activation patching, per site:")
print(attr.agreement().to_string(index=False))
exact.figure().write_html(out / "activation_patching.html")
attr.figure().write_html(out / "attribution_patching.html")
print(f"figures in {out}/")
