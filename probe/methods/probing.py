r"""Linear probes on hidden activations and on the compressed recurrent state.

**Collect** (:func:`collect_activations`): run the model over a labelled dataset and keep,
at chosen positions, the features of every (site, layer):

* *hidden*: ``resid_post`` (the residual stream after the block), ``mixer_out`` (what the
  sequence mixer wrote), or any other block site;
* *state* (``"state"``): every ``hook_state*`` of the layer concatenated and flattened (the
  whole memory after the token: LSTM c and h, Mamba's SSM state and conv window, ...), for
  attention the key and value written at the position; wide states are reduced to
  ``max_dim`` columns by a random projection (a count sketch) or PCA as they stream in.

Rows stream into preallocated arrays, in memory or (past ``memory_limit``, or with ``path``)
as float16 ``.npy`` memory maps on disk, so a million tokens never sit in RAM at once.

**Fit** (:func:`fit_probes`): for every label, site and layer, a scikit-learn linear probe
on standardised features (fitted on the training rows): multinomial logistic regression for
class labels (score: accuracy), ridge regression for continuous ones (score: R^2). Rows
are split into train and test *by sequence*, so a test row never shares a sequence with a
training row. Each probe is refitted on a **control task**: every sequence takes the label
sequence of another sequence (a random derangement of the sequences, aligned by rank within
the sequence). The control labels keep the label's distribution and its shape along a
sequence (runs, dependence on position) but have nothing to do with the text, so a probe
scores above the majority baseline on them only by reading position or label frequency;
``selectivity = score - control score`` is what the representation holds about *this* text
beyond that. (A control drawn per token type, as in Hewitt & Liang 2019, is a function of
the token at the probed position, which every residual stream holds: it scores about 1
everywhere and says nothing about contextual labels.)

Example::

    data = collect_activations(model, corpus_tokens, {"depth": depth}, sites=["resid_post", "state"])
    res = fit_probes(data)
    res.to_frame(); res.figure(); res.summary()      # summary: best hidden vs best state per label
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.data.activation_dataset import ActivationDataset, FeatureInfo, Reducer, Storage, feature_key
from probe.data.harvest_reader import is_harvest, open_harvest
from probe.errors import InputError
from probe.methods.support import input_checks as inputs, site_hooks as S
from probe.methods.support.labelled_sequences import as_sequences, padded_batch, select_positions
from probe.result import MethodResult

DEFAULT_PROBE_SITES = ("resid_post", "mixer_out", "state")
TASKS = ("auto", "classification", "regression")


def site_kind(site: str) -> str:
    """``"state"`` for memory sites (``state``, ``state_*``, ``hook_state*``, attention ``k``/``v``), else ``"hidden"``."""
    label = S.site_label(site).removeprefix("mixer.").removeprefix("mlp.").removeprefix("hook_")
    return "state" if label.startswith("state") or label in ("k", "v") else "hidden"


# -- collection --------------------------------------------------------------------------
def collect_activations(model, data, labels=None, *, sites: str | Sequence[str] = DEFAULT_PROBE_SITES,
                        layers: Sequence[int] | int | None = None, positions=None, seq_len: int | None = 256,
                        batch_size: int = 16, max_dim: int = 512, reduce: str | None = "random",
                        dtype: str = "float16", path: str | Path | None = None, memory_limit: float = 4 * 2**30,
                        seed: int = 0, prepend_bos: bool | None = None) -> ActivationDataset:
    """Features of ``sites`` x ``layers`` at ``positions`` of every sequence, with their labels.

    Args:
        data, labels: see :mod:`probe.methods.support.labelled_sequences` (texts, ``[n, pos]`` ids, a 1-D stream cut
            into ``seq_len`` windows, or ``(tokens, labels)`` pairs); labels per token or per sequence.
        sites, layers: what to read (default resid_post, mixer_out, state at every layer).
        positions: ``None`` (all), int(s) for every sequence, a boolean mask or per-sequence lists.
        max_dim, reduce: features wider than ``max_dim`` are reduced by ``"random"`` projection,
            ``"pca"`` (fitted on the first 4096 rows) or not at all (``None``).
        dtype: storage dtype (``"float16"`` halves memory; ``"float32"`` for very large values).
        path: store on disk in this directory; otherwise on disk (a temporary directory, see
            ``result.path``) only when the features would exceed ``memory_limit`` bytes.

    Returns an :class:`ActivationDataset`: ``features {key: [n_rows, dim]}``, ``labels {name: [n_rows]}``.

    Example::

        from probe.data.tasks import get_task
        examples = get_task("agreement").examples(200, seed=1)
        acts = collect_activations(model, [(e.tokens, {"number": e.labels["number"]}) for e in examples],
                                   sites=["resid_post", "state"])
    """
    model = inputs.as_model(model)
    start = time.perf_counter()
    if reduce not in ("random", "pca", None):
        raise InputError(f"reduce must be 'random', 'pca' or None, got {reduce!r}.")
    if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1:
        raise InputError(f"max_dim must be a positive integer, got {max_dim!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"dtype {dtype!r} is not a numpy dtype; use 'float16' or 'float32'.") from exc
    if np_dtype.kind != "f":
        raise InputError(f"dtype must be a float type ('float16', 'float32'), got {dtype!r}.")
    seqs = as_sequences(model, data, labels, seq_len, prepend_bos)
    chosen = select_positions(seqs, positions)
    n_rows = int(sum(len(c) for c in chosen))
    if n_rows == 0:
        raise InputError("No positions selected: the dataset is empty at the given positions.")
    layers = inputs.check_layers(model, layers)
    if sites is DEFAULT_PROBE_SITES:
        sites = [s for s in sites if any(S.site_hooks(model, s, l) for l in layers)]
    sites = S.check_sites(model, sites, layers)
    specs = {}
    shapes = _hook_shapes(model, seqs.tokens[0][:2], sorted({n for s in sites for l in layers
                                                              for n in S.site_hooks(model, s, l)}))
    for site in sites:
        for layer in layers:
            hooks = S.site_hooks(model, site, layer)
            if not hooks:
                continue
            key = feature_key(S.site_label(site), layer)
            raw = int(sum(np.prod(shapes[h]) for h in hooks))
            red = Reducer(raw, max_dim, reduce, seed, key)
            specs[key] = (FeatureInfo(S.site_label(site), layer, site_kind(site), hooks, raw, red.dim, red.label), red)
    need = n_rows * sum(info.dim for info, _ in specs.values()) * np_dtype.itemsize
    temporary = path is None and need > memory_limit
    if temporary:
        path = tempfile.mkdtemp(prefix="probe-activations-")
    store = Storage(Path(path) if path is not None else None, n_rows,
                    {k: (info.dim, np_dtype) for k, (info, _) in specs.items()})
    try:
        return _fill(model, seqs, chosen, specs, store, n_rows, np_dtype, batch_size, start)
    except BaseException:
        store.close()
        if temporary:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _fill(model, seqs, chosen, specs, store: Storage, n_rows: int, np_dtype, batch_size: int,
          start: float) -> ActivationDataset:
    """Run the model batch by batch and stream every (site, layer)'s rows into ``store``."""
    token, sequence, position = (np.zeros(n_rows, dtype=np.int64) for _ in range(3))
    label_rows = {name: [] for name in seqs.labels}
    written = dict.fromkeys(specs, 0)
    row = 0
    names = sorted({h for info, _ in specs.values() for h in info.hooks})
    for first in range(0, len(seqs), batch_size):
        idx = [i for i in range(first, min(first + batch_size, len(seqs))) if len(chosen[i])]
        if not idx:
            continue
        ids, _ = padded_batch([seqs.tokens[i] for i in idx], device=model.device)
        bi = torch.cat([torch.full((len(chosen[i]),), j, dtype=torch.long) for j, i in enumerate(idx)])
        pi = torch.from_numpy(np.concatenate([chosen[i] for i in idx]))
        got = _read(model, ids, names, bi.to(model.device), pi.to(model.device))
        n = len(bi)
        for key, (info, red) in specs.items():
            x = torch.cat([got[h].flatten(1).float() for h in info.hooks], dim=1)
            if red.method == "pca":
                _check_finite(x, info, "")
            out = red(x)  # a non-finite input stays non-finite through the projections
            if out is not None:
                _check_finite(out, info, "")
                written[key] = _write(store, key, written[key], out, info, np_dtype)
        seq_index = np.concatenate([np.full(len(chosen[i]), i, dtype=np.int64) for i in idx])
        token[row : row + n] = np.concatenate([seqs.tokens[i][chosen[i]] for i in idx])
        sequence[row : row + n] = seq_index
        position[row : row + n] = pi.numpy()
        for name in seqs.labels:
            label_rows[name].append(np.concatenate([seqs.labels[name][i][chosen[i]] for i in idx]))
        row += n
    for key, (info, red) in specs.items():
        out = red.flush() if red.method == "pca" else None
        if out is not None:
            written[key] = _write(store, key, written[key], out, info, np_dtype)
        assert written[key] == n_rows, (key, written[key], n_rows)
    labels_out = {name: np.concatenate(parts) for name, parts in label_rows.items()}
    info = {k: i for k, (i, _) in specs.items()}
    result = ActivationDataset({}, info, labels_out, token, sequence, position, model.cfg.name,
                               list(model.cfg.layout), store.path, 0.0, seqs.n_tokens)
    result.seconds = time.perf_counter() - start
    result.features = store.finish(result._meta(), token, sequence, position, labels_out)
    return result


