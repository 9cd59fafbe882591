"""Methods II: patching sweep time, attribution-vs-activation patching agreement, probe collection
and fitting per million tokens.

* ``patching``: a clean/corrupted batch (8 x 64 tokens, the corrupted tokens at 1/4 of the
  length) through activation patching over resid_pre / mixer_out / mlp_out / state x every
  layer x every position up to the answer, and attribution patching of the same sweep:
  seconds, forward passes, cells, and the Pearson correlation of the two per site.
* ``probing``: collect resid_post / mixer_out / state features at every position of the
  stdlib test split (float16 on disk), then fit every layer's probes for three labels
  (in_string, bracket_depth, indent) with control tasks: seconds, extrapolated to 1M tokens
  (collection is linear in tokens; fitting samples at most ``max_train`` rows, so it is not),
  disk bytes per token and the peak resident memory increase.

Models are random with perturbed weights (the timings do not depend on training, the correlations
do: a trained model's will differ); d_model 128, 4 layers.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

import probe

try:
    from benchmarks.common import peak_memory
except ImportError:  # run as a script from benchmarks/
    from common import peak_memory

LAYOUTS = {"transformer": ["attn"] * 4, "qrnn": ["qrnn"] * 4, "lstm": ["lstm"] * 4, "mamba": ["mamba"] * 4,
           "qrnn-hybrid": ["qrnn", "qrnn", "attn", "ff"]}


def _model(layout, d_model):
    from probe.mixers import MIXERS

    if not all(m in MIXERS for m in layout):
        return None
    torch.manual_seed(0)
    cfg = probe.ModelConfig(d_model=d_model, n_heads=4, layout=layout, d_mlp=0 if "mamba" in layout else 2 * d_model)
    model = probe.HookedLM(cfg).eval()
    with torch.no_grad():  # weights larger than the training init, so every path matters (as in the tests)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def bench_patching(quick: bool) -> list[dict]:
    from probe.methods import activation_patching, attribution_patching

    d, B, T = (32, 2, 16) if quick else (128, 8, 64)
    rows = []
    for name, layout in LAYOUTS.items():
        if quick and name not in ("qrnn-hybrid",):
            continue
        model = _model(layout, d)
        if model is None:
            continue
        g = torch.Generator().manual_seed(0)
        clean = torch.randint(0, 256, (B, T), generator=g)
        corrupted = clean.clone()
        corrupted[:, T // 4] = (corrupted[:, T // 4] + 1 + torch.randint(0, 255, (B,), generator=g)) % 256
        answer, contrast = torch.randint(0, 256, (B,), generator=g), torch.randint(0, 256, (B,), generator=g)
        contrast = torch.where(contrast == answer, (contrast + 1) % 256, contrast)
        t0 = time.perf_counter()
        real = activation_patching(model, clean, corrupted, answer=answer, contrast=contrast)
        t_real = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = attribution_patching(model, clean, corrupted, answer=answer, contrast=contrast)
        t_attr = time.perf_counter() - t0
        agree = approx.agreement(real).set_index("site")
        cells = int(torch.isfinite(real.scores).sum())
        row = {"suite": "patching", "model": name, "d_model": d, "batch": B, "seq": T, "cells": cells,
               "activation_s": t_real, "activation_passes": real.forward_passes,
               "attribution_s": t_attr, "attribution_passes": approx.forward_passes, "speedup": t_real / t_attr}
        for site in agree.index:
            row[f"r_{site}"] = float(agree.loc[site, "pearson"])
        rows.append(row)
    return rows


def bench_probing(quick: bool) -> list[dict]:
    from probe.data import CodeCorpus
    from probe.methods import collect_activations, fit_probes

    n_tokens = 3_000 if quick else 60_000
    d = 32 if quick else 128
    data, total = [], 0
    for toks, labels in CodeCorpus("test", max_files=40 if quick else 400).labelled():
        n = min(len(toks), 512 if quick else 4096, n_tokens - total)
        data.append((toks[:n], {"in_string": labels["in_string"][:n].astype(np.int64),
                                "bracket_depth": np.minimum(labels["bracket_depth"][:n], 4).astype(np.int64),
                                "indent": np.minimum(labels["indent"][:n], 4).astype(np.int64)}))
        total += n
        if total >= n_tokens:
            break
    rows = []
    for name in (["qrnn-hybrid"] if quick else ["transformer", "qrnn", "mamba"]):
        model = _model(LAYOUTS[name], d)
        if model is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            box = {}

            def collect():
                box["data"] = collect_activations(model, data, sites=["resid_post", "mixer_out", "state"],
                                                  path=f"{tmp}/acts", seq_len=256, batch_size=16)

            with torch.no_grad():
                mem = peak_memory(collect)
            acts = box["data"]
            t0 = time.perf_counter()
            res = fit_probes(acts, [k for k, v in acts.labels.items() if len(np.unique(v)) > 1])
            t_fit = time.perf_counter() - t0
            frame = res.to_frame()
            rows.append({"suite": "probing", "model": name, "d_model": d, "tokens": acts.n_tokens, "rows": len(acts),
                         "matrices": len(acts.features), "collect_s": acts.seconds,
                         "collect_s_per_Mtok": acts.seconds * 1e6 / acts.n_tokens,
                         "disk_MB_per_Mtok": acts.nbytes / 2**20 * 1e6 / acts.n_tokens,
                         "peak_rss_MB": mem / 2**20, "fit_s": t_fit, "probes": len(frame),
                         "fit_s_per_probe": t_fit / max(1, len(frame)),
                         "collect_plus_fit_s_per_Mtok": acts.seconds * 1e6 / acts.n_tokens + t_fit,
                         "unconverged": int((~frame["converged"]).sum())})
    return rows


def run(quick: bool = False) -> list[dict]:
    return bench_patching(quick) + bench_probing(quick)


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
