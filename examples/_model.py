"""The model the examples run on: a named zoo model (default ``qrnn-hybrid``: QRNN layers with a
recurrent state, an attention layer and a feed-forward layer, so every method has something to
show), else a small random one when no zoo is shipped."""
from __future__ import annotations

import sys

import probe

#: the zoo model an example loads when none is named on its command line
DEFAULT = "qrnn-hybrid"


def example_model(name: str | None = None) -> probe.HookedLM:
    """``zoo:<name>`` (default :data:`DEFAULT`), or a random QRNN/attention hybrid if there is no zoo."""
    if name or probe.zoo_names():
        name = name or DEFAULT
        print(f"model: zoo:{name}", file=sys.stderr)
        return probe.load(f"zoo:{name}").eval()
    print("(no zoo model shipped yet: using a random qrnn/attn model, so the numbers mean nothing)", file=sys.stderr)
    cfg = probe.ModelConfig(d_model=64, layout=["qrnn", "qrnn", "attn", "ff"], name="random-hybrid")
    return probe.HookedLM(cfg).eval()