def _hook_shapes(model, tokens: np.ndarray, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-position shape of every hook (``shape[2:]``), from a forward on one or two tokens."""
    shapes: dict[str, tuple[int, ...]] = {}

    def look(t, hook):
        shapes[hook.name] = tuple(t.shape[2:])

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=model.device)[None]
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, look) for n in names]):
        model(ids)
    for n in names:
        if n not in shapes:
            raise InputError(f"Hook {n!r} did not fire; it cannot be probed.")
    return shapes


def _read(model, ids, names, bi, pi) -> dict:
    """Values of hooks ``names`` at rows ``(bi, pi)`` of one forward (only those rows are kept)."""
    got = {}

    def take(t, hook):
        if t.dim() < 2 or t.shape[:2] != ids.shape:
            raise InputError(f"Hook {hook.name!r} has shape {tuple(t.shape)}, not [batch, pos, ...]; "
                             "probes read per-position hooks only.")
        got[hook.name] = t[bi, pi].detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, take) for n in names]):
        model(ids)
    return got


def _check_finite(x: torch.Tensor, info: FeatureInfo, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(-1).sum())
        raise InputError(f"{bad} rows of {info.site} at layer {info.layer} hold NaN or inf{what}; the model "
                         "produces non-finite activations on this input (check its weights and dtype).")


def _write(store: Storage, key: str, offset: int, x: torch.Tensor, info: FeatureInfo, dtype: np.dtype) -> int:
    with np.errstate(over="ignore"):
        values = x.cpu().numpy().astype(dtype)
    if not np.isfinite(values).all():
        raise InputError(f"Features of {info.site} at layer {info.layer} overflow {dtype} (max |x| = "
                         f"{float(x.abs().max()):.3g}); collect with dtype='float32'.")
    store.write(key, offset, values)
    return offset + len(values)


# -- fitting -----------------------------------------------------------------------------
@dataclass
class ProbeResult(MethodResult):
    """Probe scores per label x site x layer (:meth:`to_frame` columns: ``model``, ``label``,
    ``task``, ``score_name``, ``site``, ``kind``, ``layer``, ``mixer``, ``dim``, ``reduction``,
    ``n_train``, ``n_test``, ``train_score``, ``score``, ``baseline``, ``control_score``,
    ``selectivity``, ``converged``, ``seconds``)."""

    frame: "object"
    model: str = ""
    seconds: float = 0.0

    def to_frame(self):
        """A copy of the scores table, one row per label x site x layer (columns in the class docstring)."""
        return self.frame.copy()

    def summary(self):
        """Per label: the best hidden and best state score over layers (and their layers and
        selectivities), the hidden-vs-state comparison in one row per label."""
        return hidden_vs_state([self])

    def figure(self, label: str | None = None, **layout):
        """Score vs layer, one line per site (solid) and its control task (dotted)."""
        import plotly.graph_objects as go

        label, part = _rows_of_label(self.frame, label)
        fig = go.Figure()
        for site, rows in part.groupby("site", sort=False):
            rows = rows.sort_values("layer")
            fig.add_trace(go.Scatter(x=rows["layer"], y=rows["score"], mode="lines+markers",
                                     name=f"{site} ({rows['kind'].iloc[0]})"))
            if rows["control_score"].notna().any():
                fig.add_trace(go.Scatter(x=rows["layer"], y=rows["control_score"], mode="lines",
                                         line={"dash": "dot"}, name=f"{site} control", opacity=0.6))
        fig.add_hline(y=float(part["baseline"].iloc[0]), line_dash="dash", line_color="grey",
                      annotation_text="baseline")
        name = part["score_name"].iloc[0]
        fig.update_layout(title=f"Linear probes for {label!r} ({self.model or 'model'}): held-out {name}",
                          xaxis_title="layer", yaxis_title=name, **layout)
        return fig


def _rows_of_label(frame, label: str | None):
    """``(label, rows of frame with that label)``; ``None`` picks the first label."""
    labels = list(dict.fromkeys(frame["label"]))
    label = labels[0] if label is None else label
    if label not in labels:
        raise InputError(f"No probes for label {label!r}; labels: {labels}.")
    return label, frame[frame["label"] == label]


def hidden_vs_state(results):
    """One row per (model, label): best held-out score over layers of the hidden sites and of the
    state sites, with the layer and selectivity of each, and the baseline. ``results``: probe
    results (or their frames), e.g. one per architecture, as a list or as ``{model name: result}``
    (the names then label the rows).

    Example::

        hidden_vs_state([fit_probes(collect_activations(m, data), "number") for m in models])
        hidden_vs_state({"lstm": res_lstm, "transformer": res_transformer})
    """
    import pandas as pd

    if isinstance(results, (ProbeResult, pd.DataFrame)):
        results = [results]
    if isinstance(results, Mapping):
        named = list(results.items())
    elif isinstance(results, (list, tuple)):
        named = [(None, res) for res in results]
    else:
        raise InputError(f"results must be a ProbeResult, a list of them or {{model name: ProbeResult}}; got "
                         f"{type(results).__name__}.")
    rows = []
    for name, res in named:
        if not isinstance(res, (ProbeResult, pd.DataFrame)):
            raise InputError(f"results holds a {type(res).__name__}{f' for {name!r}' if name is not None else ''}; "
                             "give the ProbeResults of fit_probes (or their frames).")
        df = res.frame if isinstance(res, ProbeResult) else res
        if name is not None:
            df = df.assign(model=str(name))
        for (model, label), part in df.groupby(["model", "label"], sort=False):
            row = {"model": model, "label": label, "score_name": part["score_name"].iloc[0],
                   "baseline": float(part["baseline"].iloc[0])}
            for kind in ("hidden", "state"):
                sub = part[part["kind"] == kind]
                if len(sub):
                    best = sub.loc[sub["score"].idxmax()]
                    row.update({kind: float(best["score"]), f"{kind}_site": f"{best['site']}@{int(best['layer'])}",
                                f"{kind}_selectivity": float(best["selectivity"])})
                else:
                    row.update({kind: float("nan"), f"{kind}_site": "", f"{kind}_selectivity": float("nan")})
            rows.append(row)
    return pd.DataFrame(rows)


def hidden_vs_state_figure(results, label: str | None = None, **layout):
    """Grouped bars, one group per model: the best hidden and the best state score for ``label``
    (default the first), with the baseline as a marker.

    Example::

        hidden_vs_state_figure([res_lstm, res_transformer], "number")   # ProbeResults of two models
    """
    import plotly.graph_objects as go

    label, part = _rows_of_label(hidden_vs_state(results), label)
    fig = go.Figure()
    for kind in ("hidden", "state"):
        fig.add_trace(go.Bar(x=part["model"], y=part[kind], name=kind, text=part[f"{kind}_site"],
                             hovertemplate="%{x}: %{y:.3f} at %{text}<extra>" + kind + "</extra>"))
    fig.add_trace(go.Scatter(x=part["model"], y=part["baseline"], mode="markers", name="baseline",
                             marker={"symbol": "line-ew-open", "size": 24, "color": "grey"}))
    fig.update_layout(barmode="group", title=f"Best linear probe for {label!r}: hidden state vs recurrent state",
                      yaxis_title=part["score_name"].iloc[0], **layout)
    return fig


def _task_of(name: str, y: np.ndarray, task: str, max_classes: int) -> str:
    if task != "auto":
        return task
    if y.dtype.kind in "biu" and len(np.unique(y)) <= max_classes:
        return "classification"
    if y.dtype.kind == "f":
        finite = y[np.isfinite(y)]
        if len(finite) and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= max_classes:
            return "classification"
    return "regression"


def _split(sequence: np.ndarray, rows: np.ndarray, test_size: float, rng: np.random.Generator):
    seqs = np.unique(sequence[rows])
    if len(seqs) >= 2:
        perm = rng.permutation(seqs)
        n_test = min(len(seqs) - 1, max(1, int(round(test_size * len(seqs)))))
        test = np.isin(sequence[rows], perm[:n_test])
    else:  # one sequence: split its rows
        test = np.zeros(len(rows), dtype=bool)
        test[rng.permutation(len(rows))[: max(1, int(round(test_size * len(rows))))]] = True
    return rows[~test], rows[test]


def _subsample(rows: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is not None and len(rows) > limit:
        rows = rng.choice(rows, size=limit, replace=False)
    return np.sort(rows)


def _control_labels(sequence: np.ndarray, y: np.ndarray, rows: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray | None:
    """The control task's label of every row in ``rows`` (``[len(rows)]``, in the order of ``rows``).

    The sequences of ``rows`` are put in a random order and each takes the labels of the next one
    (a derangement: no sequence keeps its own labels); its ``k``-th row gets the donor's
    ``k mod n_donor``-th label. ``None`` when ``rows`` span a single sequence (nothing to swap)."""
    order = rows[np.argsort(sequence[rows], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(sequence[order])) + 1)
    if len(groups) < 2:
        return None
    shuffled = rng.permutation(len(groups))
    control = {}
    for i, g in enumerate(shuffled):
        donor = y[groups[shuffled[(i + 1) % len(groups)]]]
        control.update(zip(groups[g].tolist(), donor[np.arange(len(groups[g])) % len(donor)].tolist()))
    return np.array([control[r] for r in rows.tolist()], dtype=y.dtype)


def _fit_one(task: str, X_tr, y_tr, X_te, y_te, C: float, alpha: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if task == "classification":
            probe = LogisticRegression(C=C, max_iter=max_iter).fit(X_tr, y_tr)
            converged = bool(np.all(probe.n_iter_ < max_iter))
        else:
            probe = Ridge(alpha=alpha).fit(X_tr, y_tr)
            converged = True
    return float(probe.score(X_tr, y_tr)), float(probe.score(X_te, y_te)), converged


def _probe_key(data: ActivationDataset, key: str, train, test, kind, y_tr, y_te, c_tr, c_te, standardize: bool,
               C: float, alpha: float, max_iter: int, common: dict) -> dict:
    """Fit and score the probe (and its control) of one feature matrix: one result row."""
    info = data.info[key]
    t0 = time.perf_counter()
    X_tr = np.asarray(data.features[key][train], dtype=np.float32)
    X_te = np.asarray(data.features[key][test], dtype=np.float32)
    for X in (X_tr, X_te):
        if not np.isfinite(X).all():
            raise InputError(f"Features of {info.site} at layer {info.layer} contain NaN or inf; "
                             "recollect them (with dtype='float32' if float16 overflowed).")
    if standardize:
        mu, sd = X_tr.mean(0), X_tr.std(0)
        sd[sd < 1e-8] = 1.0
        X_tr, X_te = (X_tr - mu) / sd, (X_te - mu) / sd
    tr_score, score, converged = _fit_one(kind, X_tr, y_tr, X_te, y_te, C, alpha, max_iter)
    c_score = float("nan")
    if c_tr is not None:
        _, c_score, c_conv = _fit_one(kind, X_tr, c_tr, X_te, c_te, C, alpha, max_iter)
        converged = converged and c_conv
    return {**common, "site": info.site, "kind": info.kind, "layer": info.layer,
            "mixer": data.layout[info.layer] if info.layer < len(data.layout) else "", "dim": info.dim,
            "reduction": info.reduction, "train_score": tr_score, "score": score, "control_score": c_score,
            "selectivity": score - c_score, "converged": converged, "seconds": time.perf_counter() - t0}


def fit_probes(data: "ActivationDataset | str | Path", labels: str | Sequence[str] | None = None, *,
               sites: Sequence[str] | None = None, layers: Sequence[int] | None = None, task: str = "auto",
               test_size: float = 0.2, control: bool = True, standardize: bool = True, C: float = 1.0,
               alpha: float = 1.0, max_train: int | None = 10_000, max_test: int | None = 10_000,
               max_iter: int = 500, max_classes: int = 64, seed: int = 0, n_jobs: int = 1) -> ProbeResult:
    """Fit a linear probe for every label x (site, layer) of ``data`` and score it on held-out sequences.

    ``data``: an :class:`ActivationDataset`, or a harvest folder (:mod:`probe.harvest`) read lazily:
    only the sampled rows of each feature are loaded, one shard at a time.

    Args:
        labels: label names (default all); task: ``"auto"`` (integer labels with at most
            ``max_classes`` values are classes, others continuous), ``"classification"``, ``"regression"``.
        test_size: share of *sequences* held out (rows of one sequence when there is only one).
        control: also fit the control task and report selectivity.
        C / alpha: inverse L2 strength of logistic regression / ridge penalty.
        max_train / max_test: rows sampled for fitting / scoring (``None``: all).
        n_jobs: probes fitted in parallel threads (``-1``: one per core).

    Rows whose label is NaN are left out.

    Returns a :class:`ProbeResult` (one held-out score per label x site x layer).

    Example::

        res = fit_probes(acts, "number")           # acts from collect_activations
        res.to_frame()[["site", "layer", "score", "selectivity"]]
        res.figure("number")
    """
    start = time.perf_counter()
    if is_harvest(data):  # a harvest folder streams (bounds in probe.data.harvest_reader)
        data = open_harvest(data).activations()
    if not isinstance(data, ActivationDataset):
        raise InputError("fit_probes takes the ActivationDataset returned by collect_activations (or "
                         "ActivationDataset.load(path)), or a harvest folder (probe.harvest); got "
                         f"{str(data)[:80]!r}.")
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, got {task!r}.")
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be between 0 and 1, got {test_size}.")
    if len(data) == 0:
        raise InputError("The dataset has no rows; collect activations at some positions first.")
    if not data.labels:
        raise InputError("The dataset has no labels; pass labels= to collect_activations.")
    names = list(data.labels) if labels is None else ([labels] if isinstance(labels, str) else list(labels))
    for name in names:
        if name not in data.labels:
            raise InputError(f"Unknown label {name!r}; the dataset has {sorted(data.labels)}.")
    keys = [k for k, i in data.info.items() if (sites is None or i.site in [S.site_label(s) for s in sites])
            and (layers is None or i.layer in layers)]
    if not keys:
        raise InputError(f"No features match sites={sites} layers={layers}; collected: {data.keys}.")
    import pandas as pd

    rows = []
    for name in names:
        y_all = np.asarray(data.labels[name])
        if y_all.dtype.kind not in "biuf":
            raise InputError(f"Label {name!r} has dtype {y_all.dtype}; labels must be numbers (class ids or values).")
        kind = _task_of(name, y_all, task, max_classes)
        valid = np.flatnonzero(np.isfinite(y_all)) if y_all.dtype.kind == "f" else np.arange(len(y_all))
        if len(valid) == 0:
            raise InputError(f"Label {name!r} has no rows with a value (all NaN).")
        rng = np.random.default_rng(seed)
        train, test = _split(data.sequence, valid, test_size, rng)
        train, test = _subsample(train, max_train, rng), _subsample(test, max_test, rng)
        if len(train) == 0 or len(test) == 0:
            raise InputError(f"Label {name!r}: {len(train)} training and {len(test)} test rows; need both.")
        y_tr, y_te = y_all[train], y_all[test]
        if kind == "classification":
            y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
            classes, counts = np.unique(y_tr, return_counts=True)
            if len(classes) < 2:
                raise InputError(f"Label {name!r} has a single class ({classes[0]}) in the {len(train)} training "
                                 "rows; a classifier needs at least two. Use more or more varied data.")
            baseline = float(np.mean(y_te == classes[counts.argmax()]))
            score_name = "accuracy"
        else:
            y_tr, y_te = y_tr.astype(np.float64), y_te.astype(np.float64)
            if np.ptp(y_tr) == 0:
                raise InputError(f"Label {name!r} is constant ({y_tr[0]}) on the training rows; nothing to regress.")
            baseline = float(1 - np.sum((y_te - y_tr.mean()) ** 2) / max(np.sum((y_te - y_te.mean()) ** 2), 1e-300))
            score_name = "R^2"
        c_tr = c_te = None
        if control:
            c_all = _control_labels(data.sequence, y_all, valid, rng)
            if c_all is not None:
                lookup = dict(zip(valid.tolist(), c_all.tolist()))
                c_tr = np.array([lookup[r] for r in train.tolist()], dtype=y_tr.dtype)
                c_te = np.array([lookup[r] for r in test.tolist()], dtype=y_tr.dtype)
                if (kind == "classification" and len(np.unique(c_tr)) < 2) or \
                        (kind == "regression" and np.ptp(c_tr) == 0):
                    c_tr = None  # a constant control task: nothing to fit
        common = {"model": data.model, "label": name, "task": kind, "score_name": score_name, "n_train": len(train),
                  "n_test": len(test), "baseline": baseline}
        fit = lambda key: _probe_key(data, key, train, test, kind, y_tr, y_te, c_tr if control else None,
                                     c_te if control else None, standardize, C, alpha, max_iter, common)
        if n_jobs == 1:
            rows += [fit(key) for key in keys]
        else:  # threads: the solvers spend their time in numpy / BLAS, which release the GIL
            from joblib import Parallel, delayed

            rows += Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit)(key) for key in keys)
    return ProbeResult(pd.DataFrame(rows), data.model, time.perf_counter() - start)
