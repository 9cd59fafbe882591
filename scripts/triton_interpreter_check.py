r"""The libraries' real Triton kernels behind probe's fused seam, run on the CPU in Triton's
interpreter: checks the call mappings of :mod:`probe.ops.fused` (layout, grouped heads, gates, padding,
initial and final states) against the kernels themselves rather than their references.

The kernels (:data:`MIXERS`): flash-linear-attention's ``chunk_gated_delta_rule`` (gdn), ``chunk_kda``
(kda), ``chunk_gla`` (hgrn2), ``chunk_hgrn`` (rglru, qrnn), ``chunk_rwkv7`` (rwkv7) and
``fused_recurrent_rwkv4`` (rwkv); mamba-ssm's ``mamba_chunk_scan_combined`` (mamba2); mlstm_kernels'
chunkwise ``mlstm_chunkwise__xl_chunk`` (mlstm). The sLSTM's kernel is xlstm's compiled CUDA cell, not
Triton: the interpreter cannot run it.

Needs ``triton`` importable with the kernels' library (none is a dependency: ``pip install triton``
into a scratch environment or ``--target`` folder on ``PYTHONPATH``); for ``mamba2``, a mamba-ssm source
checkout on ``PYTHONPATH`` with its ``mamba_ssm/__init__.py`` emptied (it imports the CUDA extension);
for ``mlstm``, Triton 3.8 or older: its kernel builds block pointers (``tl.make_block_ptr``), which
Triton 3.9 removed (it raises ``NotImplementedError``; torch 2.13's CUDA wheel pins Triton 3.7.1).

The kernels' ``torch.cuda.device(x.device.index)`` contexts become no-ops on CPU tensors. The
interpreter cannot time autotuning configs (it has no GPU driver), so each kernel runs its first
config. It leaves ``range()`` loop variables Python ints, which fla's kernels call ``.to()`` on, so
fla's modules get a ``range`` yielding Triton scalars; it patches ``tl.gather`` only while a kernel
runs, so fla's alias of it (``fla.ops.utils.op.gather``) looks it up at the call; and a mask combined
with a 64-bit program index (``chunk_hgrn``'s) reaches its loads as 64-bit integers, which it rejects,
so masks are cast to booleans. Its bfloat16 arithmetic is wrong (numpy has no bfloat16: fla's own
kernel called directly returns values near 1e10 there), so half precision is checked in float16.

Per mixer, a tiny 2-layer model (d_model 32; heads of 16 wherever the kernel takes matrix products,
the narrowest ``tl.dot`` takes) through the kernel (the registry's ``swapped_kernel``, so it runs on CPU
tensors) against the PyTorch path: the logits and every carried state, a second segment continuing the
first's state, and an edit of layer 0 giving one position a decay above 1 (:data:`GROW`; the dispatch
must either hand it to the kernel correctly, as RG-LRU's and QRNN's do, or run the PyTorch form, as
Mamba-2's does for an edited ``dt`` and RWKV's, RWKV-7's and the mLSTM's for their edited decays).
Exit status 1 when any of these logits differ by more than :data:`BOUNDS` of the largest logit. The
carried states' differences (relative to each state's largest entry) are reported, not bounded: the
continued segment checks that they carry on right, and RWKV's stabiliser ``state_max`` is free up to
rounding (the kernel accumulates it step by step, probe takes a max-scan: 1.3e-5 of it apart after 150
positions, with ``num``, ``den`` rescaled to either stabiliser equal within 6e-6).

Usage: TRITON_INTERPRET=1 python scripts/triton_interpreter_check.py
       [--mixers gdn,kda,hgrn2,mamba2,rglru,qrnn,rwkv7,rwkv,mlstm] [--dtypes float32,float16] [--length 40]
"""
from __future__ import annotations

import argparse
import builtins
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

