r"""Steering: contrastive activation addition on the residual stream, and state steering.

**Contrastive activation addition** (CAA, Rimsky et al. 2024): from contrast pairs
``(positive_i, negative_i)`` the steering vector of layer ``l`` is the mean difference of an
activation, by default the residual stream entering the block at the last token::

    v_l = 1/N sum_i ( a_l(positive_i) - a_l(negative_i) )          a_l = blocks.{l}.hook_resid_pre

and steering adds ``c * v_l`` to that activation at every position (or chosen ones).

**State steering** (Paulo et al. 2024): the same mean difference taken on the recurrent
state and added to the state. Site ``"state"`` is the layer's whole memory, every
``hook_state*`` (LSTM c and h, Mamba's SSM state and conv window, RWKV's num/den/max and
token shifts), its vector the concatenation of their flattened differences; a single state
tensor is steered by naming it (``"state_num"``, or a full hook name). Because state edits
propagate (:mod:`probe.mixers.edits`), the recurrence carries the added direction forward
exactly as if it had produced it: positions before the first steered one are unchanged,
later ones see the steered memory. With several steered positions the input is run in
pieces cut after each of them, so every addition lands on a state that already holds the
earlier ones (the same as token-by-token generation).

:func:`steer` measures a target metric (by default the logit difference between two
tokens at the last position) for each coefficient and layer, and optionally generates text
with the steering applied while the state is carried token by token.

Example::

    v = steering_vector(model, ["the keys"], ["the key"], site="resid_pre")
    res = steer(model, "the key to the cabinets", v, coefficients=[-4, -2, 0, 2, 4],
                answer=" a", contrast=" i")           # is/are preference vs coefficient
    res.figure()
    v_state = steering_vector(model, pos, neg, site="state")   # state steering
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from probe.data.activation_dataset import feature_key
from probe.data.harvest_reader import is_harvest, open_harvest
from probe.errors import InputError
from probe.finite import check_finite
from probe.methods.support import input_checks as inputs, site_hooks as S
from probe.methods.support.fingerprint import check_harvest_model
from probe.methods.support.labelled_sequences import as_sequences, padded_batch
from probe.result import MethodResult
from probe.sampling import check_sampling


@dataclass
class SteeringVector:
    """Steering directions of one site at some layers.

    Attributes:
        site: the site name (``"resid_pre"``, ``"state"``, ``"state_num"``, a hook name...).
        vectors: ``{layer: tensor}``: for a site of one hook, shaped like one position of it
            (``[d_model]`` for the residual stream, ``[d_inner, d_state]`` for a Mamba state);
            for a site of several hooks (``"state"`` of an LSTM: c and h) the concatenation of
            their flattened directions, split by ``parts``.
        parts: ``{layer: [(hook name, per-position shape), ...]}`` in concatenation order.
        n_pairs: contrast pairs averaged; position: where they were read (``-1``: last token, ``"mean"``).
    """

    site: str
    vectors: dict[int, Tensor]
    parts: dict[int, list[tuple[str, tuple[int, ...]]]]
    n_pairs: int = 0
    position: int | str = -1

    @property
    def layers(self) -> list[int]:
        """The layers that have a direction, sorted."""
        return sorted(self.vectors)

    def norms(self) -> dict[int, float]:
        """``{layer: |v_l|}``, the Euclidean norm of each layer's direction."""
        return {l: float(v.float().norm()) for l, v in self.vectors.items()}

    def split(self, layer: int) -> dict[str, Tensor]:
        """The direction of each hook of ``layer``: ``{hook name: [*shape]}``."""
        return split_vector(self.vectors[layer], self.parts[layer])

    def __repr__(self) -> str:
        shapes = {l: tuple(v.shape) for l, v in self.vectors.items()}
        return f"SteeringVector(site={self.site!r}, layers={self.layers}, shapes={shapes}, pairs={self.n_pairs})"


