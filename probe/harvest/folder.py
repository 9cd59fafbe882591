r"""A harvest folder: the plan first, shards as they finish, the manifest last.

::

    <out>/spec.json                    the harvest's identity: model (name, layout, weight
                                       fingerprint), corpus (name, size, digest), plan; written first
    <out>/shards/shard-00000.parquet   one per shard, each written atomically (see probe.harvest.shard)
    <out>/manifest.json                written last, atomically: the spec plus every shard's rows,
                                       sequences and bytes, totals and bytes per token of each feature

A folder with ``manifest.json`` is a complete harvest. Without it, a harvest with the same spec
resumes: shard files present are whole (they appear only by rename) and are kept; the others
(and any temporary a killed writer left) are redone. A folder holding another spec is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from probe.atomic import write_atomically
from probe.data.harvest_reader import FORMAT, MANIFEST, ROW_COLUMNS, SHARDS, SPEC, read_manifest, shard_name  # noqa: F401
from probe.errors import ConfigError


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def prepare(out: Path, spec: dict, overwrite: bool = False) -> list[int]:
    """Create or reopen ``out`` for ``spec``; returns the shard indices already complete."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Harvest output {str(out)!r} is a file; give a folder.")
    old = out / SPEC
    if old.is_file() and not overwrite:
        previous = json.loads(old.read_text())
        if previous != spec:
            changed = sorted(k for k in set(spec) | set(previous) if spec.get(k) != previous.get(k))
            raise ConfigError(f"{str(out)!r} holds another harvest (its {', '.join(changed)} differ); use another "
                              "folder, or overwrite=True (--overwrite) to start over.")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{str(out)!r} is not empty and holds no harvest; give an empty or new folder.")
    if overwrite:
        for f in list((out / SHARDS).glob("*")) + [out / MANIFEST, old]:
            if f.is_file():
                f.unlink()
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    for tmp in (out / SHARDS).glob(".shard-*"):  # a killed writer's temporary
        tmp.unlink()
    if not old.is_file():
        _write_json(old, spec)
    n = spec["corpus"]["shards"]
    return [k for k in range(n) if _whole(out / SHARDS / shard_name(k))]


def _whole(path: Path) -> bool:
    """A shard file that exists and whose Parquet footer reads (a rename only ever exposes whole files;
    this also catches a file damaged afterwards, which is then redone)."""
    if not path.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
        return True
    except (OSError, ValueError):
        path.unlink()
        return False


def finish(out: Path, spec: dict, seconds: float) -> dict:
    """Write ``manifest.json`` from the shard files (all must be present) and return it."""
    import pyarrow.parquet as pq

    out = Path(out)
    size = spec["plan"]["shard_size"]
    n_seq = spec["corpus"]["sequences"]
    shards, col_bytes, n_rows = [], {}, 0
    for k in range(spec["corpus"]["shards"]):
        path = out / SHARDS / shard_name(k)
        meta = pq.read_metadata(path)
        rows = meta.num_rows
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".")[0]
                col_bytes[name] = col_bytes.get(name, 0) + col.total_compressed_size
        shards.append({"file": f"{SHARDS}/{path.name}", "rows": rows, "row_start": n_rows,
                       "sequences": [k * size, min((k + 1) * size, n_seq)], "bytes": os.path.getsize(path)})
        n_rows += rows
    tokens = spec["corpus"]["tokens"]
    manifest = {**spec, "n_rows": n_rows, "shards": shards, "seconds": seconds,
                "bytes": sum(s["bytes"] for s in shards),
                "bytes_per_token": {k: v / tokens for k, v in col_bytes.items()},
                "row_columns": list(ROW_COLUMNS)}
    _write_json(out / MANIFEST, manifest)
    return manifest
