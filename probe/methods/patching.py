r"""Activation patching and attribution patching over layer x position, state included.

Two runs that differ in a few tokens: *clean* (the model gets the answer) and *corrupted*
(it gets a contrasting one). A metric ``m`` reads the logits; by default the logit
difference at the answer position::

    m(logits) = mean_b ( logits[b, p_b, answer_b] - logits[b, p_b, contrast_b] )

**Activation patching** (denoising): run the corrupted input, but overwrite one *site*
at one layer and one position with its value from the clean run (every later position
then follows; for the recurrent state that is the propagating edit of
:mod:`probe.mixers.edits`), and report the normalised metric::

    score(site, l, t) = (m_patched - m_corrupted) / (m_clean - m_corrupted)

1 means the patch restores the clean behaviour, 0 that it does nothing. With ``alpha``
the patch is the interpolation ``a_corr + alpha (a_clean - a_corr)``.

**Attribution patching** (Nanda 2023; Syed et al. 2023) replaces every patched run by
its first-order Taylor expansion around the corrupted run::

    score(site, l, t) ~= sum_{hooks h of the site} < dm/da_h(t) |_corrupted , a_h^clean(t) - a_h^corr(t) >
                         / (m_clean - m_corrupted)

The gradient is the *total* derivative: writing the site at position t, with every later
position (and, for a state, the recurrence) responding. For block-level hooks (residual
stream, mixer and MLP outputs, attention's keys and values) one backward pass of the
corrupted run gives it for every position at once. A recurrent state is written through
the mixer's forcing, which cuts the recurrence at the written position, so its gradient is
taken on a replicated batch where each copy forces one (layer, position) cell, the cells of
one copy lying at strictly decreasing positions as the layer grows (none is downstream of
another): ``positions + layers - 1`` copies cover every cell of a site in one pass (positions
where the two runs do not differ are left out: their estimate is exactly 0). That pass is a
forward and backward through the edited recurrence, so for the state of nonlinear or large
recurrences (LSTM, Mamba) attribution patching costs about as much as the real sweep; for
block sites and attention it is one backward pass.

Sites (:mod:`probe.methods.support.site_hooks`): ``resid_pre``, ``mixer_out``, ``mlp_out`` and ``state``
(every ``hook_state*`` of the layer: the whole memory after token t; attention: the key and
value written at t) by default; any block site, mixer hook suffix or full hook name works.

Example::

    res = activation_patching(model, clean, corrupted, answer=ord("5"), contrast=ord("3"))
    res.to_frame(); res.figure()
    attr = attribution_patching(model, clean, corrupted, answer=ord("5"), contrast=ord("3"), compare=True)
    attr.agreement()          # Pearson / Spearman correlation with real patching per site
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from probe.errors import InputError
from probe.finite import check_finite
from probe.methods.support import input_checks as inputs, site_hooks as S
from probe.methods.support.gradient_mode import needs_gradients
from probe.mixers.edits import mark_forced
from probe.result import MethodResult

Metric = Callable[[Tensor], Tensor]


# -- the metric --------------------------------------------------------------------------
@dataclass
class LogitDiff:
    """``metric(logits [batch, pos, vocab]) -> [batch]``: ``logit[answer] - logit[contrast]`` at
    each sequence's answer position (ids and positions ``[batch]``)."""

    answer: Tensor
    contrast: Tensor
    position: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        at = logits[rows, self.position.to(logits.device)]
        return at[rows, self.answer.to(logits.device)] - at[rows, self.contrast.to(logits.device)]


def metric_value(metric: Metric, logits: Tensor, model=None) -> Tensor:
    """The metric as a scalar (a per-sequence metric is averaged), checked to be a finite number
    (:class:`probe.errors.NonFiniteError` naming the model's non-finite weights if any)."""
    value = metric(logits)
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"The metric must return a number or a tensor of numbers, got "
                             f"{type(value).__name__}.") from exc
    if not value.is_floating_point():
        value = value.float()
    if value.dim() > 0:
        value = value.mean()
    return check_finite(value, "the metric", model)