def split_vector(vector: Tensor, parts: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """``{hook name: direction}``: a one-hook vector reshaped, a concatenation cut into its parts."""
    if len(parts) == 1:
        return {parts[0][0]: vector.reshape(parts[0][1])}
    out, i = {}, 0
    for name, shape in parts:
        n = int(np.prod(shape))
        out[name] = vector[i : i + n].reshape(shape)
        i += n
    return out


def steering_hooks(model, site: str, layer: int) -> list[str]:
    """The hooks steering writes at ``layer``: ``"state"`` is every ``hook_state*`` of the layer (not
    attention's keys and values: a KV cache has no state to steer); other sites as in
    :func:`probe.methods.support.site_hooks.site_hooks`. Empty where the layer lacks the site."""
    hooks = S.site_hooks(model, site, layer)
    if site == "state":
        hooks = [h for h in hooks if "hook_state" in h]
    return hooks


def _texts_or_tokens(model, data, what: str, prepend_bos) -> list[np.ndarray]:
    try:
        return as_sequences(model, data, None, seq_len=None, prepend_bos=prepend_bos).tokens
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc


def _read_site(model, seqs: list[np.ndarray], names: list[str], position, batch_size: int = 32) -> dict[str, Tensor]:
    """Per hook, the activation of every sequence at ``position`` (``-1``: its last token;
    ``"mean"``: averaged over its tokens): ``{name: [n_seq, *shape]}``."""
    out = {n: [] for n in names}
    for first in range(0, len(seqs), batch_size):
        chunk = seqs[first : first + batch_size]
        ids, lengths = padded_batch(chunk, device=model.device)
        got = {}

        def take(t, hook):
            got[hook.name] = t.detach()

        with torch.no_grad(), model.hooks(fwd_hooks=[(n, take) for n in names]):
            model(ids)
        rows = torch.arange(len(chunk))
        for n in names:
            t = got[n]
            if position == "mean":
                mask = (torch.arange(t.shape[1])[None] < lengths[:, None]).to(t.dtype).to(t.device)
                mask = mask.view(*mask.shape, *([1] * (t.dim() - 2)))
                val = (t * mask).sum(1) / lengths.to(t.device).view(-1, *([1] * (t.dim() - 2)))
            elif position == -1:
                val = t[rows, (lengths - 1).to(t.device)]
            else:
                val = t[:, position]
            out[n].append(val.float().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def steering_vector(model, positive, negative, *, site: str = "resid_pre", layers: Sequence[int] | int | None = None,
                    position: int | str = -1, prepend_bos: bool | None = None) -> SteeringVector:
    """Mean activation difference ``positive - negative`` over contrast pairs, per layer.

    Args:
        positive, negative: the same number of texts or token sequences (pair ``i`` is
            ``(positive[i], negative[i])``), or two harvest folders (:mod:`probe.harvest`): the
            difference of their mean features, streamed (their kept positions replace ``position``).
        site: ``"resid_pre"`` (CAA), any block site, ``"state"`` (the layer's whole memory: every
            ``hook_state*``), a mixer hook suffix (``"state_num"``...) or a full hook name. Layers
            lacking the site are skipped.
        position: ``-1`` (each text's last token; lengths may differ), ``"mean"`` (average over
            each text's tokens), or an index ``p`` read in both texts of a pair (pairs must then
            have equal lengths, so that ``p`` means the same place).

    Returns a :class:`SteeringVector` (``vectors {layer: direction}``, shaped like one position of the site).

    Example::

        vec = steering_vector(model, ["the dogs ", "the keys "], ["the dog ", "the key "], site="state")
        vec.norms()                # {layer: |v|}
    """
    model = inputs.as_model(model)
    if is_harvest(positive) and is_harvest(negative):  # two harvest folders stream
        return _steering_from_harvests(model, positive, negative, site, layers)
    pos = _texts_or_tokens(model, positive, "positive", prepend_bos)
    neg = _texts_or_tokens(model, negative, "negative", prepend_bos)
    if len(pos) != len(neg):
        raise InputError(f"{len(pos)} positive and {len(neg)} negative examples; contrast pairs need the same "
                         "number of each.")
    if not (position == -1 or position == "mean" or (isinstance(position, int) and not isinstance(position, bool))):
        raise InputError(f"position must be -1 (last token), 'mean' or an int index, got {position!r}.")
    if position not in (-1, "mean"):
        for i, (a, b) in enumerate(zip(pos, neg)):
            if len(a) != len(b):
                raise InputError(f"Contrast pair {i} has lengths {len(a)} and {len(b)}; position={position} needs "
                                 "pairs of equal length (or use position=-1 / 'mean').")
            inputs.check_position(position, len(a))
        position = position % len(pos[0]) if all(len(a) == len(pos[0]) for a in pos) else position
        if position < 0:
            raise InputError("A negative position other than -1 needs every text to have the same length.")
    layers = inputs.check_layers(model, layers)
    hooks = {l: steering_hooks(model, site, l) for l in layers}
    hooks = {l: h for l, h in hooks.items() if h}
    if not hooks:
        raise InputError(f"Site {site!r} has nothing to steer at layers {layers} (attention and ff layers have no "
                         "hook_state; steer 'resid_pre' there).")
    names = sorted({h for hs in hooks.values() for h in hs})
    a, b = _read_site(model, pos, names, position), _read_site(model, neg, names, position)
    diff = {n: check_finite((a[n] - b[n]).mean(0), f"the mean activation difference at {n}", model)
            for n in names}
    vectors, parts = {}, {}
    for l, hs in hooks.items():
        parts[l] = [(h, tuple(diff[h].shape)) for h in hs]
        v = diff[hs[0]] if len(hs) == 1 else torch.cat([diff[h].flatten() for h in hs])
        vectors[l] = v.to(model.dtype).to(model.device)
    return SteeringVector(site, vectors, parts, len(pos), position)


# -- applying ----------------------------------------------------------------------------
class _AddHook:
    """Adds ``coefficient * vectors[hook name]`` where ``steered`` (``[batch, n]`` bool over absolute
    positions; ``None``: everywhere) is True; ``offset`` is the absolute position of the first token
    of the current forward (generation runs one token at a time)."""

    def __init__(self, vectors: dict[str, Tensor], coefficient: float, steered: Tensor | None):
        self.vectors, self.coefficient, self.steered, self.offset = vectors, float(coefficient), steered, 0

    def window(self, T: int) -> Tensor | None:
        """``[batch, T]``: the steered positions of the current forward (``None``: all)."""
        if self.steered is None:
            return None
        m = self.steered[:, self.offset : self.offset + T]
        return torch.cat([m, m.new_zeros(m.shape[0], T - m.shape[1])], 1) if m.shape[1] < T else m

    def __call__(self, t: Tensor, hook) -> Tensor:
        if self.coefficient == 0.0:
            return t
        add = (self.coefficient * self.vectors[hook.name]).to(t.dtype).to(t.device)
        m = self.window(t.shape[1])
        if m is None:
            return t + add
        if not bool(m.any()):
            return t
        return t + m.to(t.device, t.dtype).view(*m.shape, *([1] * (t.dim() - 2))) * add


def _steering_from_harvests(model, positive, negative, site: str, layers) -> "SteeringVector":
    """:func:`steering_vector` from two harvests of ``model``: the difference of their mean features,
    summed in float64 one shard at a time (memory: one shard column + ``dim`` sums)."""
    pos, neg = open_harvest(positive), open_harvest(negative)
    for h in (pos, neg):
        check_harvest_model(h, model)
    layers = inputs.check_layers(model, layers)
    vectors, parts = {}, {}
    for layer in layers:
        hooks = steering_hooks(model, site, layer)
        key = feature_key(S.site_label(site), layer)
        if not hooks or key not in pos.features:
            continue
        spec = pos.feature_spec(key)
        if spec.hooks != hooks or spec.dim != spec.raw_dim or neg.feature_spec(key) != spec:
            raise InputError(f"Feature {key!r} of the harvests is {spec.reduction}-reduced or reads other hooks "
                             f"than steering writes ({hooks}); harvest both with max_dim=None and the same sites.")
        v = torch.from_numpy(pos.feature_mean(key) - neg.feature_mean(key)).float()
        parts[layer] = [(hk, tuple(shape)) for hk, shape in zip(spec.hooks, spec.shapes)]
        v = v.view(*parts[layer][0][1]) if len(hooks) == 1 else v
        vectors[layer] = v.to(model.dtype).to(model.device)
    if not vectors:
        raise InputError(f"The harvests hold no {site!r} feature to steer at layers {layers}; harvest that site "
                         f"(they hold {', '.join(pos.features)}).")
    position = "mean" if pos.plan.pool == "mean" else pos.plan.positions
    return SteeringVector(site, vectors, parts, min(len(pos), len(neg)), position)


def _vectors(model, vector, site: str | None, layers) -> tuple[str, dict[int, Tensor], dict[int, list]]:
    """``vector`` (a SteeringVector, a tensor with ``site``/``layers``, or ``{layer: tensor}``) as
    ``(site, {layer: vector}, {layer: parts})``, checked against the hooks' per-position shapes."""
    if isinstance(vector, SteeringVector):
        site, vecs = vector.site, dict(vector.vectors)
        if layers is not None:
            keep = inputs.check_layers(model, layers)
            missing = [l for l in keep if l not in vecs]
            if missing:
                raise InputError(f"The steering vector has no direction for layers {missing}; it has {sorted(vecs)}.")
            vecs = {l: vecs[l] for l in keep}
    else:
        if site is None:
            raise InputError("A raw steering tensor needs site= (e.g. 'resid_pre' or 'state') and layers=.")
        if isinstance(vector, dict):
            vecs = {inputs.check_layer(model, l): _as_vector(v) for l, v in vector.items()}
        else:
            if layers is None:
                raise InputError("A raw steering tensor needs layers= (the layer(s) to add it at).")
            vecs = {l: _as_vector(vector) for l in inputs.check_layers(model, layers)}
    hooks = {}
    for l in vecs:
        hooks[l] = steering_hooks(model, site, l)
        if not hooks[l]:
            raise InputError(f"Layer {l} ({model.cfg.layout[l]}) has no {site!r} to steer.")
    shapes = _per_position_shapes(model, sorted({h for hs in hooks.values() for h in hs}))
    parts = {}
    for l, v in vecs.items():
        parts[l] = [(h, shapes[h]) for h in hooks[l]]
        want = shapes[hooks[l][0]] if len(hooks[l]) == 1 else (sum(int(np.prod(shapes[h])) for h in hooks[l]),)
        if tuple(v.shape) != want:
            raise InputError(f"Steering vector for layer {l} has shape {tuple(v.shape)}, but {site!r} there holds "
                             f"{want} per position ({', '.join(hooks[l])}); compute it with "
                             f"steering_vector(..., site={site!r}).")
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"Steering vector for layer {l} contains NaN or inf.")
        vecs[l] = v.to(model.device, model.dtype)
    return site, vecs, parts


def _as_vector(v) -> Tensor:
    try:
        v = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"A steering vector must be a tensor (or array) of numbers, got {type(v).__name__}.") from exc
    if v.dtype == torch.bool or v.is_complex():
        raise InputError(f"A steering vector must hold real numbers, got dtype {v.dtype}.")
    return v


