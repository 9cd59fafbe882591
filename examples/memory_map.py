"""Memory maps: what each position reads from the past, in every layer, and the state size.

    python examples/memory_map.py [zoo-name (default qrnn-hybrid)] [--text TEXT] [--out DIR]

Attention layers show their pattern; linear recurrences their exact implicit attention (checked
by rebuilding the layer's output from it); LSTM / sLSTM the gradient influence of each earlier
position (d_model backward rows per position: the cost grows with the length of --text). Also plots
the numbers the model carries after each token.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import memory_map

TEXT = "x = [1, 2, 3]\nprint(x[0])"

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--text", default=TEXT, help="the input (default: a two-line snippet)")
p.add_argument("--out", default="memory_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

mm = memory_map(model, args.text)
print(mm.layer_frame()[["layer", "mixer", "kind", "reconstruction_error", "state_elements_last"]].to_string(index=False))
mm.figure().write_html(out / "memory_maps.html")
mm.state_size_figure().write_html(out / "state_size.html")
print(f"figures in {out}/")
