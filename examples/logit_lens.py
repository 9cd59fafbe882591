"""Logit lens and tuned lens: what the residual stream predicts after every layer.

    python examples/logit_lens.py [zoo-name (default qrnn-hybrid)] [--steps N] [--seq-len T] [--windows W] [--out DIR]

Prints the per-layer KL / loss / top-1 agreement of the logit lens on a snippet, takes the tuned
lens shipped beside the zoo model (or, with ``--steps N``, trains one for N steps on the Python
stdlib's ``val`` split: about a minute per 100 steps on 2 cores), compares both lenses on
W held-out windows of the ``test`` split (the zoo trains on ``train``), and writes the layer x
position top-token heatmaps of both lenses to DIR (default ./lens_out) as HTML.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.data.code_corpus import stdlib_stream
from probe.methods import TunedLens, compare_lenses, logit_lens

TEXT = "def add(a, b):\n    return a + b\n"

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--steps", type=int, default=0,
               help="train a tuned lens for this many steps (8 windows each); 0: the one saved beside the model")
p.add_argument("--seq-len", type=int, default=128, help="tokens per training / held-out window")
p.add_argument("--windows", type=int, default=32, help="held-out windows for the comparison")
p.add_argument("--out", default="lens_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

plain = logit_lens(model, TEXT)
print(plain.to_frame().to_string(index=False))
plain.figure().write_html(out / "logit_lens.html")

if args.steps > 0:
    lens = TunedLens(model).fit(model, stdlib_stream("val"), steps=args.steps, seq_len=args.seq_len, batch_size=8)
else:
    lens = TunedLens.load(model)  # the zoo ships one beside every model (probe/zoo/<name>/tuned_lens.*)
tuned = lens.run(model, TEXT)
print(tuned.to_frame().to_string(index=False))
tuned.figure().write_html(out / "tuned_lens.html")
held_out = compare_lenses(model, lens, stdlib_stream("test"), seq_len=args.seq_len, max_windows=args.windows)
print("held-out KL(final || lens) per layer:")
print(held_out[["label", "kl_logit", "kl_tuned", "tuned_better"]].to_string(index=False))
print(f"tuned lens trained in {lens.train_info['seconds']:.1f}s ({lens.train_info.get('steps', '?')} steps); "
      f"figures in {out}/")
