"""Direct logit attribution and token attribution (gradient x input, integrated gradients).

    python examples/attribution.py [zoo-name] [--steps N] [--out DIR]

Explains the model's top next-token prediction at the end of a code snippet: which layers wrote
it (with the final norm's scale frozen, the parts sum to the logit) and which input tokens it
depends on (integrated gradients with --steps quadrature points, default 64, and the
completeness error reported).
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import direct_logit_attribution, gradient_x_input, integrated_gradients

TEXT = "for i in range(10):\n    print(i"

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--steps", type=int, default=64, help="integrated-gradients quadrature points")
p.add_argument("--out", default="attribution_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

dla = direct_logit_attribution(model, TEXT)
print(dla.metric_label[0], f"= {float(dla.logit[0]):.4f}; parts sum to {float(dla.total[0]):.4f} "
      f"(relative error {float(dla.rel_error[0]):.1e})")
print(dla.to_frame()[["component", "contribution"]].to_string(index=False))
dla.figure(heads=True).write_html(out / "dla.html")

gxi = gradient_x_input(model, TEXT, target=int(dla.target[0]))
ig = integrated_gradients(model, TEXT, target=int(dla.target[0]), steps=args.steps)
print(f"gradient x input completeness error {float(gxi.completeness_error[0]):.1%}; "
      f"integrated gradients ({args.steps} steps) {float(ig.completeness_error[0]):.2%}")
print(ig.to_frame()[["position", "token", "attribution"]].tail(12).to_string(index=False))
ig.figure().write_html(out / "integrated_gradients.html")
print(f"figures in {out}/")
