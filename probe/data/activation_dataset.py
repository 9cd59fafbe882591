r"""Collected features: one row per (sequence, position), one matrix per (site, layer).

:func:`probe.methods.probing.collect_activations` fills an :class:`ActivationDataset`;
:func:`probe.methods.probing.fit_probes` reads it. The rows carry what the probes need
besides the features: the labels, the token id at the row (for control tasks), the
sequence index (so train/test splits never cut a sequence) and the position.

Storage is in memory (numpy arrays) or, when the features would not fit, on disk as
``.npy`` files written batch by batch with plain file writes and read back as memory maps
(no pickle, numpy's own format; ``allow_pickle=False`` on load)::

    <dir>/meta.json                 sites, layers, per-matrix facts (hooks, dims, reduction), labels
    <dir>/rows/{token,sequence,position}.npy
    <dir>/labels/<name>.npy
    <dir>/features/<layer>-<site>.npy        [n_rows, dim] float16 (or the dtype asked for)

Wide features (a Mamba state is ``d_inner x d_state`` per position) are reduced to at most
``k = max_dim`` columns as they stream in (:class:`Reducer`), by a fixed random projection or
by PCA fitted on the first rows. The random projection is a count sketch (Charikar et al.
2002): input column ``j`` goes to output column ``h(j)`` with sign ``s(j) = +-1``,
``y_c = sum_{j: h(j) = c} s(j) x_j``, a sparse Johnson-Lindenstrauss map that keeps inner
products in expectation and costs one pass over the input instead of a ``D x k`` matmul.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probe.errors import InputError

FORMAT = "probe-activations"
REDUCTIONS = ("random", "pca", None)


def feature_key(site_label: str, layer: int) -> str:
    """Name of one feature matrix: ``"2-resid_post"``."""
    return f"{layer}-{site_label}"


@dataclass
class FeatureInfo:
    """Facts about one feature matrix."""

    site: str
    layer: int
    kind: str  # "hidden" or "state"
    hooks: list[str]
    raw_dim: int
    dim: int
    reduction: str  # "none", "random" or "pca"


class Reducer:
    """Maps raw features ``[n, raw_dim]`` to ``[n, dim]``: identity, a seeded count sketch (see the
    module docstring), or PCA fitted on the first ``fit_rows`` rows (rows that arrive before the fit
    are held back and returned, reduced, once it happens; :meth:`flush` fits on what there is)."""

    def __init__(self, raw_dim: int, max_dim: int, method: str | None, seed: int, name: str, fit_rows: int = 4096):
        self.raw_dim = raw_dim
        self.method = method if raw_dim > max_dim else None
        self.dim = min(raw_dim, max_dim) if self.method else raw_dim
        self.fit_rows = max(fit_rows, self.dim)
        self.pending: list[Tensor] = []
        self.matrix: Tensor | None = None
        self.mean: Tensor | None = None
        if self.method == "random":
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))
            # every output column gets raw_dim / dim inputs (a balanced hash), with random signs
            self.bucket = torch.randperm(raw_dim, generator=g) % self.dim
            self.sign = torch.randint(0, 2, (raw_dim,), generator=g).float() * 2 - 1

    @property
    def label(self) -> str:
        """The reduction's name for tables (``"random"``, ``"pca"`` or ``"none"``)."""
        return self.method or "none"

    def __call__(self, x: Tensor) -> Tensor | None:
        """Reduce a batch; for PCA before the fit, hold it and return ``None``."""
        if self.method is None:
            return x
        if self.method == "random":
            out = x.new_zeros(x.shape[0], self.dim)
            return out.index_add_(1, self.bucket.to(x.device), x * self.sign.to(x.device, x.dtype))
        if self.matrix is None:
            self.pending.append(x.float().cpu())
            if sum(len(p) for p in self.pending) < self.fit_rows:
                return None
            return self.flush()
        return (x.float() - self.mean.to(x.device)) @ self.matrix.to(x.device)

    def flush(self) -> Tensor | None:
        """Fit PCA on the held rows (if not yet) and return them reduced (``None`` if nothing is held)."""
        if not self.pending:
            return None
        held = torch.cat(self.pending)
        self.pending = []
        if self.matrix is None:
            self.mean = held.mean(0)
            k = min(self.dim, len(held))
            _, _, V = torch.linalg.svd(held - self.mean, full_matrices=False)
            self.matrix = torch.zeros(self.raw_dim, self.dim)
            self.matrix[:, :k] = V[:k].T  # fewer rows than dims: the missing components are zero
        return (held - self.mean) @ self.matrix


