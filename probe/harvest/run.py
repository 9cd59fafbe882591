r"""``harvest(model, corpus, out, ...)``: activations and states of a corpus, sharded to Parquet.

Run locally (shards one after another in this process) or on Ray (``ray=True``: one model replica
per worker, see :mod:`probe.harvest.on_ray`); both write the same files. A progress bar
counts tokens (tokens/s); an interrupted harvest resumes where it stopped when run again with
the same arguments (see :mod:`probe.harvest.folder`).

Why Parquet (not Zarr): a shard is a table whose rows are positions, with ragged-free
metadata columns (sequence, position, token, labels) beside the features, and Parquet keeps
them in one self-describing file with per-column compression and column projection (a
consumer reads one feature of one shard without touching the others). Ray Data, pandas and
Spark read it natively (``ray.data.read_parquet(out + "/shards")``). Zarr would need a second
store for the row table and a consolidation step for its metadata.

Example::

    from probe.harvest import harvest
    h = harvest(model, "stdlib:val", "acts/", sites=["resid_post", "state"], max_dim=256)
    fit_probes("acts/", "in_string")            # streams the shards
"""
from __future__ import annotations

import time
from pathlib import Path

from probe.data.harvest_reader import Harvest
from probe.harvest import folder
from probe.harvest.corpus import Windows, load_corpus
from probe.harvest.plan import Plan, make_plan
from probe.harvest.shard import write_shard
from probe.methods.probing import DEFAULT_PROBE_SITES
from probe.methods.support.fingerprint import model_identity

DEFAULT_SITES = DEFAULT_PROBE_SITES


def harvest(model, corpus, out, *, sites=DEFAULT_SITES, layers=None, positions=None, pool=None, max_dim=None,
            dtype="float16", seq_len=256, batch_size=16, shard_size=64, max_tokens=None, text_field="text",
            prepend_bos=None, seed=0, compression="zstd", ray=False, workers=1, address=None, num_gpus=0,
            overwrite=False, progress=True):
    """Harvest ``sites`` x ``layers`` of ``model`` over ``corpus`` into folder ``out``; returns the
    opened :class:`probe.data.harvest_reader.Harvest`.

    Args:
        model: a HookedLM (or the TransformerLens adapter, local runs only).
        corpus: ``"stdlib[:split]"``, a text file or folder, a saved dataset folder, or texts /
            token ids / ``(tokens, labels)`` pairs (:mod:`probe.harvest.corpus`).
        sites, layers: what to store (sites as in :mod:`probe.methods.support.site_hooks`; layers default all).
        positions, pool, max_dim, dtype: see :mod:`probe.harvest.plan`.
        seq_len: window length of streams; shard_size: sequences per shard; batch_size: per forward.
        ray: run on Ray with ``workers`` replicas (``address``: an existing cluster, else a local
            one started here); num_gpus: GPUs per replica.
        overwrite: start over in a folder holding another harvest.
    """
    from probe.methods.support import input_checks as inputs

    model = inputs.as_model(model)
    start = time.perf_counter()
    windows = load_corpus(model, corpus, seq_len=seq_len, max_tokens=max_tokens, text_field=text_field,
                          prepend_bos=prepend_bos)
    plan = make_plan(model, list(sites) if not isinstance(sites, str) else [sites], layers, positions=positions,
                     pool=pool, max_dim=max_dim, dtype=dtype, seq_len=seq_len, batch_size=batch_size,
                     shard_size=shard_size, seed=seed)
    spec = make_spec(model, windows, plan, compression)
    out = Path(out)
    done = folder.prepare(out, spec, overwrite)
    todo = [k for k in range(spec["corpus"]["shards"]) if k not in done]
    bar = _progress(windows, plan, done, progress)
    try:
        if ray and todo:
            from probe.harvest.on_ray import run_on_ray

            run_on_ray(model, windows, plan, out / folder.SHARDS, todo, workers, address, num_gpus, compression, bar)
        else:
            for k in todo:
                bar.update(write_shard(model, windows, plan, k, out / folder.SHARDS, compression))
    finally:
        bar.close()
    folder.finish(out, spec, time.perf_counter() - start)
    return Harvest(out)


def make_spec(model, windows: Windows, plan: Plan, compression: str) -> dict:
    """The harvest's identity, compared on resume (``spec.json``)."""
    return {"format": folder.FORMAT, "version": 1,
            "model": {"name": model.cfg.name, "layout": list(model.cfg.layout), "d_model": model.cfg.d_model,
                      "fingerprint": model_identity(model)},
            "corpus": {"name": windows.name, "sequences": len(windows), "tokens": windows.n_tokens,
                       "digest": windows.digest(), "shards": windows.n_shards(plan.shard_size),
                       "labels": {k: str(v.dtype) for k, v in windows.labels.items()}},
            "plan": plan.to_dict(), "compression": compression}


def _progress(windows: Windows, plan: Plan, done: list[int], enabled: bool):
    """A tqdm bar over tokens (its rate is tokens/s), starting at the tokens of the shards already done."""
    from tqdm.auto import tqdm

    size = plan.shard_size
    initial = sum(int(windows.offsets[r.stop] - windows.offsets[r.start])
                  for r in (windows.shard(k, size) for k in done))
    return tqdm(total=windows.n_tokens, initial=initial, unit="tok", unit_scale=True, desc="harvest",
                disable=not enabled, smoothing=0.1)
