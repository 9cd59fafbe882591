"""Steering the is/are preference: contrastive activation addition vs state steering.

    python examples/steering.py [zoo-name] [--out DIR]

The direction is the mean (plural - singular) difference at the position before the verb over
aligned agreement pairs; it is added at resid_pre (CAA) and to the recurrent state of each layer,
and the "are" preference logit('a') - logit('i') is measured against the coefficient.
"""
import argparse
from pathlib import Path

from _model import example_model

from probe.methods import steer, steering_vector
from probe.methods.pairs import task_pairs

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--out", default="steering_out")
args = p.parse_args()
model = example_model(args.model)
out = Path(args.out)
out.mkdir(exist_ok=True)

pairs = [q for q in task_pairs("agreement", 80, seed=3) if {chr(q.answer), chr(q.contrast)} == {"a", "i"}]
plural = [q.clean if chr(q.answer) == "a" else q.corrupted for q in pairs]
singular = [q.corrupted if chr(q.answer) == "a" else q.clean for q in pairs]
prompt = "the key to the cabinets "
for site in ("resid_pre", "state"):
    try:
        v = steering_vector(model, plural, singular, site=site)
    except ValueError as exc:  # a transformer has no recurrent state
        print(f"{site}: {exc}")
        continue
    res = steer(model, prompt, v, [-4, -2, 0, 2, 4], answer="a", contrast="i", max_new_tokens=12)
    print(res.to_frame()[["site", "layer", "mixer", "coefficient", "metric", "generation"]].to_string(index=False))
    res.figure().write_html(out / f"steering_{site}.html")
print(f"figures in {out}/")
