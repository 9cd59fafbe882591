r"""A harvest folder's format and its lazy reader: one shard's column at a time.

The folder (written by :mod:`probe.harvest`: ``spec.json`` first, ``shards/shard-NNNNN.parquet`` as
they finish, ``manifest.json`` last) and the :class:`Plan` it records are plain data, so the
methods that stream a harvest read it from here, below them.

:class:`Harvest` opens a complete harvest folder (its ``manifest.json``). Nothing is read until
asked for, and then one (shard, column) at a time, so memory never holds more than:

* **a feature column of one shard**: ``shard_rows x dim x itemsize`` (``Harvest.shard_bytes(key)``;
  64 sequences of 256 tokens at dim 512 in float16: 16 MiB), plus
* what the consumer keeps: a row sample (probes), running sums (steering), a batch (tuned lens), plus
* the small per-row columns when asked for (``sequence``, ``position``, ``token``, labels:
  8 bytes or less per row each), which :meth:`Harvest.activations` loads whole.

The consumers in :mod:`probe.methods` take a harvest folder through this module:

* ``fit_probes(folder, ...)``: :meth:`Harvest.activations` is an ActivationDataset whose feature
  matrices are :class:`LazyFeature` columns; the probe reads only its sampled rows
  (``max_train + max_test``), shard by shard. Bound: per-row columns + one shard column + the
  ``(max_train + max_test) x dim`` float32 sample and scikit-learn's working copies of it.
* ``steering_vector(model, folder_pos, folder_neg, site=...)``: :func:`probe.methods.steering.steering_vector` over :meth:`Harvest.feature_mean`, the
  difference of the two harvests' mean features, summed in float64 one shard at a time.
  Bound: one shard column + ``dim`` float64 sums.
* ``TunedLens.fit(model, folder)``: :func:`probe.methods.lens.lens_batches`, batches of rows from shards in a seeded
  random order (rows shuffled within a shard). Bound: ``n_layers + 1`` columns of one shard.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from probe.errors import InputError

FORMAT = "probe-harvest"
SPEC, MANIFEST, SHARDS = "spec.json", "manifest.json", "shards"
#: per-row columns of every shard, before the labels and features
ROW_COLUMNS = ("sequence", "position", "token")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


@dataclass
class FeatureSpec:
    """One stored feature: ``site`` at ``layer`` read from ``hooks`` (per-position ``shapes``),
    flattened and concatenated to ``raw_dim`` values, stored as ``dim`` columns."""

    site: str
    layer: int
    kind: str
    hooks: list[str]
    shapes: list[list[int]]
    raw_dim: int
    dim: int
    reduction: str


@dataclass
class Plan:
    sites: list[str]
    layers: list[int]
    positions: list[int] | str | None = None
    pool: str | None = None
    max_dim: int | None = None
    dtype: str = "float16"
    seq_len: int = 256
    batch_size: int = 16
    shard_size: int = 64
    seed: int = 0
    features: dict[str, FeatureSpec] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        d["features"] = {k: FeatureSpec(**v) for k, v in d.get("features", {}).items()}
        return cls(**d)

    def position_arg(self):
        """``positions`` in the form :func:`probe.methods.support.labelled_sequences.select_positions` takes."""
        return [-1] if self.positions == "last" else self.positions

    def reducers(self) -> dict:
        """A fresh :class:`~probe.data.activation_dataset.Reducer` per feature (identity or the seeded sketch)."""
        from probe.data.activation_dataset import Reducer

        return {k: Reducer(f.raw_dim, self.max_dim or f.raw_dim, "random", self.seed, k)
                for k, f in self.features.items()}


def read_manifest(path) -> dict | None:
    """The manifest of a complete harvest folder, else ``None``."""
    try:
        f = Path(path) / MANIFEST
    except TypeError:
        return None
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    return data if data.get("format") == FORMAT else None


def is_harvest(data) -> bool:
    """True for a :class:`Harvest` or a folder holding a harvest (complete or not)."""
    if isinstance(data, Harvest):
        return True
    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data)
    return (path / MANIFEST).is_file() or (path / SPEC).is_file()


def open_harvest(data) -> "Harvest":
    """``data`` as a :class:`Harvest` (a folder path or an opened harvest)."""
    return data if isinstance(data, Harvest) else Harvest(data)


class Harvest:
    """A complete harvest folder. ``features``: ``{key: FeatureSpec}``; ``labels``: label names;
    ``n_rows``; ``manifest``: the JSON manifest (model, corpus, plan, shards, bytes per token)."""

    def __init__(self, path):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            what = ("an unfinished harvest (no manifest.json yet): run the same harvest again to finish it"
                    if (self.path / SPEC).is_file() else "no harvest (no manifest.json)")
            raise InputError(f"{str(self.path)!r} holds {what}.")
        self.manifest = manifest
        self.plan = Plan.from_dict(manifest["plan"])
        self.features = self.plan.features
        self.labels = list(manifest["corpus"]["labels"])
        self.n_rows = int(manifest["n_rows"])
        self.shards = manifest["shards"]

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (f"Harvest({str(self.path)!r}: {self.n_rows:,} rows, {len(self.shards)} shards, features "
                f"{list(self.features)}, labels {self.labels}, {self.manifest['bytes'] / 2**20:.1f} MiB)")

    def feature_spec(self, key: str):
        if key not in self.features:
            raise InputError(f"The harvest has no feature {key!r}; it holds {', '.join(self.features)}.")
        return self.features[key]

    def shard_bytes(self, key: str) -> int:
        """Bytes of the largest shard's ``key`` column in memory (the reader's unit of reading)."""
        itemsize = np.dtype(self.plan.dtype).itemsize
        return max(s["rows"] for s in self.shards) * self.feature_spec(key).dim * itemsize

    def read_shard(self, i: int, columns: list[str]) -> dict[str, np.ndarray]:
        """Columns of shard ``i``: features as ``[rows, dim]`` arrays in the stored dtype."""
        import pyarrow.parquet as pq

        table = pq.ParquetFile(self.path / self.shards[i]["file"]).read(columns=columns, use_threads=False)
        out = {}
        for name in columns:
            col = table.column(name)
            if name in self.features:
                dim = self.features[name].dim
                parts = [c.values.to_numpy(zero_copy_only=False).reshape(-1, dim) for c in col.chunks]
                out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            else:
                out[name] = col.to_numpy()
        return out

    def column(self, name: str) -> np.ndarray:
        """A per-row column (``sequence``, ``position``, ``token`` or a label) over all shards."""
        if name not in (*ROW_COLUMNS, *self.labels):
            raise InputError(f"The harvest has no row column {name!r}; it has "
                             f"{', '.join([*ROW_COLUMNS, *self.labels])}.")
        return np.concatenate([self.read_shard(i, [name])[name] for i in range(len(self.shards))])

    def iter_feature(self, key: str):
        """``[rows, dim]`` arrays of feature ``key``, shard by shard."""
        self.feature_spec(key)
        for i in range(len(self.shards)):
            yield self.read_shard(i, [key])[key]

    def activations(self):
        """The harvest as an :class:`~probe.data.activation_dataset.ActivationDataset` whose feature matrices
        are :class:`LazyFeature` columns (per-row columns and labels are loaded)."""
        from probe.data.activation_dataset import ActivationDataset, FeatureInfo

        info = {k: FeatureInfo(f.site, f.layer, f.kind, f.hooks, f.raw_dim, f.dim, f.reduction)
                for k, f in self.features.items()}
        rows = {n: self.column(n).astype(np.int64) for n in ROW_COLUMNS}
        labels = {n: self.column(n) for n in self.labels}
        m = self.manifest
        return ActivationDataset({k: LazyFeature(self, k) for k in self.features}, info, labels, rows["token"],
                                 rows["sequence"], rows["position"], m["model"]["name"], m["model"]["layout"],
                                 self.path, m["seconds"], m["corpus"]["tokens"])

    def feature_mean(self, key: str) -> np.ndarray:
        """Mean of feature ``key`` over every row ``[dim]``, summed in float64 one shard at a time."""
        total, n = np.zeros(self.feature_spec(key).dim), 0
        for values in self.iter_feature(key):
            total += values.astype(np.float64).sum(0)
            n += len(values)
        if n == 0:
            raise InputError(f"{str(self.path)!r} has no rows; harvest more text.")
        return total / n


class LazyFeature:
    """Feature ``key`` of a harvest as a read-only ``[n_rows, dim]`` matrix that reads on indexing:
    ``lazy[rows]`` (int indices, a slice or a boolean mask) reads only the shards holding them."""

    def __init__(self, harvest: Harvest, key: str):
        self.harvest, self.key = harvest, key
        self.shape = (harvest.n_rows, harvest.features[key].dim)
        self.dtype = np.dtype(harvest.plan.dtype)
        self.starts = np.array([s["row_start"] for s in harvest.shards] + [harvest.n_rows])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(self.shape[0])[index]
        if rows.ndim != 1:
            raise InputError("A harvest feature is indexed by rows only (ints, a slice or a mask).")
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        shard_of = np.searchsorted(self.starts, rows[order], side="right") - 1
        for i in np.unique(shard_of):
            pick = order[shard_of == i]
            values = self.harvest.read_shard(int(i), [self.key])[self.key]
            out[pick] = values[rows[pick] - self.starts[i]]
        return out

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)
