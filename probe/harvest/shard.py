r"""One shard: run the model over its sequences and write one Parquet file, atomically.

A shard file is one Parquet table (one row group), one row per kept position (or per
sequence when pooled)::

    sequence  int64     index of the sequence in the corpus order
    position  int32     position in the sequence (-1 when pooled)
    token     int32     token id at the position (-1 when pooled)
    <label>   labels of the corpus, one column each (their own dtype)
    <key>     fixed_size_list<float16 | float32>[dim]: the feature "layer-site", e.g. "2-resid_post"

The file appears under its final name only when complete (temporary + fsync + rename,
:func:`probe.atomic.write_atomically`), so a present shard file is a whole shard.
The same shard computed twice, by any worker, holds the same bytes: its sequences are
batched identically and every reduction is seeded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probe.data.harvest_reader import ROW_COLUMNS, Plan, shard_name
from probe.errors import InputError
from probe.harvest.corpus import Windows


def write_shard(model, windows: Windows, plan: Plan, k: int, folder: Path, compression: str = "zstd") -> int:
    """Compute shard ``k`` and write it to ``folder``; returns the number of tokens it covered."""
    import pyarrow.parquet as pq

    from probe.atomic import write_atomically

    table = shard_table(model, windows, plan, k)
    write_atomically(Path(folder) / shard_name(k), lambda tmp: pq.write_table(table, tmp, compression=compression))
    idx = windows.shard(k, plan.shard_size)
    return int(windows.offsets[idx.stop] - windows.offsets[idx.start])


def shard_table(model, windows: Windows, plan: Plan, k: int):
    """The Parquet table of shard ``k`` (see the module docstring)."""
    import pyarrow as pa

    idx = windows.shard(k, plan.shard_size)
    parts: dict[str, list[np.ndarray]] = {}
    reducers = plan.reducers()
    for first in range(idx.start, idx.stop, plan.batch_size):
        batch = _batch_rows(model, windows, plan, range(first, min(first + plan.batch_size, idx.stop)), reducers)
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    columns = {}
    for name in [*ROW_COLUMNS, *windows.labels]:
        columns[name] = pa.array(_joined(parts.get(name), windows.labels.get(name), name))
    for key, f in plan.features.items():
        flat = _joined(parts.get(key), None, key, np.dtype(plan.dtype), f.dim)
        columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), f.dim)
    return pa.table(columns)


def _joined(parts, like, name, dtype=None, dim=None) -> np.ndarray:
    """Concatenated batches of one column (an empty column of the right dtype when nothing was kept)."""
    if parts:
        return np.concatenate(parts)
    if dim is not None:
        return np.zeros((0, dim), dtype=dtype)
    return np.zeros(0, dtype=like.dtype if like is not None else (np.int64 if name == "sequence" else np.int32))


def _batch_rows(model, windows: Windows, plan: Plan, seq_ids: range, reducers: dict) -> dict[str, np.ndarray]:
    """Rows of the sequences ``seq_ids``: ``{column: values}`` for the row, label and feature columns."""
    from probe.methods.support.labelled_sequences import Sequences, padded_batch, select_positions

    toks = [windows.sequence(i) for i in seq_ids]
    chosen = select_positions(Sequences(toks), plan.position_arg())
    keep = [j for j, c in enumerate(chosen) if len(c)]
    if not keep:
        return {}
    ids, _ = padded_batch(toks, device=model.device)
    bi = torch.cat([torch.full((len(chosen[j]),), j, dtype=torch.long) for j in keep])
    pi = torch.from_numpy(np.concatenate([chosen[j] for j in keep]))
    got = _read_hooks(model, ids, sorted({h for f in plan.features.values() for h in f.hooks}), bi, pi)
    out = {}
    for key, f in plan.features.items():
        x = reducers[key](torch.cat([got[h].flatten(1).float() for h in f.hooks], dim=1))
        if plan.pool == "mean":
            x = torch.zeros(len(toks), x.shape[1], dtype=x.dtype).index_add_(0, bi, x.cpu())[keep]
            x = x / torch.tensor([len(chosen[j]) for j in keep], dtype=x.dtype)[:, None]
        out[key] = _stored(x, f, plan.dtype)
    last = [seq_ids[j] for j in keep]
    if plan.pool == "mean":
        ends = np.array([windows.offsets[i] + chosen[j][-1] for i, j in zip(last, keep)])
        out["sequence"] = np.array(last, dtype=np.int64)
        out["position"] = np.full(len(keep), -1, np.int32)
        out["token"] = np.full(len(keep), -1, np.int32)
    else:
        ends = np.concatenate([windows.offsets[seq_ids[j]] + chosen[j] for j in keep])
        out["sequence"] = np.concatenate([np.full(len(chosen[j]), seq_ids[j], np.int64) for j in keep])
        out["position"] = pi.numpy().astype(np.int32)
        out["token"] = windows.tokens[ends].astype(np.int32)
    for name, values in windows.labels.items():
        out[name] = values[ends]
    return out


def _read_hooks(model, ids, names, bi, pi) -> dict:
    """Values of hooks ``names`` at rows ``(bi, pi)`` of one forward (only those rows are kept)."""
    got = {}

    def take(t, hook):
        got[hook.name] = t[bi.to(t.device), pi.to(t.device)].detach().cpu()

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, take) for n in names]):
        model(ids)
    return got


def _stored(x: torch.Tensor, f, dtype: str) -> np.ndarray:
    """``x`` as the storage dtype, refusing NaN / inf (from the model, or float16 overflow)."""
    with np.errstate(over="ignore"):
        values = x.numpy().astype(dtype)
    if not np.isfinite(values).all():
        what = "hold NaN or inf" if not bool(torch.isfinite(x).all()) else f"overflow {dtype}"
        raise InputError(f"Features of {f.site} at layer {f.layer} {what} (max |x| = {float(x.abs().max()):.3g}); "
                         "check the model's weights, or harvest with dtype='float32'.")
    return values
