"""Scan forms of the linear-recurrence mixers, and Mamba against transformers' slow path.

1. ``scan`` rows: one mixer layer (batch 1, d_model 256) at 1024 and 4096 tokens, each of
   its forms in the same run (``speedup_vs_sequential`` = sequential time / this form's time):

   * ``lmu``   FFT convolution of the impulse response, the Toeplitz form (1024 only) and the
               recurrence (order 16, theta 256, d_u 64);
   * ``hgrn2`` chunked gated linear attention vs the step-by-step recurrence (4 heads of 64);
               also every state materialised (what a ``hook_state`` costs);
   * ``mamba`` the blocked selective scan with chunked vs sequential scans inside the blocks
               (d_inner 512, d_state 16; ``auto`` is what runs: on CPU it picks the sequential
               scan inside blocks once a step's state has 8192 numbers, as here).
   * ``mlstm (scan only)`` the mLSTM memory as the mixer runs it (gated linear attention with a
               scalar decay per head and a ones column carrying the normaliser: 4 heads, key
               width 32, value width 64 + 1): :func:`probe.ops.gla.gla_chunked` (chunk 64, the
               mixer's default) vs :func:`~probe.ops.gla.gla_sequential`, and every state
               (:func:`~probe.ops.gla.gla_states`, what a ``hook_state`` costs). The mixer has no
               form switch, so the scan functions are timed on inputs of the mixer's shapes; its
               projections are the same in every form.

2. ``mamba_vs_hf`` rows: a 4-layer Mamba (d_model 256, d_state 16, vocab 1000) at 1024 tokens,
   the same weights in transformers' ``MambaForCausalLM`` (its CPU slow path: a Python loop
   over positions over fully materialised ``exp(dt A)`` and ``dt B x``) and in probe: plain
   forward, every ``hook_state*`` captured, and the state captured at one position. Peak
   memory is the resident-set increase during one call (after returning freed memory to the
   OS), so it includes the returned logits and cache.

Every row runs with ``THREADS`` (1) intra-op threads, the same for probe and transformers.
Times are the minimum over repeats, with the compared callables timed round-robin so that
load from other processes falls on all of them alike (see :func:`compare`).

``run(quick=True)`` uses short inputs so the suite finishes in seconds.
"""
from __future__ import annotations

import time

import torch

import probe

try:
    from benchmarks.common import hf_logits, peak_memory
except ImportError:  # run as a script from benchmarks/
    from common import hf_logits, peak_memory

D_MODEL = 256
#: mixer -> (options, its forms; the last one is the sequential reference)
SCAN_MIXERS = {
    "lmu": ({"order": 16, "theta": 256.0, "d_u": 64}, ("fft", "direct", "recurrent")),
    "hgrn2": ({"expand_ratio": 64}, ("chunked", "sequential")),
    "mamba": ({"d_state": 16, "expand": 2}, ("auto", "chunked", "sequential")),
}


def compare(fns: dict, repeats: int = 5) -> dict:
    """Best (minimum) wall time of each callable over ``repeats`` rounds, after one warm-up.

    The callables are timed round-robin (A, B, C, A, B, C, ...) so that load from other
    processes on a shared machine falls on all of them alike, and the minimum is the least
    disturbed estimate of each one's own cost."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _peak_mb(fn) -> float:
    return round(peak_memory(fn) / 2**20, 1)  # peak_memory returns freed memory to the OS first


def _mixer(name: str, options: dict):
    cfg = probe.ModelConfig(d_model=D_MODEL, n_heads=4, layout=[name], mixer_options={name: options})
    return probe.HookedLM(cfg).blocks[0].mixer.eval()


def _with_method(mixer, method: str, x, state_hook: bool = False):
    """A call of ``mixer`` on ``x`` in form ``method`` (optionally with a no-op hook_state hook,
    which makes the mixer build every state)."""
    def call():
        mixer.method = method
        if state_hook:
            mixer.hook_state.add_hook(lambda t, hook: None)
        try:
            return mixer(x)[0]
        finally:
            if state_hook:
                mixer.hook_state.remove_hooks()
    return call


def scan_rows(quick: bool) -> list[dict]:
    rows = []
    lengths = (128,) if quick else (1024, 4096)
    repeats = 1 if quick else 5
    for name, (options, forms) in SCAN_MIXERS.items():
        mixer = _mixer(name, options)
        for T in lengths:
            x = torch.randn(1, T, D_MODEL, generator=torch.Generator().manual_seed(T))
            calls = {}
            for form in forms:
                if name == "lmu" and form == "direct" and T > 1024:
                    continue  # the Toeplitz form runs in chunks of at most 256 positions: slow, not memory-bound, at this length
                calls[form] = _with_method(mixer, "auto" if (name == "hgrn2" and form == "chunked") else form, x)
            if name == "hgrn2":  # the cost of materialising every state (a hook_state is on)
                calls["every state (hook_state on)"] = _with_method(mixer, "auto", x, state_hook=True)
            with torch.no_grad():
                reference = calls[forms[-1]]()
                seconds = compare(calls, repeats)
                for form, fn in calls.items():
                    rows.append({"suite": "scan", "mixer": name, "T": T, "form": form, "seconds": seconds[form],
                                 "max_abs_diff": float((fn() - reference).abs().max())})
                if name == "lmu":  # the memory alone, without the layer's projections
                    u = torch.randn(1, T, options["d_u"], generator=torch.Generator().manual_seed(0))
                    mem = {form: (lambda form=form: mixer.memory.states(u, None, form)) for form in ("fft", "recurrent")}
                    seconds = compare(mem, repeats)
                    for form, fn in mem.items():
                        rows.append({"suite": "scan", "mixer": "lmu (memory only)", "T": T, "form": form,
                                     "seconds": seconds[form],
                                     "max_abs_diff": float((fn() - mixer.memory.recurrent(u)).abs().max())})
    for row in rows:  # speedup against the sequential form of the same mixer and length
        ref = next(r for r in rows if r["mixer"] == row["mixer"] and r["T"] == row["T"]
                   and r["form"] in ("recurrent", "sequential"))
        row["speedup_vs_sequential"] = ref["seconds"] / row["seconds"]
    return rows


def _mlstm_inputs(T: int):
    """q, k, v (with the ones column), log-decay ``[1, T, 4, 1]`` and h0 shaped as the mLSTM mixer's."""
    g = torch.Generator().manual_seed(T)
    H, K, V = 4, 32, 64
    q, k = torch.randn(1, T, H, K, generator=g), torch.randn(1, T, H, K, generator=g) * 0.1
    v = torch.cat([torch.randn(1, T, H, V, generator=g), torch.ones(1, T, H, 1)], dim=-1)
    log_decay = torch.nn.functional.logsigmoid(torch.randn(1, T, H, 1, generator=g) + 4.0)
    return q, k, v, log_decay, torch.zeros(1, H, K, V + 1)


