r"""Memory maps: what each position reads from the past, for every architecture.

For every layer, a ``[batch, head, t, s]`` map of how much query position ``t`` reads
position ``s``:

* **attention**: the attention pattern (``hook_pattern``);
* **linear recurrences** (QRNN, LMU, HGRN2, Mamba, mLSTM, RWKV): the exact *implicit
  attention* obtained by unrolling the recurrence (Ali et al. 2024; Zimerman et al. 2024),
  one module per mixer in :mod:`probe.methods.implicit`, each checked by rebuilding the
  mixer's output from the matrix (``reconstruction_error``);
* **nonlinear recurrences** (LSTM, sLSTM): *gradient influence*
  ``G[t, s] = ||d y_t / d x_s||_F``, the Frobenius norm of the Jacobian of the mixer's output
  at ``t`` with respect to its input at ``s`` (exact by default; ``probes=n`` estimates it
  with ``n`` Gaussian probes per position). ``method="gradient"`` gives this map for every
  mixer, for a like-for-like comparison;
* **parallel mixers** (``"attn+mamba2"``, :mod:`probe.mixers.parallel`): the parts' maps side by side
  along the head axis (:mod:`probe.methods.implicit.parallel`), the output rebuilt as their sum;
* ``ff`` layers read nothing from the past (no map).

A term that reads only the current position is kept out of the matrix and shown apart
(``LayerMemory.skip``): Mamba's gated ``D`` skip, so that Mamba's map is Ali et al.'s hidden
attention ``alpha`` (times the output gate), not dominated by its diagonal.
``LayerMemory.with_skip()`` adds it back on the diagonal.

The maps are quadratic in the length (``[batch, head, T, T]`` per layer): :func:`memory_map`
sizes the work before building anything (:func:`memory_estimate`) and refuses past
``memory_limit`` bytes (4 GiB by default) with a message naming the budget and what to change.

It also measures the **state size versus position**: the numbers a model carries after
each token (``ModelState``), constant for recurrent layers and growing linearly with the
KV cache of attention layers.

Example::

    mm = memory_map(model, "def f(x): return x")
    mm.to_frame()               # tidy (layer, batch, t, s, weight)
    mm.figure(layer=0)          # heatmap with tokens on both axes
    mm.state_size_figure()      # numbers carried vs position, per layer
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from probe.errors import InputError, ProbeError
from probe.finite import check_finite
from probe.hooks import mixer_hook
from probe.methods import implicit
from probe.methods.implicit import ImplicitAttention
from probe.methods.support import input_checks as inputs
from probe.methods.support.gradient_mode import needs_gradients
from probe.mixers import MIXERS
from probe.result import MethodResult

METHODS = ("auto", "gradient")


@dataclass
class LayerMemory:
    """The memory map of one layer.

    Attributes:
        layer / mixer: which layer, and its mixer name.
        kind: ``"attention"``, ``"implicit attention"``, ``"gradient influence"`` or ``"none"``.
        matrix: ``[batch, head, t, s]`` (``None`` for ``"none"``); gradient influence has one "head".
        head_label: what the head axis indexes (``"head"``, ``"channel"``, ``"Legendre order"``).
        reconstruction_error: relative max-abs error of the mixer output rebuilt from ``matrix``
            and ``skip`` (attention and implicit attention; ``None`` otherwise).
        description: the formula of the map.
        skip: ``[batch, head, t]`` or ``None``: the weight with which position ``t`` reads its own
            input *outside* the recurrence (Mamba's gated ``D`` skip), not included in ``matrix``.
    """

    layer: int
    mixer: str
    kind: str
    matrix: Tensor | None
    head_label: str = ""
    reconstruction_error: float | None = None
    description: str = ""
    skip: Tensor | None = None

    def with_skip(self) -> Tensor | None:
        """``matrix`` with ``skip`` added on the diagonal: the whole linear map of the layer."""
        if self.matrix is None or self.skip is None:
            return self.matrix
        return self.matrix + torch.diag_embed(self.skip)

    def summary(self) -> Tensor | None:
        """``[batch, t, s]``: the mean over heads of ``|matrix|`` (attention weights are already >= 0)."""
        return None if self.matrix is None else self.matrix.abs().mean(1)


@dataclass
class MemoryMapResult(MethodResult):
    """Memory maps of the chosen layers and the state size versus position.

    Attributes:
        tokens / str_tokens: the input.
        layers: one :class:`LayerMemory` per layer analysed.
        state_sizes: DataFrame ``(layer, mixer, position, elements, bytes)``: numbers carried after
            ``position + 1`` tokens by each layer (mixer and MLP slot), per sequence.
    """

    tokens: Tensor
    str_tokens: list[list[str]]
    layers: list[LayerMemory]
    state_sizes: object = field(default=None, repr=False)  # pandas.DataFrame

    def layer(self, layer: int) -> LayerMemory:
        """The :class:`LayerMemory` of model layer ``layer`` (an ``InputError`` when it was not analysed)."""
        for lm in self.layers:
            if lm.layer == layer:
                return lm
        raise InputError(f"Layer {layer} is not in this memory map; it has layers "
                         f"{[lm.layer for lm in self.layers]}.")

    def to_frame(self):
        """Tidy rows ``(layer, mixer, kind, batch, query, key, weight)`` of every layer's head-mean map."""
        import pandas as pd

        frames = []
        for lm in self.layers:
            s = lm.summary()
            if s is None:
                continue
            B, T, _ = s.shape
            t_idx, s_idx = torch.tril_indices(T, T)
            for b in range(B):
                frames.append(pd.DataFrame({
                    "layer": lm.layer, "mixer": lm.mixer, "kind": lm.kind, "batch": b,
                    "query": t_idx.numpy(), "key": s_idx.numpy(),
                    "query_token": [self.str_tokens[b][i] for i in t_idx.tolist()],
                    "key_token": [self.str_tokens[b][i] for i in s_idx.tolist()],
                    "weight": s[b, t_idx, s_idx].double().cpu().numpy()}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["layer", "mixer", "kind", "batch", "query", "key", "query_token", "key_token", "weight"])

    def layer_frame(self):
        """One row per layer: kind, reconstruction error, numbers carried after the last token."""
        import pandas as pd

        rows = []
        for lm in self.layers:
            row = {"layer": lm.layer, "mixer": lm.mixer, "kind": lm.kind,
                   "reconstruction_error": lm.reconstruction_error, "description": lm.description}
            if self.state_sizes is not None and len(self.state_sizes):
                sizes = self.state_sizes[self.state_sizes["layer"] == lm.layer]
                row["state_elements_last"] = int(sizes["elements"].iloc[-1]) if len(sizes) else 0
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, layer: int | None = None, batch: int = 0, head: int | None = None, normalize: bool = True,
               with_skip: bool = False):
        """Heatmap(s) of query x key with the tokens on both axes.

        ``layer=None`` draws every analysed layer side by side; ``head`` picks one head /
        channel (default: the mean of ``|A|`` over heads); ``normalize`` scales each row to
        a maximum of 1 so that rows are comparable. A layer with a skip term (Mamba's ``D``)
        is drawn without it (its title says "skip apart") unless ``with_skip``.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        b = inputs.check_position(batch, self.tokens.shape[0], "batch")
        chosen = [lm for lm in self.layers if lm.matrix is not None]
        if layer is not None:
            chosen = [self.layer(layer)]
            if chosen[0].matrix is None:
                raise InputError(f"Layer {layer} ({chosen[0].mixer}) reads nothing from the past; it has no map.")
        if not chosen:
            fig = go.Figure()
            fig.add_annotation(text="No layer here mixes positions (position-wise ff layers only): "
                                    "each position reads only itself.", showarrow=False, x=0.5, y=0.5,
                               xref="paper", yref="paper")
            fig.update_layout(title="Memory maps", xaxis_visible=False, yaxis_visible=False)
            return fig
        labels = inputs.axis_labels(self.str_tokens[b])
        skip_note = " (with its skip)" if with_skip else " (skip apart)"
        fig = make_subplots(rows=1, cols=len(chosen), horizontal_spacing=0.04,
                            subplot_titles=[f"L{lm.layer} {lm.mixer}: {lm.kind}"
                                            + (skip_note if lm.skip is not None else "") for lm in chosen])
        for col, lm in enumerate(chosen, start=1):
            matrix = lm.with_skip() if with_skip else lm.matrix
            if head is None:
                z = matrix.abs().mean(1)[b]
            else:
                if not 0 <= head < matrix.shape[1]:
                    raise InputError(f"head {head} is out of range for layer {lm.layer} "
                                     f"({matrix.shape[1]} {lm.head_label}s).")
                z = matrix[b, head]
            z = z.double()
            if normalize:
                z = z / z.abs().amax(-1, keepdim=True).clamp_min(1e-30)
            T = z.shape[0]
            z = torch.where(torch.ones(T, T, dtype=torch.bool).tril(), z, torch.full_like(z, float("nan")))
            fig.add_trace(go.Heatmap(z=z.cpu().numpy(), x=labels, y=labels, coloraxis="coloraxis",
                                     hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"),
                          row=1, col=col)
            fig.update_xaxes(title_text="key position (read)", type="category", row=1, col=col)
            fig.update_yaxes(autorange="reversed", type="category", row=1, col=col,
                             title_text="query position (reading)" if col == 1 else None)
        what = "mean |A| over heads" if head is None else f"head {head}"
        fig.update_layout(title=f"Memory maps: what each position reads from the past ({what}"
                                f"{', rows scaled to max 1' if normalize else ''})",
                          coloraxis={"colorscale": "Viridis"}, width=max(500, 420 * len(chosen)))
        return fig

    def state_size_figure(self):
        """Numbers carried after each token, per layer and in total (log scale)."""
        import plotly.graph_objects as go

        if self.state_sizes is None or not len(self.state_sizes):
            raise InputError("This result has no state sizes (memory_map(..., state_sizes=False)).")
        df = self.state_sizes
        fig = go.Figure()
        for layer, part in df.groupby("layer"):
            fig.add_trace(go.Scatter(x=part["position"] + 1, y=part["elements"], mode="lines",
                                     name=f"L{layer} {part['mixer'].iloc[0]}"))
        total = df.groupby("position")["elements"].sum()
        fig.add_trace(go.Scatter(x=total.index + 1, y=total.values, mode="lines", name="whole model",
                                 line={"dash": "dash", "color": "black"}))
        fig.update_layout(title="State size vs tokens seen (constant for recurrent layers, linear for attention)",
                          xaxis_title="tokens seen", yaxis_title="numbers carried per sequence",
                          yaxis_type="log")
        return fig


# -- sizing ------------------------------------------------------------------------------
#: bytes a memory map may take by default (its kept maps plus the largest build's scratch)
MEMORY_LIMIT = 4 * 2**30


def memory_estimate(model, layers: list[int], method: str, batch: int, T: int) -> dict[int, tuple[int, int]]:
    """Bytes per analysed layer, ``{layer: (kept, scratch)}``: the ``[batch, head, T, T]`` map it keeps
    and the most its build holds besides (from each unrolling's declared ``size``; gradient influence
    sums in float64). Position-wise layers take nothing."""
    item = torch.finfo(model.dtype).bits // 8
    pairs = batch * T * T
    out = {}
    for i in layers:
        name = model.cfg.layout[i]
        if not MIXERS[name].mixes_positions:
            continue
        if method == "auto" and name in implicit.REGISTRY:
            kept, scratch = implicit.REGISTRY[name].size(model, i)
            out[i] = (kept * pairs * item, scratch * pairs * item)
        else:
            out[i] = (pairs * item, 2 * pairs * 8)
    return out


def check_memory(model, layers: list[int], method: str, batch: int, T: int, memory_limit: float) -> None:
    """An ``InputError`` naming the budget and the ways out when the maps would pass ``memory_limit`` bytes."""
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, float)) or not memory_limit > 0:
        raise InputError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}.")
    sizes = memory_estimate(model, layers, method, batch, T)
    need = sum(k for k, _ in sizes.values()) + max((s for _, s in sizes.values()), default=0)
    if need <= memory_limit:
        return
    worst = max(sizes, key=lambda i: sum(sizes[i]))
    gib = lambda n: f"{n / 2**30:.1f} GiB"
    raise InputError(
        f"This memory map would take about {gib(need)} ({batch} x {T} tokens; each layer keeps a "
        f"[batch, head, {T}, {T}] map, the largest layer {worst} ({model.cfg.layout[worst]}) "
        f"{gib(sum(sizes[worst]))} with its build), above memory_limit={gib(memory_limit)}. The size grows "
        "with the square of the length: pass a shorter input, fewer layers (layers=[...]) or one "
        "sequence at a time, or raise memory_limit= (bytes) if the machine has the memory.")


# -- per-layer maps ----------------------------------------------------------------------
def implicit_attention(model, input, layer: int, prepend_bos: bool | None = None,
                       memory_limit: float = MEMORY_LIMIT) -> tuple[ImplicitAttention, dict]:
    """The exact memory map of one attention / linear-recurrence layer and its reconstruction errors.

    Returns ``(ImplicitAttention, {"output": err, "signal": err})``; raises a
    :class:`probe.errors.ProbeError` naming the supported mixers for any other mixer, and an
    ``InputError`` when the matrix would pass ``memory_limit`` bytes (see :func:`check_memory`).

    Example::

        ia, errors = implicit_attention(model, "def f(x):", layer=0)
        ia.matrix                  # [batch, head, t, s]
        errors["output"]           # relative error of the layer output rebuilt from ia: float round-off
    """
    model = inputs.as_model(model)
    tokens = inputs.as_tokens(model, input, prepend_bos)
    layer = inputs.check_layer(model, layer)
    implicit.unrolling(model.cfg.layout[layer])  # an unsupported mixer is named before sizing
    check_memory(model, [layer], "auto", *tokens.shape, memory_limit)
    return _implicit(model, tokens, [layer])[layer]


def _implicit(model, tokens: Tensor, layers: list[int]) -> dict[int, tuple[ImplicitAttention, dict]]:
    """Implicit attention of several layers from one forward pass."""
    unrollings = {i: implicit.unrolling(model.cfg.layout[i]) for i in layers}
    names = []
    for i, u in unrollings.items():
        names += [mixer_hook(i, h) for h in u.hooks]
        names += [f"blocks.{i}.hook_mixer_in", f"blocks.{i}.hook_mixer_out"]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ProbeError(f"The implicit attention needs hooks this model does not have: {missing[:3]}. "
                         "Is the mixer a different version from the one the unrolling was written for?")
    found: dict[str, Tensor] = {}

    def save(x, hook):
        found[hook.name] = x.detach()

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(n, save) for n in names]):
            model(tokens, return_type=None)
        out = {}
        for i, u in unrollings.items():
            hooks = {h: found[mixer_hook(i, h)] for h in u.hooks}
            ia = u.build(model, i, hooks, found[f"blocks.{i}.hook_mixer_in"])
            check_finite(ia.matrix, f"the memory map of layer {i} ({model.cfg.layout[i]})", model)
            out[i] = (ia, ia.errors(found[f"blocks.{i}.hook_mixer_out"]))
    return out


@needs_gradients
def gradient_influence(model, input, layer: int, probes: int | None = None, chunk: int = 256,
                       seed: int = 0, prepend_bos: bool | None = None) -> Tensor:
    """``G [batch, t, s] = ||d y_t / d x_s||_F``: the Jacobian norm of layer ``layer``'s mixer output at
    ``t`` with respect to its input (``hook_mixer_in``) at ``s``.

    Exact by default (``d_model`` backward rows per position, batched ``chunk`` at a time by
    replicating the sequence); with ``probes=n``, an unbiased estimate of ``G^2`` from ``n``
    Gaussian probes per position (``E ||v^T J||^2 = ||J||_F^2``), ``d_model / n`` times cheaper.
    Works for every mixer; the model runs only up to the layer.

    Example::

        G = gradient_influence(model, "def f(x):", layer=0)          # [1, pos, pos], zero above the diagonal
        G = gradient_influence(model, "def f(x):", layer=0, probes=8)  # estimated, d_model / 8 times cheaper
    """
    model = inputs.as_model(model)
    tokens = inputs.as_tokens(model, input, prepend_bos)
    layer = inputs.check_layer(model, layer)
    if probes is not None and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise InputError(f"probes must be a positive integer or None (exact), got {probes!r}.")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk!r}.")
    B, T = tokens.shape
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed)
    n_rows = d if probes is None else probes
    # cotangent rows: (position t, direction) pairs; identity directions when exact
    dirs = torch.eye(d) if probes is None else torch.randn(probes, d, generator=gen) / probes ** 0.5
    rows_t = torch.arange(T).repeat_interleave(n_rows)
    rows_v = dirs.repeat(T, 1)
    G2 = torch.zeros(B, T, T, dtype=torch.float64)
    found: dict[str, Tensor] = {}

    def make_leaf(x, hook):
        leaf = x.detach().requires_grad_(True)
        found["x"] = leaf
        return leaf

    def keep_out(y, hook):
        found["y"] = y

    hooks = [(f"blocks.{layer}.hook_mixer_in", make_leaf), (f"blocks.{layer}.hook_mixer_out", keep_out)]
    for b in range(B):
        for lo in range(0, rows_t.numel(), chunk):
            t_idx, v = rows_t[lo : lo + chunk], rows_v[lo : lo + chunk].to(model.device, model.dtype)
            k = t_idx.numel()
            with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
                model(tokens[b : b + 1].repeat(k, 1), return_type=None, stop_at_layer=layer + 1)
            cot = torch.zeros(k, T, d, device=model.device, dtype=model.dtype)
            cot[torch.arange(k, device=model.device), t_idx.to(model.device)] = v  # both indices on one device
            (g,) = torch.autograd.grad(found["y"], found["x"], grad_outputs=cot)
            sq = g.double().pow(2).sum(-1).cpu()  # [k, s]
            G2[b].index_add_(0, t_idx, sq)
            found.clear()
    check_finite(G2, f"the gradient influence of layer {layer} ({model.cfg.layout[layer]})", model)
    return G2.sqrt().to(model.dtype)


def state_sizes(model, input, prepend_bos: bool | None = None):
    """Numbers carried per sequence by every layer after each token, measured from the model's own
    ``ModelState`` while it reads ``input`` one token at a time. DataFrame
    ``(layer, mixer, position, elements, bytes)``.

    A TransformerLens bridge carries no probe state; for it the KV cache is counted instead
    (``2 * heads * d_head`` numbers per token and attention layer), which is what it holds.

    Example::

        sizes = state_sizes(model, "def f(x):")
        sizes.pivot_table(index="position", columns="layer", values="elements")  # flat for RNNs, growing for attention
    """
    import pandas as pd

    model = inputs.as_model(model)
    tokens = inputs.as_tokens(model, input, prepend_bos)[:1]
    rows, states = [], None
    if not model.carries_state:  # the KV cache a model without carried state (a bridge) holds
        per_token = 2 * model.cfg.n_heads * model.cfg.d_head
        size = torch.finfo(model.dtype).bits // 8
        for t in range(tokens.shape[1]):
            for i, name in enumerate(model.cfg.layout):
                rows.append({"layer": i, "mixer": name, "position": t, "elements": per_token * (t + 1),
                             "bytes": per_token * (t + 1) * size})
        return pd.DataFrame(rows)
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            _, states = model(tokens[:, t : t + 1], states=states, return_states=True, return_type=None)
            for i, layer in enumerate(states.layers):
                tensors = [x for part in layer.values() for x in part.values()]
                n = sum(x[0].numel() for x in tensors)
                nbytes = sum(x[0].numel() * x.element_size() for x in tensors)
                rows.append({"layer": i, "mixer": model.cfg.layout[i], "position": t, "elements": n,
                             "bytes": nbytes})
    return pd.DataFrame(rows)


def memory_map(model, input, layers=None, method: str = "auto", probes: int | None = None,
               with_state_sizes: bool = True, memory_limit: float = MEMORY_LIMIT,
               prepend_bos: bool | None = None) -> MemoryMapResult:
    """What each position reads from the past, layer by layer (see the module docstring).

    Args:
        input: text, texts or token ids ``[batch, pos]``.
        layers: layer indices (default: all).
        method: ``"auto"`` (pattern / exact implicit attention / gradient influence by mixer kind)
            or ``"gradient"`` (gradient influence for every mixing layer).
        probes: for gradient influence, ``None`` (exact) or a number of random probes per position.
        with_state_sizes: also measure the state size after every token (``state_sizes``).
        memory_limit: bytes the maps may take (default 4 GiB); past it an ``InputError`` says how
            much they would take and how to shrink them, before anything is built.

    Returns a :class:`MemoryMapResult`: one :class:`LayerMemory` per layer (``matrix
    [batch, head, t, s]``) and the state sizes.

    Example::

        mm = memory_map(model, "x = [1, 2, 3]; print(x[0])")
        mm.layer_frame()           # per layer: kind of map, reconstruction error, state elements
        mm.figure(layer=0)         # t x s heatmap: how much position t reads position s
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    model = inputs.as_model(model)
    tokens = inputs.as_tokens(model, input, prepend_bos)
    layers = inputs.check_layers(model, layers)
    layout = model.cfg.layout
    exact = [i for i in layers if method == "auto" and layout[i] in implicit.REGISTRY]
    unknown = [i for i in layers if method == "auto" and layout[i] not in implicit.REGISTRY
               and not MIXERS[layout[i]].nonlinear_state and MIXERS[layout[i]].mixes_positions]
    if unknown:
        implicit.unrolling(layout[unknown[0]])  # raises, naming what is supported
    check_memory(model, layers, method, *tokens.shape, memory_limit)
    built = _implicit(model, tokens, exact) if exact else {}
    result = []
    for i in layers:
        name = layout[i]
        if not MIXERS[name].mixes_positions:
            result.append(LayerMemory(i, name, "none", None, description="position-wise: reads no other position"))
        elif i in built:
            ia, errs = built[i]
            kind = "attention" if MIXERS[name].is_attention else "implicit attention"
            result.append(LayerMemory(i, name, kind, ia.matrix, ia.head_label, errs["output"], ia.description,
                                      ia.skip))
        else:
            G = gradient_influence(model, tokens, i, probes=probes)
            result.append(LayerMemory(i, name, "gradient influence", G.unsqueeze(1), "map",
                                      description="||d mixer_out_t / d mixer_in_s||_F"
                                                  + (" (exact)" if probes is None else f" ({probes} probes)")))
    sizes = state_sizes(model, tokens) if with_state_sizes else None
    return MemoryMapResult(tokens, inputs.str_tokens(model, tokens), result, sizes)
