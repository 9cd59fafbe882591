"""Steering with a difference-of-means vector, in the residual stream and in the recurrent state.

    python examples/steering.py [zoo-name (default qrnn-hybrid)] [--tokens N]

The vector is mean(plural subjects) - mean(singular subjects) at the last token, from the contrast
pairs the README, notebook 04 and the explorer use (``probe.data.contrast.NUMBER``); adding it should
push "the dog " towards "are" ('a') over "is" ('i'). site="state" steers the whole memory of each
recurrent layer, carried through the recurrence as in token-by-token generation.
"""
import argparse

from _model import example_model

from probe.data.contrast import NUMBER
from probe.methods import steer, steering_vector

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--tokens", type=int, default=8, help="tokens to generate per coefficient")
args = p.parse_args()
model = example_model(args.model)

for site in ("resid_pre", "state"):
    vec = steering_vector(model, list(NUMBER.positive), list(NUMBER.negative), site=site)
    if not vec.layers:
        print(f"{site}: this model has no such site")
        continue
    print(f"\n{site}: {vec}")
    res = steer(model, NUMBER.prompt, vec, coefficients=[-4.0, 0.0, 4.0], answer=NUMBER.answer,
                contrast=NUMBER.contrast, max_new_tokens=args.tokens)
    print(res.to_frame().to_string(index=False))