def answer_positions(position, batch: int, n_pos: int) -> Tensor:
    """``position`` (an int, or one per sequence) as ``[batch]`` non-negative indices."""
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        return torch.full((batch,), inputs.check_position(int(position), n_pos), dtype=torch.long)
    pos = torch.as_tensor(position)
    if pos.is_floating_point() or pos.dtype == torch.bool or pos.dim() != 1 or pos.numel() != batch:
        raise InputError(f"answer_position must be an int or {batch} integer positions (one per sequence), "
                         f"got {position!r}.")
    return torch.tensor([inputs.check_position(int(p), n_pos) for p in pos.tolist()], dtype=torch.long)


# -- set-up shared by both methods -------------------------------------------------------
@dataclass
class _Setup:
    clean: Tensor
    corrupted: Tensor
    metric: Metric
    sites: list[str]
    layers: list[int]
    positions: list[int]
    hooks: dict[tuple[str, int], list[str]]
    clean_metric: float
    corrupted_metric: float
    normalize: bool
    metric_label: str

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def scale(self) -> float:
        return (self.clean_metric - self.corrupted_metric) if self.normalize else 1.0

    @property
    def offset(self) -> float:
        return self.corrupted_metric if self.normalize else 0.0

    def names(self) -> list[str]:
        return sorted({n for names in self.hooks.values() for n in names})


def _prepare(model, clean, corrupted, answer, contrast, metric, sites, layers, positions, answer_position,
             normalize, prepend_bos) -> _Setup:
    texts = clean, corrupted
    clean = inputs.as_tokens(model, clean, prepend_bos)
    corrupted = inputs.as_tokens(model, corrupted, prepend_bos)
    if clean.shape != corrupted.shape:
        raise InputError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} inputs must have the "
                         "same shape, so that positions line up; pad or pick pairs of equal length.")
    batch, T = clean.shape
    if metric is None:
        if answer is None or contrast is None:
            raise InputError("Give answer= and contrast= token ids (the default metric is the logit difference "
                             "logit[answer] - logit[contrast] at answer_position), or a metric callable.")
        pos = answer_positions(answer_position, batch, T)
        for given in texts:
            inputs.check_not_padding(model, given, pos.tolist(), prepend_bos, "answer position")
        ans = inputs.resolve_target(model, answer, batch, "answer")
        con = inputs.resolve_target(model, contrast, batch, "contrast")
        if bool((ans == con).any()):
            raise InputError("answer and contrast are the same token for some sequence; the logit difference "
                             "would be 0 everywhere.")
        metric = LogitDiff(ans, con, pos.to(model.device))
        label = "logit difference"
        last = int(pos.max())
    else:
        if not callable(metric):
            raise InputError(f"metric must be a callable logits -> tensor, got {type(metric).__name__}.")
        label = getattr(metric, "__name__", type(metric).__name__)
        last = T - 1
    layers = inputs.check_layers(model, layers)
    if sites is S.DEFAULT_PATCH_SITES:  # the defaults a model lacks (no MLP, no state) are dropped
        sites = [s for s in sites if any(S.site_hooks(model, s, l) for l in layers)]
    sites = S.check_sites(model, sites, layers)
    if positions is None:
        positions = list(range(last + 1))  # later positions cannot change the answer (causality)
    else:
        if isinstance(positions, int):
            positions = [positions]
        positions = sorted({inputs.check_position(p, T) for p in positions})
        if not positions:
            raise InputError("positions is empty: give at least one position (or None for all).")
    hooks = {(s, l): S.site_hooks(model, s, l) for s in sites for l in layers}
    with torch.no_grad():
        m_clean = float(metric_value(metric, model(clean), model))
        m_corr = float(metric_value(metric, model(corrupted), model))
    if normalize and abs(m_clean - m_corr) <= 1e-6 * max(1.0, abs(m_clean)):
        raise InputError(f"The clean and corrupted runs give the same metric ({m_clean:.6g}), so the normalised "
                         "score is undefined. Use inputs whose answers differ, or normalize=False.")
    return _Setup(clean, corrupted, metric, sites, layers, positions, hooks, m_clean, m_corr, normalize, label)