def mlstm_rows(quick: bool) -> list[dict]:
    from probe.ops.gla import gla_chunked, gla_readout, gla_sequential, gla_states

    rows = []
    for T in (128,) if quick else (1024, 4096):
        q, k, v, g, h0 = _mlstm_inputs(T)
        scale = q.shape[-1] ** -0.5
        calls = {
            "chunked": lambda: gla_chunked(q, k, v, g, h0, scale, 64)[0],
            "every state (hook_state on)": lambda: gla_readout(q, gla_states(k, v, g.exp(), h0), scale),
            "sequential": lambda: gla_sequential(q, k, v, g, h0, scale)[0],
        }
        with torch.no_grad():
            reference = calls["sequential"]()
            seconds = compare(calls, 1 if quick else 5)
            for form, fn in calls.items():
                rows.append({"suite": "scan", "mixer": "mlstm (scan only)", "T": T, "form": form,
                             "seconds": seconds[form], "max_abs_diff": float((fn() - reference).abs().max()),
                             "speedup_vs_sequential": seconds["sequential"] / seconds[form]})
    return rows


def _hf_mamba(n_layers: int):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(vocab_size=1000, hidden_size=D_MODEL, state_size=16,
                                        num_hidden_layers=n_layers, expand=2)).eval()


def mamba_rows(quick: bool) -> list[dict]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return [{"suite": "mamba_vs_hf", "skipped": "transformers is not installed"}]
    from probe.io.convert_mamba import mamba_from_hf

    n_layers, T = (2, 128) if quick else (4, 1024)
    repeats = 1 if quick else 3
    hf = _hf_mamba(n_layers)
    model = mamba_from_hf(hf)
    toks = torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(0))
    states = model.state_hook_names()

    cases = {
        "transformers slow path": lambda: hf_logits(hf, toks),
        "probe forward": lambda: model(toks),
        "probe + every hook_state*": lambda: model.run_with_cache(toks, names_filter=states),
        "probe + states at last position": lambda: model.run_with_cache(toks, names_filter=states,
                                                                        state_positions=[T - 1]),
    }
    rows = []
    with torch.no_grad():
        diff = float((hf_logits(hf, toks) - model(toks)).abs().max())
        seconds = compare(cases, repeats)
        for case, fn in cases.items():
            row = {"suite": "mamba_vs_hf", "case": case, "layers": n_layers, "T": T, "seconds": seconds[case],
                   "peak_mb": _peak_mb(fn)}
            if case.startswith("probe +"):
                row["cache_mb"] = round(fn()[1].nbytes() / 2**20, 1)
            rows.append(row)
    base = rows[0]
    for row in rows:
        row["time_vs_hf"] = row["seconds"] / base["seconds"]
        row["memory_vs_hf"] = row["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        row["logits_max_abs_diff"] = diff
    return rows


#: intra-op threads for this suite: on a small shared machine two threads per op thrash with
#: other processes (many small ops then take 5x longer, at random); one thread is stable
THREADS = 1


def run(quick: bool = False) -> list[dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows = scan_rows(quick) + mlstm_rows(quick) + mamba_rows(quick)
    finally:
        torch.set_num_threads(before)
    for row in rows:
        row["threads"] = THREADS
    return rows


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for r in run(quick=args.quick):
        print(json.dumps(r), flush=True)