@dataclass
class ActivationDataset:
    """Features at several (site, layer) over the rows of a labelled dataset.

    Attributes:
        features: ``{key: [n_rows, dim]}`` arrays (memory maps when on disk); keys from :func:`feature_key`.
        info: ``{key: FeatureInfo}``.
        labels: ``{name: [n_rows]}``.
        token / sequence / position: ``[n_rows]`` int64: the token id at the row, its sequence and position.
        model: the model's name; layout: its mixer per layer.
        path: the directory when stored on disk, else ``None``.
        seconds: collection wall time; n_tokens: tokens run through the model.
    """

    features: dict[str, np.ndarray]
    info: dict[str, FeatureInfo]
    labels: dict[str, np.ndarray]
    token: np.ndarray
    sequence: np.ndarray
    position: np.ndarray
    model: str = ""
    layout: list[str] = field(default_factory=list)
    path: Path | None = None
    seconds: float = 0.0
    n_tokens: int = 0

    def __len__(self) -> int:
        return int(len(self.token))

    @property
    def keys(self) -> list[str]:
        """The feature keys, one per collected (site, layer) (see :func:`feature_key`)."""
        return list(self.features)

    @property
    def nbytes(self) -> int:
        """Bytes held by all feature matrices (on disk when ``path`` is set)."""
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in self.features.values())

    def feature(self, site: str, layer: int) -> np.ndarray:
        """The ``[n_rows, dim]`` features of ``site`` at ``layer`` (an ``InputError`` lists what was collected)."""
        key = feature_key(site, layer)
        if key not in self.features:
            raise InputError(f"No features for site {site!r} at layer {layer}; collected: {', '.join(self.keys)}.")
        return self.features[key]

    def __repr__(self) -> str:
        where = f"on disk at {self.path}" if self.path else "in memory"
        return (f"ActivationDataset({len(self):,} rows, {len(self.features)} feature matrices, "
                f"labels {sorted(self.labels)}, {self.nbytes / 2**20:.1f} MiB {where})")

    # -- persistence -------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"format": FORMAT, "version": 1, "model": self.model, "layout": self.layout, "n_rows": len(self),
                "n_tokens": self.n_tokens, "seconds": self.seconds, "labels": sorted(self.labels),
                "features": {k: vars(v) for k, v in self.info.items()}}  # dtypes are in the .npy files

    def save(self, path: str | Path) -> Path:
        """Write the dataset to directory ``path`` (``.npy`` + ``meta.json``); returns the path."""
        path = Path(path)
        storage = Storage(path, len(self), {k: (a.shape[1], a.dtype) for k, a in self.features.items()})
        for k, a in self.features.items():
            for start in range(0, len(a), 65536):
                storage.write(k, start, np.asarray(a[start : start + 65536]))
        storage.finish(self._meta(), self.token, self.sequence, self.position, self.labels)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ActivationDataset":
        """Open a saved dataset; feature matrices are memory-mapped (read-only)."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise InputError(f"{str(path)!r} holds no collected activations (no meta.json).")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"{str(meta_path)!r} is not a probe activations directory.")
        load = lambda p: np.load(p, mmap_mode="r", allow_pickle=False)
        features = {k: load(path / "features" / f"{k}.npy") for k in meta["features"]}
        info = {k: FeatureInfo(**v) for k, v in meta["features"].items()}
        labels = {n: np.load(path / "labels" / f"{n}.npy", allow_pickle=False) for n in meta["labels"]}
        rows = {n: np.load(path / "rows" / f"{n}.npy", allow_pickle=False) for n in ("token", "sequence", "position")}
        return cls(features, info, labels, rows["token"], rows["sequence"], rows["position"], meta.get("model", ""),
                   meta.get("layout", []), path, meta.get("seconds", 0.0), meta.get("n_tokens", 0))


class Storage:
    """Preallocated feature matrices ``[n_rows, dim]``, filled row block by row block: numpy arrays in
    memory (``path=None``), or ``.npy`` files under ``path`` written with plain file writes (no
    memory map while writing, so the process never holds the features: its resident memory stays
    flat however many rows stream through). :meth:`finish` writes the rows, labels and
    ``meta.json`` and returns the matrices (read-only memory maps on disk)."""

    def __init__(self, path: Path | None, n_rows: int, features: dict[str, tuple[int, np.dtype]]):
        self.path = path
        self.n_rows = n_rows
        self.shapes = {k: (n_rows, d, np.dtype(dt)) for k, (d, dt) in features.items()}
        self.arrays: dict[str, np.ndarray] = {}
        self.files: dict[str, tuple[object, int]] = {}
        if path is None:
            self.arrays = {k: np.zeros((n, d), dtype=dt) for k, (n, d, dt) in self.shapes.items()}
            return
        for sub in ("features", "labels", "rows"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        for k, (n, d, dt) in self.shapes.items():
            file = path / "features" / f"{k}.npy"
            with open(file, "wb") as f:
                np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dt),
                                                         "fortran_order": False, "shape": (n, d)})
                header = f.tell()
                f.truncate(header + n * d * dt.itemsize)  # sparse until written
            self.files[k] = (open(file, "r+b"), header)

    def write(self, key: str, offset: int, values: np.ndarray) -> None:
        """Rows ``offset .. offset + len(values)`` of matrix ``key``."""
        n, d, dt = self.shapes[key]
        values = np.ascontiguousarray(values, dtype=dt)
        if values.ndim != 2 or values.shape[1] != d or offset + len(values) > n:
            raise ValueError(f"rows {offset}..{offset + len(values)} of shape {values.shape} do not fit {key} {(n, d)}")
        if self.path is None:
            self.arrays[key][offset : offset + len(values)] = values
            return
        f, header = self.files[key]
        f.seek(header + offset * d * dt.itemsize)
        f.write(values.tobytes())

    def close(self) -> None:
        """Close the feature files (after an error: nothing else is written)."""
        for f, _ in self.files.values():
            f.close()

    def finish(self, meta: dict, token, sequence, position, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Close the files, write rows, labels and ``meta.json`` (on disk); return the matrices."""
        if self.path is None:
            return self.arrays
        self.close()
        for name, values in (("token", token), ("sequence", sequence), ("position", position)):
            np.save(self.path / "rows" / f"{name}.npy", np.asarray(values, dtype=np.int64), allow_pickle=False)
        for name, values in labels.items():
            np.save(self.path / "labels" / f"{name}.npy", np.asarray(values), allow_pickle=False)
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1))
        return {k: np.load(self.path / "features" / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in self.shapes}