def _per_position_shapes(model, names: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}

    def look(t, hook):
        shapes[hook.name] = tuple(t.shape[2:])

    bos = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 0
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, look) for n in names]):
        model(torch.tensor([[bos]], device=model.device))
    return shapes


@dataclass
class SteeringResult(MethodResult):
    """A steering sweep: the metric for every (layer, coefficient).

    Attributes:
        site, layers, coefficients: the sweep; ``layout`` the model's mixers.
        metric: ``[layer, coefficient]`` float64 (NaN when no metric was asked for).
        baseline: the metric without steering; metric_label its name.
        norms: ``{layer: |v_l|}``.
        generations: ``{(layer, coefficient): [text per sequence]}`` when ``max_new_tokens > 0``.
        logits: ``[layer, coefficient, batch, pos, vocab]`` with ``keep_logits=True``.
    """

    site: str
    layers: list[int]
    coefficients: list[float]
    layout: list[str]
    metric: Tensor
    baseline: float
    metric_label: str
    norms: dict[int, float]
    generations: dict[tuple[int, float], list[str]] = field(default_factory=dict)
    generated_tokens: dict[tuple[int, float], Tensor] = field(default_factory=dict, repr=False)
    logits: Tensor | None = field(default=None, repr=False)
    seconds: float = 0.0

    def to_frame(self):
        """One row per (layer, coefficient): metric, change from baseline, vector norm, first generation."""
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for j, c in enumerate(self.coefficients):
                gen = self.generations.get((layer, c))
                rows.append({"site": self.site, "layer": layer, "mixer": self.layout[layer], "coefficient": c,
                             "metric": float(self.metric[i, j]), "change": float(self.metric[i, j]) - self.baseline,
                             "norm": self.norms[layer], "generation": gen[0] if gen else None})
        return pd.DataFrame(rows)

    def figure(self, **layout):
        """Metric against coefficient, one line per layer; the unsteered value dotted."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for i, layer in enumerate(self.layers):
            fig.add_trace(go.Scatter(x=self.coefficients, y=self.metric[i].tolist(), mode="lines+markers",
                                     name=f"layer {layer} ({self.layout[layer]})"))
        if np.isfinite(self.baseline):
            fig.add_hline(y=self.baseline, line_dash="dot", line_color="grey", annotation_text="unsteered")
        fig.update_layout(title=f"Steering at {self.site}: {self.metric_label} vs coefficient",
                          xaxis_title="coefficient", yaxis_title=self.metric_label, **layout)
        return fig


def steer(model, input, vector, coefficients: Sequence[float] = (-1.0, 0.0, 1.0), *, answer=None, contrast=None,
          metric: Callable[[Tensor], Tensor] | None = None, site: str | None = None,
          layers: Sequence[int] | int | None = None, positions: Sequence[int] | int | str | None = None,
          max_new_tokens: int = 0, temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
          keep_logits: bool = False, prepend_bos: bool | None = None) -> SteeringResult:
    """Add ``coefficient * vector`` at each layer of ``vector`` in turn and measure the effect.

    Args:
        input: a text, texts or token ids (texts may differ in length; the metric reads each one's
            last token).
        vector: a :class:`SteeringVector`, or a tensor / ``{layer: tensor}`` with ``site=`` (and ``layers=``).
        coefficients: the sweep (0 is the unsteered model exactly).
        answer, contrast: token ids or one-token strings; metric = ``logit[answer] - logit[contrast]``
            at the last token. Or ``metric``: ``logits [batch, pos, vocab] -> [batch] or scalar``.
        layers: steer only these layers of the vector (each separately).
        positions: where to steer: ``None`` (every position, generated ones included), ``"last"``
            (each input's last token: where the metric is read), or absolute positions.
        max_new_tokens: also generate this many tokens per (layer, coefficient), carrying the state
            (greedy by default; ``temperature``/``top_k``/``seed`` as in ``model.generate``).
        keep_logits: keep every steered run's logits in the result.

    Returns a :class:`SteeringResult` (``metric [layer, coefficient]``).

    Example::

        res = steer(model, "the dog ", vec, coefficients=[-4, 0, 4], answer="a", contrast="i")
        res.to_frame()             # layer, mixer, coefficient, metric, change from coefficient 0
    """
    model = inputs.as_model(model)
    start = time.perf_counter()
    check_sampling(max_new_tokens, temperature, top_k, "auto")  # as model.generate: clear errors up front
    site, vecs, parts = _vectors(model, vector, site, layers)
    coefficients = [float(c) for c in (coefficients if isinstance(coefficients, (list, tuple, np.ndarray, Tensor))
                                       else [coefficients])]
    if not coefficients or not all(np.isfinite(coefficients)):
        raise InputError(f"coefficients must be a non-empty list of finite numbers, got {coefficients!r}.")
    seqs = _texts_or_tokens(model, input, "input", prepend_bos)
    ids, lengths = padded_batch(seqs, device=model.device)
    batch = ids.shape[0]
    last = (lengths - 1).to(model.device)
    steered = _steered_mask(positions, lengths, ids.shape[1] + max(0, max_new_tokens))
    if metric is None and (answer is not None or contrast is not None):
        if answer is None or contrast is None:
            raise InputError("Give both answer= and contrast= (the metric is their logit difference).")
        ans = inputs.resolve_target(model, answer, batch, "answer")
        con = inputs.resolve_target(model, contrast, batch, "contrast")
        rows = torch.arange(batch, device=model.device)
        metric = lambda logits: logits[rows, last, ans] - logits[rows, last, con]
        label = "logit difference"
    elif metric is not None:
        if not callable(metric):
            raise InputError(f"metric must be callable, got {type(metric).__name__}.")
        label = getattr(metric, "__name__", "metric")
    else:
        label = "no metric"
        if max_new_tokens <= 0 and not keep_logits:
            raise InputError("Nothing to measure: give answer=/contrast=, a metric, max_new_tokens > 0 or keep_logits.")
    if max_new_tokens > 0 and bool((lengths != lengths[0]).any()):
        raise InputError("Steered generation needs inputs of equal length (generate each text on its own).")
    value = lambda logits: float(_scalar(metric(logits))) if metric is not None else float("nan")
    with torch.no_grad():
        base_logits = check_finite(model(ids), "the model's logits on the input", model)
    baseline = value(base_logits)
    layer_list = sorted(vecs)
    stepwise = {l: any(S.needs_forcing(model, h) for h, _ in parts[l]) for l in layer_list}
    out = torch.full((len(layer_list), len(coefficients)), float("nan"), dtype=torch.float64)
    kept = [] if keep_logits else None
    generations, generated = {}, {}
    for i, layer in enumerate(layer_list):
        row_logits = []
        for j, c in enumerate(coefficients):
            add = _AddHook(split_vector(vecs[layer], parts[layer]), c, steered)
            with torch.no_grad(), model.hooks(fwd_hooks=[(h, add) for h, _ in parts[layer]]):
                logits, _ = _steered_forward(model, ids, add, stepwise[layer])
                if max_new_tokens > 0:
                    toks = _generate(model, ids, add, stepwise[layer], max_new_tokens, temperature, top_k, seed)
                    generated[layer, c] = toks
                    generations[layer, c] = _decode_rows(model, toks)
            out[i, j] = value(logits)
            if kept is not None:
                row_logits.append(logits.detach())
        if kept is not None:
            kept.append(torch.stack(row_logits))
    return SteeringResult(site, layer_list, coefficients, list(model.cfg.layout), out, baseline, label,
                          {l: float(vecs[l].float().norm()) for l in layer_list}, generations, generated,
                          torch.stack(kept) if kept is not None else None, time.perf_counter() - start)


def _decode_rows(model, toks: Tensor) -> list[str]:
    """Each row of ``toks`` as text (``model.to_string`` shows ids a padded vocabulary has beyond the
    tokenizer's as ``"<|id|>"``; a TransformerLens adapter decodes with its tokenizer)."""
    to_string = getattr(model, "to_string", None)
    if callable(to_string):
        return list(to_string(toks))
    return [model.tokenizer.decode(r.tolist()) for r in toks]


def _steered_mask(positions, lengths: Tensor, width: int) -> Tensor | None:
    """``[batch, width]`` bool: where to steer. ``None`` (every position, generated ones too), ``"last"``
    (each input's last token), or absolute positions (an int or a list)."""
    if positions is None:
        return None
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    if isinstance(positions, str):
        if positions != "last":
            raise InputError(f"positions must be None (all), 'last' or absolute indices, got {positions!r}.")
        mask[torch.arange(len(lengths)), lengths - 1] = True
        return mask
    items = [positions] if isinstance(positions, int) else list(positions)
    if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0 for p in items):
        raise InputError(f"Steering positions must be absolute indices >= 0 (or 'last'), got {positions!r}.")
    if not items:
        raise InputError("positions is empty: nothing would be steered. Give None (every position), 'last' "
                         "or absolute indices.")
    beyond = sorted(int(p) for p in items if p >= width)
    if beyond:
        raise InputError(f"Steering positions {beyond} are beyond the input: the longest input has "
                         f"{int(lengths.max())} tokens and {width - int(lengths.max())} are generated, so positions "
                         f"0..{width - 1} exist; nothing would be steered there.")
    mask[:, items] = True
    return mask


def _scalar(v) -> Tensor:
    v = torch.as_tensor(v)
    return v.double().mean() if v.dim() else v.double()


def _steered_forward(model, ids: Tensor, hook: _AddHook, stepwise: bool, states=None, need_state: bool = False):
    """``(logits, states)`` of ``ids`` (continuing from ``states``) with ``hook`` active, its ``offset``
    set per piece; ``states`` is ``None`` when neither carried in nor asked for (``need_state``).

    A hook inside a recurrence (``stepwise``) sees the values of the *unsteered* recurrence, so
    additions at several positions in one forward would each be relative to an unsteered
    history. The input is therefore cut after every steered position and the state carried
    between the pieces: each addition then lands on the state that already holds the earlier
    ones, exactly as in token-by-token generation (the recurrence carries every addition)."""
    start = states.position if states is not None else 0
    T = ids.shape[1]
    cuts = [T]
    if stepwise and hook.coefficient != 0.0:
        m = hook.window(T) if hook.steered is not None else torch.ones(1, T, dtype=torch.bool)
        cuts = sorted({int(p) + 1 for p in m.any(0).nonzero().flatten().tolist()} | {T})
    if len(cuts) == 1 and states is None and not need_state:
        hook.offset = 0
        return model(ids), None  # one piece, no state: also models that carry none (a TransformerLens bridge)
    pieces, a = [], 0
    for b in cuts:
        hook.offset = start + a
        logits, states = model(ids[:, a:b], states=states, return_states=True)
        pieces.append(logits)
        a = b
    hook.offset = 0
    return torch.cat(pieces, dim=1), states


def _generate(model, ids: Tensor, hook: _AddHook, stepwise: bool, n: int, temperature: float, top_k, seed) -> Tensor:
    """Sample ``n`` tokens with the steering hook active, the state carried token by token (the hook's
    ``offset`` tracks absolute positions; a model without carried state recomputes the prefix).
    Returns ``[batch, pos + n]``."""
    gen = torch.Generator(device=model.device)
    if seed is not None:
        gen.manual_seed(seed)
    carried = model.carries_state
    logits, states = _steered_forward(model, ids, hook, stepwise, need_state=carried)
    out = [ids]
    for k in range(n):
        nxt = model.sample(logits[:, -1], temperature, top_k, gen)
        out.append(nxt[:, None])
        if k + 1 < n:
            if carried:
                logits, states = _steered_forward(model, nxt[:, None], hook, stepwise, states)
            else:
                logits, _ = _steered_forward(model, torch.cat(out, dim=1), hook, stepwise)
    return torch.cat(out, dim=1)
