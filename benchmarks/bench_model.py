"""Forward speed and memory of every architecture, with and without hooks.

For each registered mixer (layout ``[name] * n_layers``) and the hybrids, at each size,
sequence length and batch: tokens/s and peak memory of

* ``plain``: forward with no hooks;
* ``full_cache``: ``run_with_cache`` of every hook;
* ``state_cache``: ``run_with_cache`` of the ``hook_state*`` hooks only;
* ``state_edit``: one state edit at the middle position (recomputation included);

and generation tokens/s with the carried state versus recomputing the whole prefix for
every new token. Ratios (``cache / plain`` etc.) are computed within the same run.
"""
from __future__ import annotations

import torch

import probe
from probe.mixers import MIXERS

try:
    from benchmarks.common import interleaved, peak_memory, timeit
except ImportError:  # run as a script from benchmarks/
    from common import interleaved, peak_memory, timeit

SIZES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4),
    "small": dict(d_model=256, n_layers=4, n_heads=4),
    "100M": dict(d_model=768, n_layers=12, n_heads=12),
}
HYBRIDS = {"qrnn-hybrid": ["qrnn", "qrnn", "attn", "ff"]}


def layouts(n_layers: int) -> dict[str, list[str]]:
    out = {name: [name] * n_layers for name in sorted(MIXERS) if name != "ff"}
    for name, base in HYBRIDS.items():
        if all(m in MIXERS for m in base):
            out[name] = (base * n_layers)[:n_layers]
    return out


def build(layout: list[str], size: dict, device: str) -> probe.HookedLM:
    torch.manual_seed(0)
    n_ctx = 8192
    cfg = probe.ModelConfig(vocab_size=257, layout=layout, n_ctx=n_ctx,
                            **{k: v for k, v in size.items() if k != "n_layers"})
    return probe.HookedLM(cfg).to(device).eval()


def measure(model: probe.HookedLM, batch: int, T: int, device: str, repeats: int) -> dict:
    toks = torch.randint(0, 256, (batch, T), device=device)
    state_names = model.state_hook_names()
    mid = T // 2

    def edit(t, hook):
        t = t.clone()
        t[:, mid] = 0
        return t

    runs = {
        "plain": lambda: model(toks),
        "full_cache": lambda: model.run_with_cache(toks),
        "state_cache": lambda: model.run_with_cache(toks, names_filter=state_names) if state_names else model(toks),
        "state_edit": (lambda: model.run_with_hooks(toks, fwd_hooks=[(state_names[0], edit)])) if state_names else None,
    }
    runs = {name: fn for name, fn in runs.items() if fn is not None}
    row = {}
    with torch.no_grad():  # round-robin, so that a change of the machine's load hits every run alike
        for name, seconds in interleaved(runs, repeats).items():
            row[f"{name}_tok_s"] = batch * T / seconds
        for name, fn in runs.items():
            row[f"{name}_peak_mb"] = peak_memory(fn, device, collect=repeats > 1) / 2**20
    row["full_cache_over_plain"] = row["plain_tok_s"] / row["full_cache_tok_s"]
    row["state_cache_over_plain"] = row["plain_tok_s"] / row["state_cache_tok_s"]
    return row


def measure_generation(model: probe.HookedLM, device: str, prompt: int = 64, new: int = 32) -> dict:
    toks = torch.randint(0, 256, (1, prompt), device=device)

    def carried():
        model.generate(toks, max_new_tokens=new, return_type="tokens")

    def recompute():
        seq = toks
        with torch.no_grad():
            for _ in range(new):
                nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)

    repeats = 3 if new > 8 else 1
    t_carried = timeit(carried, repeats=repeats, warmup=1 if repeats > 1 else 0)
    t_recompute = timeit(recompute, repeats=repeats, warmup=1 if repeats > 1 else 0)
    return {"gen_carried_tok_s": new / t_carried, "gen_recompute_tok_s": new / t_recompute,
            "gen_speedup": t_recompute / t_carried}


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        plan = [("tiny", 1, 16)]
        repeats = 1
    else:
        # batch 1 at four lengths: the growth-with-length plot (benchmarks/scaling.png) is drawn from these
        plan = [("tiny", b, T) for b in (1, 8) for T in ((256, 1024, 2048, 4096) if b == 1 else (256, 1024, 4096))]
        plan += [("small", 1, T) for T in (256, 1024)]
        plan += [("100M", 1, 256)] + ([("100M", b, T) for b in (1, 8) for T in (1024, 4096)] if device == "cuda" else [])
        repeats = 3
    rows = []
    for size_name, batch, T in plan:
        size = SIZES[size_name]
        for arch, layout in layouts(size["n_layers"]).items():
            model = build(layout, size, device)
            row = {"bench": "model", "arch": arch, "size": size_name, "params": sum(p.numel() for p in model.parameters()),
                   "batch": batch, "T": T, "device": device}
            try:
                row.update(measure(model, batch, T, device, repeats))
                if batch == 1 and T == (16 if quick else 256):
                    row.update(measure_generation(model, device, prompt=16 if quick else 64, new=4 if quick else 32))
            except (RuntimeError, MemoryError) as exc:  # out of memory at the largest sizes
                row["error"] = str(exc).splitlines()[0][:200]
            rows.append(row)
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
