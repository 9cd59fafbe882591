"""Direct logit attribution and token attribution (gradient x input, integrated gradients).

    python examples/attribution.py [zoo-name (default qrnn-hybrid)] [--until E] [--out DIR]

Explains the model's top next-token prediction at the end of a code snippet: which layers wrote
it (with the final norm's scale frozen, the parts sum to the logit) and which input tokens it
depends on (integrated gradients refined until every token's error estimate is below --until of the
largest attribution, the library's default 1 %, with that estimate and the completeness error reported).
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import direct_logit_attribution, gradient_x_input, integrated_gradients
from probe.methods.support.path_quadrature import TOLERANCE

TEXT = "for i in range(10):\n    print(i"

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--until", type=float, default=TOLERANCE, help="integrated gradients' per-token error target")
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
ig = integrated_gradients(model, TEXT, target=int(dla.target[0]), until=args.until)
print(f"gradient x input completeness error {float(gxi.completeness_error[0]):.1%}; "
      f"integrated gradients ({ig.steps} gradient evaluations) {float(ig.completeness_error[0]):.2%}, "
      f"per-token error estimate {float(ig.error_share()[0]):.2%} of the largest attribution")
print(ig.to_frame()[["position", "token", "attribution", "attribution_error"]].tail(12).to_string(index=False))
ig.figure().write_html(out / "integrated_gradients.html")
print(f"figures in {out}/")
