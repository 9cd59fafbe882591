"""Activation and attribution patching on associative recall: which layer's state carries the answer?

    python examples/patching.py [zoo-name] [--out DIR]

Builds a clean / corrupted pair from the recall task (the queried key's value changed in the
context), patches every site x layer x position of the clean run into the corrupted one,
compares attribution patching with it per site, and writes both heatmaps to DIR as HTML.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import activation_patching, attribution_patching
from probe.methods.pairs import task_pairs

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--out", default="patching_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

pair = task_pairs("recall", 1, seed=0)[0]
print(f"clean {model.to_string(pair.clean)!r} -> {chr(pair.answer)!r}; corrupted {model.to_string(pair.corrupted)!r} "
      f"-> {chr(pair.contrast)!r}; roles {pair.roles}")
kw = dict(answer=pair.answer, contrast=pair.contrast)
real = activation_patching(model, pair.clean, pair.corrupted, **kw)
print(f"activation patching: {real.forward_passes} forward passes in {real.seconds:.2f}s")
frame = real.to_frame()
print(frame[frame.position == pair.roles["value"]][["site", "layer", "mixer", "score"]].to_string(index=False))
approx = attribution_patching(model, pair.clean, pair.corrupted, **kw, compare=True)
print(f"attribution patching: {approx.forward_passes} passes in {approx.seconds:.2f}s; agreement per site:")
print(approx.agreement().to_string(index=False))
real.figure().write_html(out / "activation_patching.html")
approx.figure().write_html(out / "attribution_patching.html")
approx.agreement_figure().write_html(out / "agreement.html")
print(f"figures in {out}/")
