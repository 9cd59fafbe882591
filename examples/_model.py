"""The model the examples run on: a zoo model when one is shipped, else a small random one."""
from __future__ import annotations

import sys

import probe


def example_model(name: str | None = None) -> probe.HookedLM:
    """``zoo:<name>`` (default: the first zoo model), or a random QRNN/attention hybrid if there is no zoo."""
    names = probe.zoo_names()
    if name or names:
        return probe.load(f"zoo:{name or names[0]}").eval()
    print("(no zoo model shipped yet: using a random qrnn/attn model, so the numbers mean nothing)", file=sys.stderr)
    cfg = probe.ModelConfig(d_model=64, layout=["qrnn", "qrnn", "attn", "ff"], name="random-hybrid")
    return probe.HookedLM(cfg).eval()