_HEADS = {"n_k_heads": 2, "n_v_heads": 4, "d_k": 16, "d_v": 16, "chunk": 8}  # grouped value heads of 16
#: per mixer: the registry's name of its kernel and the test model's mixer options
MIXERS = {"gdn": ("chunk_gated_delta_rule", _HEADS), "kda": ("chunk_kda", _HEADS),
          "hgrn2": ("chunk_gla", {"expand_ratio": 8}),
          "mamba2": ("ssd_combined", {"d_state": 8, "head_dim": 16, "n_groups": 2, "chunk": 16}),
          "rglru": ("chunk_hgrn", {}), "qrnn": ("chunk_hgrn", {"window": 3}),
          "rwkv7": ("chunk_rwkv7", {"d_head": 16}), "rwkv": ("fused_recurrent_rwkv4", {}),
          "mlstm": ("mlstm_chunkwise", {"heads": 1})}  # one head: K = 16, V = 32
#: per mixer: the hook whose edit at position 7 gives a decay above 1 (a log-decay above 0), and the edit
GROW = {"gdn": ("log_decay", lambda v: v.abs() + 0.3), "kda": ("log_decay", lambda v: v.abs() + 0.3),
        "hgrn2": ("forget", lambda v: v.abs() + 1.3), "mamba2": ("dt", lambda v: -v),
        "rglru": ("decay", lambda v: v.abs() + 1.3), "qrnn": ("forget", lambda v: v.abs() + 1.3),
        "rwkv7": ("log_decay", lambda v: v.abs() + 0.3), "rwkv": ("decay", lambda v: v.abs() + 1.3),
        "mlstm": ("forget", lambda v: v.abs() + 0.3)}
#: max |logit difference| / max |logit| allowed per dtype (measured over the nine mixers at 40 positions:
#: float32 4.0e-6, float16 4.9e-3, both gdn's edit; the mLSTM at 150 positions: float16 5.9e-3, as far from
#: the float64 model as the PyTorch path's)
BOUNDS = {"float32": 1e-5, "float16": 2e-2}


def interpreter_patches() -> None:
    """Autotuning picks the first config untimed; fla's loops get Triton scalars and its ``gather`` the
    interpreter's; masks are boolean; no CUDA device contexts (module docstring)."""
    import contextlib

    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import autotuner
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [float(self.configs.index(config))] * 3
    torch.cuda.device = lambda *args, **kwargs: contextlib.nullcontext()
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store

    def as_bool(mask):  # a TensorHandle, or (a block pointer's bounds, Triton < 3.9) a numpy array
        return TensorHandle(mask.data.astype(bool), tl.int1) if isinstance(mask, TensorHandle) else mask.astype(bool)

    InterpreterBuilder.create_masked_load = lambda self, ptrs, mask, *rest: load(self, ptrs, as_bool(mask), *rest)
    InterpreterBuilder.create_masked_store = lambda self, ptrs, value, mask, *rest: store(self, ptrs, value,
                                                                                          as_bool(mask), *rest)

    def scalar_range(*args):
        ints = [int(a.handle.data.item()) if hasattr(a, "handle") else int(a) for a in args]
        for i in builtins.range(*ints):
            yield tl.core.tensor(TensorHandle(np.array(i, dtype=np.int32), tl.int32), tl.int32)

    for name, module in list(sys.modules.items()):
        if name.startswith("fla.") and "naive" not in name and module is not None:
            module.range = scalar_range
            if getattr(module, "gather", None) is tl.gather:  # the interpreter patches tl.gather, not aliases
                module.gather = lambda *args, **kwargs: tl.gather(*args, **kwargs)


def model(kind: str, dtype):
    """The test model of ``kind``: vocabulary 50, d_model 32, two ``kind`` layers, weights randomised by 0.2."""
    import torch

    import probe
    from conftest import randomise

    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=50, d_model=32, layout=[kind, kind], d_mlp=64,
                            mixer_options={kind: MIXERS[kind][1]})
    return randomise(probe.HookedLM(cfg).eval(), 0.2).to(dtype)


def _max_diff(a, b) -> float:
    """max |a - b| in float32, equal entries (infinities included) counting 0."""
    a, b = a.float(), b.float()
    return (a - b).masked_fill(a == b, 0.0).abs().max().item()


