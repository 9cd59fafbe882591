"""The zoo on CUDA: every shipped model moved with ``.to("cuda")`` through every method, and its
logits compared with the CPU's. Run by ``scripts/gpu_check.sh``; prints one line per (model,
method) and exits non-zero on any failure.

Logit tolerances (relative: ``max |cuda - cpu| / max |cpu|``): 1e-5, and 2e-3 for models with an
LSTM or QRNN layer, whose cuDNN RNN / convolution kernels use TF32 by default
(``torch.backends.cudnn.allow_tf32``): measured 5e-4 (LSTM) and 1.7e-4 (QRNN) on an H200,
5e-7 for the other mixers.
"""
from __future__ import annotations

import sys
import time
import traceback

import torch

import probe
from probe.methods import (activation_patching, attribution_patching, collect_activations,
                           direct_logit_attribution, gradient_x_input, integrated_gradients, logit_lens,
                           memory_map, steer, steering_vector, TunedLens)
from probe.loading import ZOO_DIR

TEXT = "for i in range(3):\n  print(i)"  # short: the check is of code paths, not of numbers
TF32_MIXERS = {"lstm", "qrnn"}


def zoo_names() -> list[str]:
    return sorted(p.parent.name for p in ZOO_DIR.glob("*/config.json"))


def methods(model):
    clean = model.to_tokens("x = 1; print(x)")
    corrupted = model.to_tokens("y = 1; print(x)")
    vec = lambda: steering_vector(model, ["def f(x):"], ["x = [1, 2]"])
    return {
        "gradient_x_input": lambda: gradient_x_input(model, TEXT, target=")"),
        "integrated_gradients": lambda: integrated_gradients(model, TEXT, target=")"),
        "memory_map": lambda: memory_map(model, TEXT),
        "logit_lens": lambda: logit_lens(model, TEXT),
        "tuned_lens_fit": lambda: TunedLens(model).fit(model, TEXT * 4, steps=2, batch_size=2, seq_len=16),
        "direct_logit_attribution": lambda: direct_logit_attribution(model, TEXT, target=")"),
        "activation_patching": lambda: activation_patching(model, clean, corrupted, "x", "y"),
        "attribution_patching": lambda: attribution_patching(model, clean, corrupted, "x", "y"),
        "steering": lambda: steer(model, TEXT, vec(), coefficients=(0.0, 1.0), answer=")", contrast="("),
        "collect_activations": lambda: collect_activations(model, [TEXT, TEXT[:20]], seq_len=None),
    }


def logits_error(name: str, device: str) -> tuple[float, float]:
    """``(relative error of the logits on device vs CPU, tolerance)`` for zoo model ``name``."""
    cpu = probe.load(f"zoo:{name}")
    tokens = cpu.to_tokens(TEXT)
    with torch.no_grad():
        ref = cpu(tokens)
        got = probe.load(f"zoo:{name}").to(device)(tokens.to(device)).cpu()
    err = float((got - ref).abs().max() / ref.abs().max())
    return err, (2e-3 if TF32_MIXERS & set(cpu.cfg.layout) else 1e-5)


def main(device: str = "cuda") -> int:
    """``device``: ``cuda`` (``cpu`` runs the same script on the CPU, to check the script itself)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 2
    torch.set_num_threads(min(8, torch.get_num_threads()))
    sys.stdout.reconfigure(line_buffering=True)
    failures = []
    for name in zoo_names():
        err, tol = logits_error(name, device)
        ok = err <= tol
        print(f"{name:12s} logits {device} vs cpu: relative {err:.1e} (tolerance {tol:.0e}) {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append((name, "logits"))
        model = probe.load(f"zoo:{name}").to(device)
        for method, run in methods(model).items():
            start = time.perf_counter()
            try:
                run()
                print(f"{name:12s} {method:26s} ok   {time.perf_counter() - start:6.2f} s")
            except Exception as exc:  # report every failure, not only the first
                failures.append((name, method))
                print(f"{name:12s} {method:26s} FAIL {type(exc).__name__}: {exc}".splitlines()[0][:300])
                traceback.print_exc(limit=-3)
    print(f"{len(failures)} failures: {failures}" if failures else f"all zoo models ran every method on {device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