def _cache(model, tokens: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Detached activations of ``names`` on ``tokens``; each must be per position ``[batch, pos, ...]``."""
    found: dict[str, Tensor] = {}

    def save(x, hook):
        found[hook.name] = x.detach().clone()

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, save) for n in names]):
        model(tokens)
    for n, t in found.items():
        if t.dim() < 2 or t.shape[:2] != tokens.shape:
            raise InputError(f"Hook {n!r} has shape {tuple(t.shape)}, not [batch, pos, ...]; patching works on "
                             "per-position hooks only (not attention patterns or scores).")
    return found


def _sweep_arrays(model, setup: _Setup) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """What both sweeps start from: the clean and the corrupted activations of every patched hook,
    and the raw metric ``[site, layer, position]`` float64, NaN until a cell is computed."""
    names = setup.names()
    src, ref = _cache(model, setup.clean, names), _cache(model, setup.corrupted, names)
    raw = torch.full((len(setup.sites), len(setup.layers), len(setup.positions)), float("nan"), dtype=torch.float64)
    return src, ref, raw


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


#: bytes of one patched hook's tensor per forward above which fewer copies of the batch are run at once
#: (a Mamba state is d_inner x d_state numbers per position: 256 copies of 64 tokens would be 1 GiB)
HOOK_BYTES = 2**28


def _check_max_batch(max_batch: int, batch: int, hooks: list[Tensor] = ()) -> int:
    """Copies of the batch per forward: ``max_batch // batch``, fewer when a hooked tensor would
    exceed :data:`HOOK_BYTES`."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch must be a positive integer, got {max_batch!r}.")
    copies = max(1, max_batch // batch)
    for t in hooks:
        copies = min(copies, max(1, HOOK_BYTES // max(1, t.numel() * t.element_size())))
    return copies


# -- results -----------------------------------------------------------------------------
@dataclass
class PatchingResult(MethodResult):
    """A patching sweep: one score per (site, layer, position).

    Attributes:
        method: ``"activation"`` or ``"attribution"``.
        sites / layers / positions: the sweep's axes; ``layout`` the model's mixer per layer.
        scores: ``[site, layer, position]``, the normalised metric (``(m - m_corr) / (m_clean - m_corr)``;
            the raw metric when ``normalize=False``); NaN where a layer lacks the site.
        metric: ``[site, layer, position]``, the metric itself (attribution: its first-order estimate).
        clean_metric / corrupted_metric: the metric on the unpatched runs.
        clean_tokens / corrupted_tokens: display strings of the first sequence of each input.
        seconds: wall time; forward_passes: model calls (replicated batches count once).
    """

    method: str
    sites: list[str]
    layers: list[int]
    positions: list[int]
    layout: list[str]
    scores: Tensor
    metric: Tensor
    clean_metric: float
    corrupted_metric: float
    metric_label: str
    normalized: bool
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    seconds: float = 0.0
    forward_passes: int = 0

    def score(self, site: str, layer: int, position: int) -> float:
        """The score of one cell (``layer`` / ``position`` as given to the sweep)."""
        for name, values in (("site", self.sites), ("layer", self.layers), ("position", self.positions)):
            key = {"site": site, "layer": layer, "position": position}[name]
            if key not in values:
                raise InputError(f"{name} {key!r} is not in this sweep; it has {values}.")
        return float(self.scores[self.sites.index(site), self.layers.index(layer), self.positions.index(position)])

    def to_frame(self):
        """One row per (site, layer, position): ``score``, ``metric``, the tokens at that position."""
        import pandas as pd

        rows = []
        for i, site in enumerate(self.sites):
            for j, layer in enumerate(self.layers):
                for k, pos in enumerate(self.positions):
                    rows.append({"method": self.method, "site": S.site_label(site), "layer": layer,
                                 "mixer": self.layout[layer], "position": pos,
                                 "clean_token": self.clean_tokens[pos], "corrupted_token": self.corrupted_tokens[pos],
                                 "score": float(self.scores[i, j, k]), "metric": float(self.metric[i, j, k])})
        return pd.DataFrame(rows)

    def figure(self, sites: Sequence[str] | None = None, **layout):
        """One layer x position heatmap per site (red restores the clean answer, blue pushes away)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        chosen = list(sites) if sites is not None else self.sites
        x = [f"{p}:{self.clean_tokens[p]}" + ("" if self.clean_tokens[p] == self.corrupted_tokens[p]
                                               else f"/{self.corrupted_tokens[p]}") for p in self.positions]
        y = [f"{l} {self.layout[l]}" for l in self.layers]
        finite = self.scores[torch.isfinite(self.scores)]
        bound = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        fig = make_subplots(rows=len(chosen), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                            subplot_titles=[S.site_label(s) for s in chosen])
        for r, site in enumerate(chosen, start=1):
            z = self.scores[self.sites.index(site)].numpy()
            fig.add_trace(go.Heatmap(z=z, x=x, y=y, zmin=-bound, zmax=bound, colorscale="RdBu", reversescale=True,
                                     coloraxis=None, showscale=r == 1,
                                     hovertemplate="layer %{y}<br>position %{x}<br>score %{z:.3f}<extra></extra>"),
                          row=r, col=1)
        title = (f"{self.method.capitalize()} patching: {'normalised ' if self.normalized else ''}{self.metric_label} "
                 f"(clean {self.clean_metric:.3g}, corrupted {self.corrupted_metric:.3g})")
        fig.update_layout(title=title, height=max(300, 180 * len(chosen) + 30 * len(self.layers)), **layout)
        return fig


@dataclass
class AttributionPatchingResult(PatchingResult):
    """An attribution-patching sweep; with ``compare=True`` also the real patching sweep
    (``reference``) and their agreement per site (:meth:`agreement`)."""

    reference: PatchingResult | None = field(default=None, repr=False)

    def agreement(self, reference: PatchingResult | None = None):
        """Per site: Pearson and Spearman correlation with real patching over the (layer, position)
        cells, and the mean absolute difference of the scores."""
        ref = reference if reference is not None else self.reference
        if ref is None:
            raise InputError("No real patching to compare with: pass compare=True to attribution_patching, or "
                             "agreement(activation_patching(...)) with the same inputs.")
        return patching_agreement(self, ref)

    def agreement_figure(self, reference: PatchingResult | None = None):
        """Scatter of attribution (y) against real patching (x), one colour per site."""
        import plotly.graph_objects as go

        ref = reference if reference is not None else self.reference
        if ref is None:
            raise InputError("No real patching to compare with (compare=True).")
        fig = go.Figure()
        table = self.agreement(ref).set_index("site")
        for i, site in enumerate(self.sites):
            if site not in ref.sites:
                continue
            a, b = _paired(self, ref, site)
            fig.add_trace(go.Scatter(x=b, y=a, mode="markers",
                                     name=f"{S.site_label(site)} (r={table.loc[S.site_label(site), 'pearson']:.2f})"))
        both = torch.cat([t[torch.isfinite(t)] for t in (self.scores, ref.scores)])
        lo, hi = (min(0.0, float(both.min())), max(1.0, float(both.max()))) if both.numel() else (0.0, 1.0)
        fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "grey"})  # y = x
        fig.update_layout(title="Attribution patching vs activation patching", xaxis_title="activation patching",
                          yaxis_title="attribution patching")
        return fig


def _paired(a: PatchingResult, b: PatchingResult, site: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``site`` at the cells both sweeps computed, as two flat arrays."""
    i, j = a.sites.index(site), b.sites.index(site)
    xs, ys = [], []
    for li, layer in enumerate(a.layers):
        if layer not in b.layers:
            continue
        lj = b.layers.index(layer)
        for pi, pos in enumerate(a.positions):
            if pos not in b.positions:
                continue
            u, v = float(a.scores[i, li, pi]), float(b.scores[j, lj, b.positions.index(pos)])
            if np.isfinite(u) and np.isfinite(v):
                xs.append(u)
                ys.append(v)
    return np.asarray(xs), np.asarray(ys)


def patching_agreement(approx: PatchingResult, exact: PatchingResult):
    """Per shared site: ``pearson``, ``spearman`` (NaN when either side is constant), ``mean_abs_diff``
    and the number of compared cells, as a DataFrame.

    Example::

        patching_agreement(attribution_patching(model, clean, corrupted, answer="a", contrast="i"),
                           activation_patching(model, clean, corrupted, answer="a", contrast="i"))
    """
    import pandas as pd
    from scipy.stats import pearsonr, spearmanr

    rows = []
    for site in approx.sites:
        if site not in exact.sites:
            continue
        a, b = _paired(approx, exact, site)
        row = {"site": S.site_label(site), "cells": len(a), "pearson": float("nan"), "spearman": float("nan"),
               "mean_abs_diff": float(np.abs(a - b).mean()) if len(a) else float("nan")}
        if len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
            row["pearson"] = float(pearsonr(a, b)[0])
            row["spearman"] = float(spearmanr(a, b)[0])
        rows.append(row)
    if not rows:
        raise InputError("The two sweeps share no site; run them with the same sites.")
    return pd.DataFrame(rows)


def _result(cls, model, setup: _Setup, raw: Tensor, method: str, seconds: float, passes: int, **extra):
    scores = (raw - setup.offset) / setup.scale
    strs = inputs.str_tokens(model, torch.stack([setup.clean[0], setup.corrupted[0]]))
    return cls(method=method, sites=setup.sites, layers=setup.layers, positions=setup.positions,
               layout=list(model.cfg.layout), scores=scores, metric=raw, clean_metric=setup.clean_metric,
               corrupted_metric=setup.corrupted_metric, metric_label=setup.metric_label, normalized=setup.normalize,
               clean_tokens=strs[0], corrupted_tokens=strs[1], seconds=seconds, forward_passes=passes, **extra)


# -- activation patching -----------------------------------------------------------------
def activation_patching(model, clean, corrupted, answer=None, contrast=None, *, metric: Metric | None = None,
                        sites: str | Sequence[str] = S.DEFAULT_PATCH_SITES, layers: Sequence[int] | int | None = None,
                        positions: Sequence[int] | int | None = None, answer_position=-1, normalize: bool = True,
                        alpha: float = 1.0, max_batch: int = 256, prepend_bos: bool | None = None) -> PatchingResult:
    """Patch every (site, layer, position) of the clean run into the corrupted run, one at a time.

    Args:
        clean, corrupted: inputs of the same shape ``[batch, pos]`` (token ids or texts).
        answer, contrast: token ids (one, or one per sequence) for the default metric, the logit
            difference at ``answer_position`` (an int or one per sequence; default the last).
        metric: any ``logits [batch, pos, vocab] -> [batch] or scalar`` instead.
        sites, layers, positions: the sweep (default: resid_pre, mixer_out, mlp_out, state; every
            layer; every position up to the answer, later ones cannot matter).
        normalize: report ``(m - m_corr) / (m_clean - m_corr)``; else the raw metric.
        alpha: patch ``a_corr + alpha (a_clean - a_corr)`` (1: the clean value).
        max_batch: sequences per forward; positions are patched in parallel as copies of the batch.

    Cells whose clean and corrupted activations are identical (e.g. before the first differing
    token) are not run: the patch is a no-op there, so their score is exactly 0.

    Returns a :class:`PatchingResult` (``scores [site, layer, position]``).

    Example::

        res = activation_patching(model, "the birds near the door ", "the woman near the door ",
                                  answer="a", contrast="i", sites=["resid_pre", "state"])
        res.to_frame()             # site, layer, position, score (1 = the clean answer restored)
        res.figure()               # one layer x position heatmap per site
    """
    model = inputs.as_model(model)
    start = time.perf_counter()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise InputError(f"alpha must be a finite number (1: the clean value), got {alpha!r}.")
    setup = _prepare(model, clean, corrupted, answer, contrast, metric, sites, layers, positions, answer_position,
                     normalize, prepend_bos)
    src, ref, raw = _sweep_arrays(model, setup)
    B = setup.batch
    _check_max_batch(max_batch, B)
    passes = 2
    for i, site in enumerate(setup.sites):
        for j, layer in enumerate(setup.layers):
            hooks = setup.hooks[site, layer]
            if not hooks:
                continue
            todo = []
            for k, p in enumerate(setup.positions):
                if any(not torch.equal(src[n][:, p], ref[n][:, p]) for n in hooks):
                    todo.append(k)
                else:
                    raw[i, j, k] = setup.corrupted_metric
            for chunk in _chunks(todo, _check_max_batch(max_batch, B, [src[n] for n in hooks])):
                R = len(chunk)
                rows = torch.arange(R * B, device=model.device)
                cols = torch.tensor([setup.positions[k] for k in chunk], device=model.device).repeat_interleave(B)
                fwd = [(n, _patch_hook(src[n], ref[n], rows, cols, B, alpha)) for n in hooks]
                with torch.no_grad(), model.hooks(fwd_hooks=fwd):
                    logits = model(setup.corrupted.repeat(R, 1))
                passes += 1
                for r, k in enumerate(chunk):
                    raw[i, j, k] = float(metric_value(setup.metric, logits[r * B : (r + 1) * B]))
    return _result(PatchingResult, model, setup, raw, "activation", time.perf_counter() - start, passes)


def _patch_hook(source: Tensor, target: Tensor, rows: Tensor, cols: Tensor, batch: int, alpha: float):
    """A hook writing ``target + alpha (source - target)`` at ``(rows, cols)`` of a replicated batch."""
    value = source[rows % batch, cols]
    if alpha != 1.0:
        base = target[rows % batch, cols]
        value = base + alpha * (value - base)

    def hook(t, hook):
        t = t.clone()
        t[rows, cols] = value.to(t.dtype)
        return t

    return hook


# -- attribution patching ----------------------------------------------------------------
@needs_gradients
def attribution_patching(model, clean, corrupted, answer=None, contrast=None, *, metric: Metric | None = None,
                         sites: str | Sequence[str] = S.DEFAULT_PATCH_SITES, layers: Sequence[int] | int | None = None,
                         positions: Sequence[int] | int | None = None, answer_position=-1, normalize: bool = True,
                         max_batch: int = 128, compare: bool = False,
                         prepend_bos: bool | None = None) -> AttributionPatchingResult:
    """The gradient approximation of :func:`activation_patching` (same arguments, same score scale).

    The metric must be differentiable. With ``compare=True`` the real sweep is run too, kept as
    ``result.reference``, and ``result.agreement()`` gives the correlation per site. Gradients are
    taken with :func:`torch.autograd.grad` (parameters' ``.grad`` are left untouched).

    Returns an :class:`AttributionPatchingResult` (``scores [site, layer, position]``).

    Example::

        approx = attribution_patching(model, clean, corrupted, answer="a", contrast="i", compare=True)
        approx.agreement()         # per site: pearson, spearman, mean_abs_diff against the real sweep
    """
    model = inputs.as_model(model)
    start = time.perf_counter()
    setup = _prepare(model, clean, corrupted, answer, contrast, metric, sites, layers, positions, answer_position,
                     normalize, prepend_bos)
    src, ref, raw = _sweep_arrays(model, setup)
    diff = {n: (src[n] - ref[n]) for n in src}
    direct = {key: h for key, h in setup.hooks.items() if h and not any(S.needs_forcing(model, n) for n in h)}
    forced = {key: h for key, h in setup.hooks.items() if h and key not in direct}
    passes = 2
    pos = torch.tensor(setup.positions, device=model.device)
    if direct:
        grads = _direct_gradients(model, setup, sorted({n for h in direct.values() for n in h}))
        passes += 1
        for (site, layer), hooks in direct.items():
            # the metric already averages over the batch, so its gradient carries the 1/batch
            est = sum((grads[n][:, pos] * diff[n][:, pos]).flatten(2).sum(-1).sum(0) for n in hooks)
            raw[setup.sites.index(site), setup.layers.index(layer)] = est.cpu() + setup.corrupted_metric
    for site in setup.sites:
        cells = [(layer, forced[site, layer]) for layer in setup.layers if (site, layer) in forced]
        if cells:
            passes += _forced_gradients(model, setup, site, cells, ref, diff, raw, max_batch)
    seconds = time.perf_counter() - start
    reference = None
    if compare:
        reference = activation_patching(model, setup.clean, setup.corrupted, metric=setup.metric, sites=setup.sites,
                                         layers=setup.layers, positions=setup.positions, normalize=normalize)
    return _result(AttributionPatchingResult, model, setup, raw, "attribution", seconds, passes, reference=reference)


def _direct_gradients(model, setup: _Setup, names: list[str]) -> dict[str, Tensor]:
    """``dm/da`` at every position of hooks that act directly (no recurrence forcing): one backward."""
    deltas: dict[str, Tensor] = {}

    def add(t, hook):
        d = torch.zeros_like(t, requires_grad=True)
        deltas[hook.name] = d
        return t + d

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, add) for n in names]):
        value = _differentiable(metric_value(setup.metric, model(setup.corrupted)))
        order = list(deltas)
        grads = torch.autograd.grad(value, [deltas[n] for n in order], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(deltas[n])).detach() for n, g in zip(order, grads)}