def state_differences(states, ref_states) -> tuple[float, str]:
    """The largest ``max |diff| / max |entry|`` over every layer's carried mixer states, and its name."""
    worst, name = 0.0, ""
    for layer, (mine, theirs) in enumerate(zip(states.layers, ref_states.layers)):
        for key, value in theirs["mixer"].items():
            scale = value.float().masked_fill(~value.float().isfinite(), 0.0).abs().max().item() or 1.0
            relative = _max_diff(mine["mixer"][key], value) / scale
            if relative >= worst:
                worst, name = relative, f"layer {layer} {key}"
    return worst, name


def check(kind: str, dtype, kernel, length: int = 40) -> tuple[str, float]:
    """One mixer in one dtype, on 2 sequences of ``length`` tokens (the second segment from the middle
    on): the report line and the largest logit difference relative to the largest logit."""
    import torch

    from probe.ops.fused import swapped_kernel

    lm = model(kind, dtype)
    calls = []
    counted = lambda *args, **kwargs: (calls.append(1), kernel(*args, **kwargs))[1]  # noqa: E731
    tokens = torch.randint(0, 50, (2, length), generator=torch.Generator().manual_seed(1))
    split = length // 2
    hook, grow = GROW[kind]

    def edit(value, hook):
        value[:, 7] = grow(value[:, 7])

    edits = [(f"blocks.0.mixer.hook_{hook}", edit)]
    with torch.no_grad():
        ref, ref_states = lm(tokens, return_states=True)
        edited_ref = lm.run_with_hooks(tokens, fwd_hooks=edits)
        with swapped_kernel(MIXERS[kind][0], counted):
            out, states = lm(tokens, return_states=True)
            _, first = lm(tokens[:, :split], return_states=True)
            second = lm(tokens[:, split:], states=first)
            edited = lm.run_with_hooks(tokens, fwd_hooks=edits)
    scale = ref.float().abs().max().item()
    logits = {"logits": _max_diff(out, ref), "continued segment": _max_diff(second, ref[:, split:]),
              "edited": _max_diff(edited, edited_ref)}
    state, state_name = state_differences(states, ref_states)
    line = (f"{kind} {str(dtype).replace('torch.', '')}: max|diff| / max|logit| ({scale:.2f}): "
            + ", ".join(f"{k} {v / scale:.2e}" for k, v in logits.items())
            + f" (the edit moves the logits by {_max_diff(edited_ref, ref) / scale:.2e}); "
            f"states max|diff| / max|entry| {state:.2e} ({state_name}); {len(calls)} kernel calls")
    return line, max(logits.values()) / scale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", default="gdn,kda")
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--length", type=int, default=40, help="tokens per sequence (more than a kernel's chunk: "
                   "chunk_hgrn's and the mLSTM's are 128)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("triton_interpreter_check: set TRITON_INTERPRET=1 (before triton is imported)", file=sys.stderr)
        return 2
    import importlib

    import torch

    from probe.ops.fused.registry import KERNELS

    torch.set_num_threads(1)
    kinds = args.mixers.split(",")
    unknown = [k for k in kinds if k not in MIXERS]
    if unknown:
        print(f"triton_interpreter_check: no Triton kernel for {', '.join(unknown)}; known: {', '.join(MIXERS)} "
              "(slstm's is a CUDA cell)", file=sys.stderr)
        return 2
    try:
        kernels = {k: getattr(importlib.import_module(KERNELS[MIXERS[k][0]].module), KERNELS[MIXERS[k][0]].attribute)
                   for k in kinds}
    except ImportError as exc:
        print(f"triton_interpreter_check: needs triton and the kernels' libraries importable ({exc})", file=sys.stderr)
        return 2
    interpreter_patches()
    status = 0
    for kind, kernel in kernels.items():
        for dtype in args.dtypes.split(","):
            start = time.perf_counter()
            try:
                line, worst = check(kind, getattr(torch, dtype), kernel, args.length)
            except Exception as exc:  # the interpreter's limits (see the module docstring), or a mapping's error
                status = 1
                print(f"{kind} {dtype}: FAILED ({type(exc).__name__}: {exc})", flush=True)
                continue
            met = worst <= BOUNDS[dtype]
            status |= not met
            print(line, f"[{time.perf_counter() - start:.0f} s]", "ok" if met else f"OVER {BOUNDS[dtype]}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
