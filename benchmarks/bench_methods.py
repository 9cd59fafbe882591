"""Cost of the interpretability methods: tuned-lens training time per layer, integrated gradients
per token, patching sweep time (and attribution-vs-activation patching agreement), probe collection
and fitting per million tokens.

* ``tuned_lens``: ``TunedLens(model).fit`` on windows of the stdlib test split (batch 8 x 128
  tokens): seconds per layer for the run, milliseconds per layer per step, and the loss before
  and after (KL to the final layer, per layer).
* ``integrated_gradients``: ``integrated_gradients`` (default adaptive quadrature, 64 steps) of the
  last position's logit over a 128-token sequence: seconds per call, milliseconds per input token,
  and the completeness error.

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
do: a trained model's will differ); d_model 128, 4 layers. Lens and IG rows cover every registered
mixer (``[name] * 4``) and the hybrid; patching and probing the five layouts of ``LAYOUTS``.
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


def _benchmarked_models(quick: bool, d_model: int):
    """``(name, model)`` for every layout whose mixers are registered (quick mode: qrnn-hybrid only)."""
    for name, layout in _every_layout().items():
        if quick and name != "qrnn-hybrid":
            continue
        model = _model(layout, d_model)
        if model is not None:
            yield name, model


def _every_layout() -> dict[str, list[str]]:
    from probe.mixers import MIXERS

    out = {("transformer" if name == "attn" else name): [name] * 4 for name in sorted(MIXERS) if name != "ff"}
    out["qrnn-hybrid"] = LAYOUTS["qrnn-hybrid"]
    return out


def _corpus_tokens(n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` byte tokens of the stdlib test split, as one stream."""
    from probe.data import CodeCorpus

    pieces, total = [], 0
    for toks, _ in CodeCorpus("test", max_files=200).labelled(max_bytes=n_tokens):
        pieces.append(toks[: n_tokens - total])
        total += len(pieces[-1])
        if total >= n_tokens:
            break
    return torch.from_numpy(np.concatenate(pieces))


def bench_lens(quick: bool) -> list[dict]:
    from probe.methods import TunedLens

    d, steps, batch, seq = (32, 3, 2, 32) if quick else (128, 40, 8, 128)
    stream = _corpus_tokens(4_000 if quick else 200_000)
    rows = []
    for name, model in _benchmarked_models(quick, d):
        lens = TunedLens(model).fit(model, stream, steps=steps, batch_size=batch, seq_len=seq, warmup=min(20, steps))
        info = lens.train_info
        rows.append({"suite": "tuned_lens", "model": name, "d_model": d, "layers": model.cfg.n_layers,
                     "steps": steps, "batch": batch, "seq": seq, "seconds": info["seconds"],
                     "s_per_layer": info["seconds_per_layer"],
                     "ms_per_layer_step": 1e3 * info["seconds_per_layer"] / steps,
                     "loss_first": info["loss_first"], "loss_last": info["loss_last"]})
    return rows


def bench_ig(quick: bool) -> list[dict]:
    from probe.methods import integrated_gradients

    d, T, steps = (32, 16, 8) if quick else (128, 128, 64)
    tokens = _corpus_tokens(T)[None]
    rows = []
    for name, model in _benchmarked_models(quick, d):
        target = int(model(tokens)[0, -1].argmax())
        t0 = time.perf_counter()
        res = integrated_gradients(model, tokens, target=target, position=-1, steps=steps)
        seconds = time.perf_counter() - t0
        rows.append({"suite": "integrated_gradients", "model": name, "d_model": d, "seq": T, "steps": res.steps,
                     "quadrature": res.quadrature, "seconds": seconds, "ms_per_token": 1e3 * seconds / T,
                     "completeness_error": float(res.completeness_error.max())})
    return rows


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
    sites = ["resid_post", "state"] if quick else ["resid_post", "mixer_out", "state"]
    for name in (["qrnn-hybrid"] if quick else ["transformer", "qrnn", "mamba"]):
        model = _model(LAYOUTS[name], d)
        if model is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            box = {}

            def collect():
                box["data"] = collect_activations(model, data, sites=sites,
                                                  path=f"{tmp}/acts", seq_len=256, batch_size=16)

            with torch.no_grad():
                mem = peak_memory(collect)
            acts = box["data"]
            t0 = time.perf_counter()
            labels = [k for k, v in acts.labels.items() if len(np.unique(v)) > 1]
            res = fit_probes(acts, labels[:1] if quick else labels)
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
    rows = []
    for part in (bench_lens, bench_ig, bench_patching, bench_probing):
        try:
            rows += part(quick)
        except Exception as exc:  # one failing method must not hide the others' numbers
            rows.append({"suite": part.__name__.removeprefix("bench_"),
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
