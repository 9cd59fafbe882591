"""Logit lens and tuned lens: what the residual stream predicts after every layer.

    python examples/logit_lens.py [zoo-name] [--out DIR]

Prints the per-layer KL / loss / top-1 agreement of both lenses and writes the layer x position
top-token heatmaps to DIR (default ./lens_out) as HTML.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import TunedLens, logit_lens

TEXT = "def add(a, b):\n    return a + b\n"

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--out", default="lens_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

plain = logit_lens(model, TEXT)
print(plain.to_frame().to_string(index=False))
plain.figure().write_html(out / "logit_lens.html")

corpus = TEXT * 200  # a real run would use a corpus: probe.data.code_corpus.stdlib_stream("val")
lens = TunedLens(model).fit(model, corpus, steps=50, seq_len=64, batch_size=4)
tuned = lens.run(model, TEXT)
print(tuned.to_frame().to_string(index=False))
tuned.figure().write_html(out / "tuned_lens.html")
print(f"tuned lens trained in {lens.train_info['seconds']:.1f}s; figures in {out}/")
