r"""The libraries' real Triton kernels behind probe's fused seam (flash-linear-attention's, and
mamba-ssm's ``mamba_chunk_scan_combined``), run on the CPU in Triton's interpreter: checks the call
mappings of :mod:`probe.ops.fused` (layout, grouped heads, gates, initial and final states) against
the kernels themselves rather than their references.

Needs ``triton`` and ``fla-core`` importable (neither is a dependency: ``pip install triton`` into a
scratch environment or ``--target`` folder on ``PYTHONPATH``); for ``mamba2``, a mamba-ssm source
checkout on ``PYTHONPATH`` with its ``mamba_ssm/__init__.py`` emptied (it imports the CUDA extension).
The kernels' ``torch.cuda.device(x.device.index)`` contexts become no-ops on CPU tensors. The
interpreter cannot time autotuning configs (it has no GPU driver), so each kernel runs its first
config, and it leaves ``range()`` loop variables Python ints, which fla's kernels call ``.to()`` on,
so fla's modules get a ``range`` yielding Triton scalars. Its bfloat16 arithmetic is wrong (numpy has
no bfloat16: fla's own kernel called directly returns values near 1e10 there), so half precision is
checked in float16.

Per mixer: the logits and carried states of a tiny 2-layer model (d_model 32, grouped value heads of 16)
through the kernel against the PyTorch path, a second segment continuing the first's state, and an
edit of layer 0 giving one position a decay above 1 (:data:`GROW`; the kernels must either take it or
be bypassed, as Mamba-2's is for an edited ``dt``); exit status 1 when the logits differ by more than
:data:`BOUNDS` of the largest logit.

Usage: TRITON_INTERPRET=1 python scripts/triton_interpreter_check.py [--mixers gdn,kda,hgrn2,mamba2]
       [--dtypes float32,float16]
"""
from __future__ import annotations

import argparse
import builtins
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "ops")]

#: the fla kernel of each mixer: (module, function)
KERNELS = {"gdn": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"), "kda": ("fla.ops.kda", "chunk_kda"),
           "hgrn2": ("fla.ops.gla", "chunk_gla"),
           "mamba2": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")}
#: per mixer: the hook whose edit at position 7 gives a decay above 1, and the edit
GROW = {"gdn": ("log_decay", lambda v: v.abs() + 0.3), "kda": ("log_decay", lambda v: v.abs() + 0.3),
        "hgrn2": ("forget", lambda v: v.abs() + 1.3), "mamba2": ("dt", lambda v: -v)}
#: max |logit difference| / max |logit| allowed per dtype (measured: float32 2.2e-6, float16 3.8e-3)
BOUNDS = {"float32": 1e-5, "float16": 2e-2}


def interpreter_patches() -> None:
    """Autotuning picks the first config untimed; fla's loops get Triton scalars; no CUDA device
    contexts (module docstring)."""
    import contextlib

    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import autotuner
    from triton.runtime.interpreter import TensorHandle

    autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [float(self.configs.index(config))] * 3
    torch.cuda.device = lambda *args, **kwargs: contextlib.nullcontext()

    def scalar_range(*args):
        ints = [int(a.handle.data.item()) if hasattr(a, "handle") else int(a) for a in args]
        for i in builtins.range(*ints):
            yield tl.core.tensor(TensorHandle(np.array(i, dtype=np.int32), tl.int32), tl.int32)

    for name, module in list(sys.modules.items()):
        if name.startswith("fla.") and "naive" not in name and module is not None:
            module.range = scalar_range


def check(kind: str, dtype, kernel) -> tuple[str, float]:
    import torch

    import test_fused_dispatch as t
    from probe.ops.fused import swapped_kernel

    model = t._model(kind, dtype)
    name = next(iter(t._swaps(kind)))
    with torch.no_grad():
        ref, ref_states = model(t.TOKENS, return_states=True)
        with swapped_kernel(name, kernel):
            out, states = model(t.TOKENS, return_states=True)
            _, first = model(t.TOKENS[:, :20], return_states=True)
            second = model(t.TOKENS[:, 20:], states=first)
        hook, grow = GROW[kind]

        def edit(value, hook):
            value[:, 7] = grow(value[:, 7])

        edits = [(f"blocks.0.mixer.hook_{hook}", edit)]
        edited_ref = model.run_with_hooks(t.TOKENS, fwd_hooks=edits)
        with swapped_kernel(name, kernel):
            edited = model.run_with_hooks(t.TOKENS, fwd_hooks=edits)
    diff = max((out - ref).float().abs().max(), (edited - edited_ref).float().abs().max())
    state = max((a["mixer"]["state"] - b["mixer"]["state"]).float().abs().max().item()
                for a, b in zip(states.layers, ref_states.layers))
    carried = (second - ref[:, 20:]).float().abs().max()
    relative = (diff / ref.float().abs().max()).item()
    return (f"{kind} {str(dtype).replace('torch.', '')}: logits max|diff| with and without the decay edit "
            f"{diff:.2e} ({relative:.2e} of max|logit|), states {state:.2e}, continued segment {carried:.2e}"), relative


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", default="gdn,kda")
    p.add_argument("--dtypes", default="float32,float16")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("triton_interpreter_check: set TRITON_INTERPRET=1 (before triton is imported)", file=sys.stderr)
        return 2
    import importlib

    import torch

    torch.set_num_threads(1)
    try:
        kernels = {k: getattr(importlib.import_module(KERNELS[k][0]), KERNELS[k][1]) for k in args.mixers.split(",")}
    except ImportError as exc:
        print(f"triton_interpreter_check: needs triton and fla-core importable ({exc})", file=sys.stderr)
        return 2
    interpreter_patches()
    status = 0
    for kind, kernel in kernels.items():
        for dtype in args.dtypes.split(","):
            start = time.perf_counter()
            line, relative = check(kind, getattr(torch, dtype), kernel)
            met = relative <= BOUNDS[dtype]
            status |= not met
            print(line, f"[{time.perf_counter() - start:.0f} s]", "ok" if met else f"OVER {BOUNDS[dtype]}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
