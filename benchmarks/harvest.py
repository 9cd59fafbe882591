"""Harvest at scale on this machine: throughput, bytes per token, Ray workers, fit_probes memory.

Measures (``python -m benchmarks.harvest``, about a minute on 2 cores; ``--tokens`` scales it):

* local harvest throughput (tokens/s) of the zoo QRNN hybrid (or a random model of its shape
  when the zoo is absent) over the stdlib validation corpus, and the bytes per token each
  stored column takes on disk (Parquet, zstd, float16);
* the same harvest on a local Ray cluster with 1 and 2 workers (one model replica each),
  wall time including the workers' start (the cluster itself is started once, before timing);
* peak memory of ``fit_probes(folder)`` on a harvest whose features are 10x the bound
  (tracemalloc + pyarrow's pool, in a fresh process, after imports).

Prints a JSON report and writes it to ``benchmarks/results/harvest.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MEASURE = """
import json, sys, tracemalloc
import pandas, pyarrow as pa, pyarrow.parquet, sklearn.linear_model, torch
torch.set_num_threads(1)
import probe.harvest
from probe.methods import fit_probes
tracemalloc.start()
t = __import__("time").perf_counter()
res = fit_probes(sys.argv[1], "even", max_train=1000, max_test=500, control=False)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory(),
                  "seconds": __import__("time").perf_counter() - t}))
"""


def bench_model():
    import probe

    if "qrnn-hybrid" in probe.zoo_names():
        return probe.load("zoo:qrnn-hybrid").eval()
    torch.manual_seed(0)
    return probe.HookedLM(probe.ModelConfig(d_model=128, layout=["qrnn", "qrnn", "attn", "ff"])).eval()


def timed_harvest(model, corpus, out, **kw) -> tuple[float, object]:
    from probe.harvest import harvest

    start = time.perf_counter()
    h = harvest(model, corpus, out, progress=False, **kw)
    return time.perf_counter() - start, h


def throughput(model, tokens: int, work: Path) -> dict:
    """Local harvest of every layer's resid_post, mixer_out and state; bytes per token per column."""
    from probe.harvest.corpus import load_corpus

    windows = load_corpus(model, "stdlib:val", seq_len=256, max_tokens=tokens)
    seqs = [windows.sequence(i) for i in range(len(windows))]
    data = list(zip(seqs, ({k: windows.label(k, i) for k in windows.labels} for i in range(len(windows)))))
    options = dict(sites=["resid_post", "mixer_out", "state"], shard_size=16, seq_len=256)
    seconds, h = timed_harvest(model, data, work / "local", **options)
    n = h.manifest["corpus"]["tokens"]
    return {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds,
            "bytes_per_token": {k: round(v, 1) for k, v in h.manifest["bytes_per_token"].items()},
            "bytes_per_token_total": h.manifest["bytes"] / n, "model": model.cfg.name or "random",
            "layout": list(model.cfg.layout), "d_model": model.cfg.d_model}, data, options


def on_ray(model, data, options, work: Path, workers_list=(1, 2)) -> list[dict]:
    try:
        import ray
    except ImportError:
        return [{"skipped": "ray is not installed (pip install 'probe[dist]')"}]
    ray.init(num_cpus=max(workers_list), include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        for workers in workers_list:
            seconds, h = timed_harvest(model, data, work / f"ray{workers}", ray=True, workers=workers, **options)
            n = h.manifest["corpus"]["tokens"]
            same = all((h.path / s["file"]).read_bytes() == (work / "local" / s["file"]).read_bytes()
                       for s in h.shards)
            rows.append({"workers": workers, "seconds": seconds, "tokens_per_s": n / seconds,
                         "identical_to_local": same})
    finally:
        ray.shutdown()
    return rows


def fit_memory(work: Path, bound: int = 8 * 2**20) -> dict:
    """fit_probes on a harvest with 10x ``bound`` bytes of features: peak memory in a fresh process."""
    import probe

    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(d_model=96, layout=["qrnn", "qrnn"])).eval()
    rng = np.random.default_rng(1)
    data = []
    for _ in range(150):
        t = rng.integers(0, 256, size=256)
        data.append((t, {"even": np.concatenate([[0], (t[:-1] % 2 == 0)]).astype(np.int64)}))
    _, h = timed_harvest(model, data, work / "fit", sites=["resid_pre", "resid_post", "mixer_out"],
                         dtype="float32", shard_size=4, batch_size=8)
    feature_bytes = sum(len(h) * f.dim * 4 for f in h.features.values())
    out = subprocess.run([sys.executable, "-c", MEASURE, str(h.path)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"bound_mib": bound / 2**20, "harvest_feature_mib": feature_bytes / 2**20,
            "ratio": feature_bytes / bound, "peak_mib": got["peak"] / 2**20, "fit_seconds": got["seconds"],
            "largest_shard_column_mib": max(h.shard_bytes(k) for k in h.features) / 2**20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="corpus tokens per harvest (default 20,000)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "harvest.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="probe-bench-harvest-"))
    try:
        model = bench_model()
        local, data, options = throughput(model, args.tokens, work)
        report = {"local": local, "ray": [] if args.no_ray else on_ray(model, data, options, work),
                  "fit_probes_memory": fit_memory(work), "torch_threads": 1}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