def _differentiable(value: Tensor) -> Tensor:
    if not value.requires_grad:
        raise InputError("The metric is not differentiable (its value carries no gradient): attribution patching "
                         "needs a metric computed from the logits with differentiable torch operations (not argmax, "
                         ".item() or numpy). Use activation_patching for such a metric.")
    return value


def _forced_gradients(model, setup: _Setup, site: str, cells: list[tuple[int, list[str]]], ref, diff, raw,
                      max_batch: int) -> int:
    """Gradients for sites written through a recurrence's forcing, filled into ``raw``.

    Copy ``r`` of the corrupted batch forces layer ``cells[j]`` at the ``(r - j)``-th active position
    (when in range) to its own value plus a zero ``delta`` that requires grad; the derivative of
    the summed metric with respect to each ``delta`` is the total derivative at that cell.
    Positions where no hook differs between the runs are not active: their estimate is exactly 0.
    Returns the number of forward passes."""
    i = setup.sites.index(site)
    active = []
    for k, p in enumerate(setup.positions):
        if any(bool(diff[n][:, p].any()) for _, hooks in cells for n in hooks):
            active.append(k)
        else:
            for layer, _ in cells:
                raw[i, setup.layers.index(layer), k] = setup.corrupted_metric
    B, P, J = setup.batch, len(active), len(cells)
    n_copies = P + J - 1 if P else 0
    per_chunk = _check_max_batch(max_batch, B, [ref[n] for _, hooks in cells for n in hooks])
    passes = 0
    for copies in _chunks(list(range(n_copies)), per_chunk):
        R = len(copies)
        deltas: dict[str, Tensor] = {}
        where: dict[str, tuple[Tensor, Tensor, list[tuple[int, int]]]] = {}
        fwd = []
        for j, (layer, hooks) in enumerate(cells):
            picked = [(c, active[copies[c] - j]) for c in range(R) if 0 <= copies[c] - j < P]  # (copy, k)
            if not picked:
                continue
            rows = torch.tensor([c * B + b for c, _ in picked for b in range(B)], device=model.device)
            cols = torch.tensor([setup.positions[k] for _, k in picked for _ in range(B)], device=model.device)
            for n in hooks:
                where[n] = (rows, cols, [(layer, k) for _, k in picked])
                fwd.append((n, _forcing_hook(ref[n], rows, cols, B, deltas)))
        if not fwd:
            continue
        with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
            logits = model(setup.corrupted.repeat(R, 1))
            total = _differentiable(sum(metric_value(setup.metric, logits[r * B : (r + 1) * B]) for r in range(R)))
            order = list(deltas)
            grads = torch.autograd.grad(total, [deltas[n] for n in order], allow_unused=True)
        passes += 1
        est: dict[tuple[int, int], Tensor] = {}
        for n, g in zip(order, grads):
            if g is None:
                g = torch.zeros_like(deltas[n])
            rows, cols, cells_k = where[n]
            contrib = (g.detach() * diff[n][rows % B, cols]).flatten(1).sum(-1).view(len(cells_k), B).sum(-1)
            for (layer, k), v in zip(cells_k, contrib.tolist()):
                est[layer, k] = est.get((layer, k), 0.0) + v
        for (layer, k), v in est.items():
            raw[i, setup.layers.index(layer), k] = v + setup.corrupted_metric
    return passes


def _forcing_hook(reference: Tensor, rows: Tensor, cols: Tensor, batch: int, deltas: dict[str, Tensor]):
    """Write ``reference + delta`` at ``(rows, cols)`` and mark those elements forced (so the recurrence
    restarts from them and gradients reach ``delta``)."""

    def hook(t, hook):
        base = reference[rows % batch, cols].to(t.dtype)
        d = torch.zeros_like(base, requires_grad=True)
        deltas[hook.name] = d
        out = t.clone()
        out[rows, cols] = base + d
        mask = torch.zeros(t.shape[:2], dtype=torch.bool, device=t.device)
        mask[rows, cols] = True
        return mark_forced(out, mask.view(*mask.shape, *([1] * (t.dim() - 2))))

    return hook
