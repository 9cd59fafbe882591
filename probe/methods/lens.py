r"""Logit lens and tuned lens: what the residual stream predicts after every layer.

Lens layer ``l`` (``0 .. n_layers``) is the residual stream after ``l`` blocks:
``l = 0`` is the embedding (``blocks.0.hook_resid_pre``), ``l >= 1`` is
``blocks.{l-1}.hook_resid_post``, and ``l = n_layers`` gives the model's own logits.

**Logit lens** (nostalgebraist 2020): read every layer out with the model's final norm
and unembedding, ``q_l = softmax(norm(x_l) W_U + b_U)``.

**Tuned lens** (Belrose et al. 2023): first map ``x_l`` with a learned affine
*translator* ``A_l x + b_l`` (identity-initialised, so an untrained tuned lens *is* the
logit lens), trained to minimise ``KL(p || q_l)`` where ``p`` is the model's final
distribution. The last layer needs no translator (it is the output).

Per layer and position, both report ``KL(p || q_l)`` (nats), the next-token cross-entropy
of ``q_l`` (nats; positions ``0 .. pos-2``), and whether ``q_l``'s top token equals ``p``'s.
Paulo et al. 2024 found the tuned lens beats the logit lens on Mamba and RWKV as on
transformers; :func:`compare_lenses` gives the held-out table for that comparison.

Example::

    res = logit_lens(model, "def f(x):")
    res.to_frame()            # per-layer mean KL / cross-entropy / top-1 agreement
    res.figure()              # layer x position heatmap of top tokens
    lens = TunedLens(model).fit(model, corpus_tokens, steps=300)
    lens.save()               # beside the model: <checkpoint>/tuned_lens.{safetensors,json}
    lens = TunedLens.load(model)
    lens.run(model, "def f(x):").figure()
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.atomic import directory_lock, fsync_path, temp_prefix, write_atomically, write_new_file
from probe.data.harvest_reader import is_harvest, open_harvest
from probe.errors import CheckpointError, InputError
from probe.finite import check_finite
from probe.hooks import residual_before
from probe.methods.support import input_checks as inputs
from probe.methods.support.fingerprint import check_harvest_model, config_identity, model_fingerprint  # noqa: F401
from probe.methods.support.gradient_mode import needs_gradients
from probe.methods.support.logit_readout import readout
from probe.result import MethodResult

LENS_WEIGHTS, LENS_CONFIG = "tuned_lens.safetensors", "tuned_lens.json"
LENS_FORMAT = "probe-tuned-lens"


def lens_site(model, layer: int) -> str:
    """Hook name of lens layer ``layer``: the residual stream after ``layer`` blocks."""
    return residual_before(layer)


def layer_label(model, layer: int) -> str:
    """``"embed"`` for layer 0, else ``"3 (attn)"``: the block the stream has just left."""
    return "embed" if layer == 0 else f"{layer} ({model.cfg.layout[layer - 1]})"


def residual_streams(model, tokens: Tensor, layers: list[int]) -> tuple[dict[int, Tensor], Tensor]:
    """``({layer: resid [batch, pos, d_model]}, logits [batch, pos, vocab])`` from one forward, via hooks."""
    found: dict[str, Tensor] = {}

    def save(x, hook):
        found[hook.name] = x

    names = sorted({lens_site(model, l) for l in layers})
    with model.hooks(fwd_hooks=[(n, save) for n in names]):
        logits = model(tokens)
    return {l: found[lens_site(model, l)] for l in layers}, logits


# -- results ---------------------------------------------------------------------------
@dataclass
class LensResult(MethodResult):
    """A lens applied to one batch of text.

    Attributes:
        kind: ``"logit lens"`` or ``"tuned lens"``.
        tokens: ``[batch, pos]`` input ids; ``str_tokens`` their display strings.
        layers: lens layers (residual stream after ``l`` blocks), ``layer_labels`` their names.
        kl: ``[layer, batch, pos]`` ``KL(final || lens)`` in nats.
        cross_entropy: ``[layer, batch, pos - 1]`` next-token loss of the lens in nats.
        top1_agreement: ``[layer, batch, pos]`` bool, lens top token == final top token.
        top_tokens / top_probs: ``[layer, batch, pos]`` the lens's most likely token and its probability.
        logits: ``[layer, batch, pos, vocab]`` lens logits (only with ``keep_logits=True``).
        lengths: tokens of each text before padding, for a list of texts (``None``: no padding); the
            means of :meth:`to_frame` leave the padding out.
    """

    kind: str
    tokens: Tensor
    str_tokens: list[list[str]]
    layers: list[int]
    layer_labels: list[str]
    kl: Tensor
    cross_entropy: Tensor
    top1_agreement: Tensor
    top_tokens: Tensor
    top_probs: Tensor
    top_strs: list[list[list[str]]] = field(repr=False, default_factory=list)
    logits: Tensor | None = field(repr=False, default=None)
    lengths: list[int] | None = None

    def to_frame(self):
        """One row per lens layer: mean KL, cross-entropy and top-1 agreement over batch and positions
        (the padding of shorter texts left out)."""
        import pandas as pd

        _, B, T = self.kl.shape
        n = torch.tensor(self.lengths if self.lengths is not None else [T] * B)
        valid = torch.arange(T)[None, :] < n[:, None]  # [batch, pos]: not padding
        valid_ce = valid[:, 1:]  # cross_entropy[:, t] predicts token t + 1, which must be text too

        def mean(x: Tensor, mask: Tensor) -> float:
            if bool(mask.all()):
                return float(x.mean()) if x.numel() else float("nan")
            return float(x[mask.to(x.device)].mean()) if bool(mask.any()) else float("nan")

        rows = []
        for i, (layer, label) in enumerate(zip(self.layers, self.layer_labels)):
            rows.append({
                "lens": self.kind, "layer": layer, "label": label,
                "kl": mean(self.kl[i], valid),
                "cross_entropy": mean(self.cross_entropy[i], valid_ce),
                "top1_agreement": mean(self.top1_agreement[i].float(), valid),
            })
        return pd.DataFrame(rows)

    def position_frame(self):
        """Tidy per-(layer, batch, position) rows with the top token and the metrics."""
        import pandas as pd

        rows = []
        L, B, T = self.kl.shape
        for i in range(L):
            for b in range(B):
                for t in range(T):
                    rows.append({
                        "lens": self.kind, "layer": self.layers[i], "batch": b, "position": t,
                        "token": self.str_tokens[b][t], "top_token": self.top_strs[i][b][t],
                        "top_prob": float(self.top_probs[i, b, t]), "kl": float(self.kl[i, b, t]),
                        "cross_entropy": float(self.cross_entropy[i, b, t]) if t < T - 1 else float("nan"),
                        "top1_agreement": bool(self.top1_agreement[i, b, t]),
                    })
        return pd.DataFrame(rows)

    def figure(self, batch: int = 0, color: str = "kl"):
        """Layer x position heatmap: each cell shows the lens's top token; colour is ``"kl"``
        (to the final distribution) or ``"prob"`` (of the top token)."""
        import plotly.graph_objects as go

        if color not in ("kl", "prob"):
            raise InputError(f"color must be 'kl' or 'prob', got {color!r}.")
        b = inputs.check_position(batch, self.kl.shape[1], "batch")
        z = (self.kl if color == "kl" else self.top_probs)[:, b].float().cpu().numpy()
        text = [row[b] for row in self.top_strs]
        x = inputs.axis_labels(self.str_tokens[b])
        fig = go.Figure(go.Heatmap(
            z=z, x=x, y=self.layer_labels, text=text, texttemplate="%{text}",
            colorscale="Viridis" if color == "kl" else "Blues", reversescale=color == "kl",
            colorbar={"title": "KL to final (nats)" if color == "kl" else "top-token prob"},
            hovertemplate="layer %{y}<br>input %{x}<br>top token %{text}<br>%{z:.3f}<extra></extra>"))
        fig.update_layout(
            title=f"{self.kind.capitalize()}: top next-token prediction after each layer",
            xaxis_title="input position : token", yaxis_title="residual stream after layer",
            yaxis={"type": "category"}, xaxis={"type": "category"})
        return fig

    def metric_figure(self):
        """Per-layer mean KL, cross-entropy and top-1 agreement as lines."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_frame()
        fig = make_subplots(rows=1, cols=3, subplot_titles=("KL to final (nats)", "next-token loss (nats)",
                                                            "top-1 agreement with final"))
        for col, key in enumerate(("kl", "cross_entropy", "top1_agreement"), start=1):
            fig.add_trace(go.Scatter(x=df["label"], y=df[key], mode="lines+markers", name=key), row=1, col=col)
            fig.update_xaxes(title_text="layer", row=1, col=col)
        fig.update_layout(title=f"{self.kind.capitalize()} by layer", showlegend=False)
        return fig


def _apply_lens(model, input, layers, translate: Callable[[Tensor, int], Tensor], kind: str,
                keep_logits: bool, prepend_bos) -> LensResult:
    model = inputs.as_model(model)
    tokens = inputs.as_tokens(model, input, prepend_bos)
    layers = inputs.check_layers(model, layers, allow_end=True)
    with torch.no_grad():
        resid, final = residual_streams(model, tokens, layers)
        check_finite(final, "the model's logits", model)
        logp_final = F.log_softmax(final.float(), dim=-1)
        final_top = final.argmax(-1)
        kl, ce, agree, top, prob, kept = [], [], [], [], [], []
        for layer in layers:
            logits = check_finite(readout(model, translate(resid[layer], layer)).float(),
                                  f"the {kind} logits of layer {layer}", model)
            logp = F.log_softmax(logits, dim=-1)
            kl.append(kl_divergence(logp_final, logp))
            ce.append(-logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])
            p, t = logp.max(-1)
            top.append(t)
            prob.append(p.exp())
            agree.append(t == final_top)
            if keep_logits:
                kept.append(logits)
    top_t = torch.stack(top)
    top_strs = [[[inputs.printable(inputs.token_str(model, i)) for i in row] for row in layer.tolist()]
                for layer in top_t]
    return LensResult(kind, tokens, inputs.str_tokens(model, tokens), layers,
                      [layer_label(model, l) for l in layers], torch.stack(kl), torch.stack(ce),
                      torch.stack(agree), top_t, torch.stack(prob), top_strs,
                      torch.stack(kept) if keep_logits else None, inputs.text_lengths(model, input, prepend_bos))


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def logit_lens(model, input, layers=None, keep_logits: bool = False, prepend_bos: bool | None = None) -> LensResult:
    """The logit lens: every residual stream read out with the final norm and unembedding.

    Args:
        model: a :class:`probe.HookedLM`.
        input: text, texts or token ids ``[batch, pos]``.
        layers: lens layers ``0 .. n_layers`` (residual stream after that many blocks); all by default.
        keep_logits: also keep the ``[layer, batch, pos, vocab]`` lens logits.

    Returns a :class:`LensResult` (``kl [layer, batch, pos]``, ``cross_entropy``, top tokens).

    Example::

        res = logit_lens(model, "def add(a, b): return a + b")
        res.to_frame()             # per layer: mean KL to the final distribution, loss, top-1 agreement
        res.figure()               # layer x position heatmap of the lens's top tokens
    """
    return _apply_lens(model, input, layers, lambda x, layer: x, "logit lens", keep_logits, prepend_bos)


# -- the tuned lens ------------------------------------------------------------------------
class TunedLens(nn.Module):
    """Per-layer affine translators ``x -> x W_l^T + b_l`` for lens layers ``0 .. n_layers - 1``.

    ``weight [n_layers, d_model, d_model]`` starts at the identity and ``bias [n_layers, d_model]``
    at zero, so before training the tuned lens equals the logit lens. They are float32 for a float16 /
    bfloat16 model (the stream is translated in float32 and cast back). Train with :meth:`fit`,
    apply with :meth:`run`, persist with :meth:`save` / :meth:`load` (safetensors + JSON).
    """

    def __init__(self, model):
        super().__init__()
        model = inputs.as_model(model)
        self.d_model, self.n_layers = model.cfg.d_model, model.cfg.n_layers
        # float32 at least: Adam's eps (1e-8) and small updates vanish in float16 / bfloat16 (NaN losses)
        dtype = torch.promote_types(model.dtype, torch.float32)
        eye = torch.eye(self.d_model, device=model.device, dtype=dtype)
        self.weight = nn.Parameter(eye.repeat(self.n_layers, 1, 1))
        self.bias = nn.Parameter(torch.zeros(self.n_layers, self.d_model, device=model.device, dtype=dtype))
        self.fingerprint: str | None = None  # of the model it was trained for; None until trained
        self.model_config = config_identity(model)
        self.train_info: dict[str, Any] = {}

    # -- translation ------------------------------------------------------------------
    def forward(self, resid: Tensor, layer: int) -> Tensor:
        """Translate the residual stream of lens layer ``layer`` (identity for the last layer)."""
        if layer >= self.n_layers:
            return resid
        out = resid.to(self.weight.dtype) @ self.weight[layer].T + self.bias[layer]
        return out.to(resid.dtype)

    def check_model(self, model) -> None:
        """Raise unless this lens fits ``model`` (same shape; same weights once trained)."""
        model = inputs.as_model(model)
        if (model.cfg.d_model, model.cfg.n_layers) != (self.d_model, self.n_layers):
            raise InputError(f"This tuned lens was made for a model with d_model={self.d_model}, "
                             f"n_layers={self.n_layers}; this model has d_model={model.cfg.d_model}, "
                             f"n_layers={model.cfg.n_layers}. Train one for it with TunedLens(model).fit(...).")
        if self.fingerprint is not None and model_fingerprint(model) != self.fingerprint:
            raise InputError("This tuned lens was trained for another model (its weights differ from the "
                             f"ones the lens was fitted on; fingerprint {self.fingerprint}). Load the lens that "
                             "was saved beside this model, or train one with TunedLens(model).fit(...).")

    def run(self, model, input, layers=None, keep_logits: bool = False, prepend_bos: bool | None = None) -> LensResult:
        """Apply the tuned lens to ``input``: a :class:`LensResult` like :func:`logit_lens`'s."""
        self.check_model(model)
        return _apply_lens(model, input, layers, self.forward, "tuned lens", keep_logits, prepend_bos)

    # -- training ---------------------------------------------------------------------
    @needs_gradients
    def fit(self, model, data, steps: int = 250, batch_size: int = 8, seq_len: int = 128, lr: float = 1e-3,
            warmup: int = 20, seed: int = 0, progress: bool = False) -> "TunedLens":
        """Train the translators to minimise ``sum_l KL(final || lens_l)`` on ``data``.

        The model is frozen and unchanged (gradients are taken with respect to the lens only).
        ``data``: a corpus (text, token ids or a TokenStream, see
        :func:`probe.methods.support.input_checks.token_stream`); windows of ``seq_len`` tokens are drawn at
        random offsets, ``batch_size`` per step. ``data`` may also be a harvest folder holding
        ``resid_pre`` and ``resid_post`` at every layer (:mod:`probe.harvest`): each step then takes
        ``batch_size * seq_len`` harvested positions, streamed shard by shard, without running the
        model. Adam with linear warm-up and cosine decay.
        Records the loss curve and the wall time in ``train_info``.
        """
        model = inputs.as_model(model)
        if (model.cfg.d_model, model.cfg.n_layers) != (self.d_model, self.n_layers):
            self.check_model(model)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (steps, batch_size, seq_len)) \
                or steps < 1 or batch_size < 1 or seq_len < 2:
            raise InputError(f"fit needs steps >= 1, batch_size >= 1, seq_len >= 2 (integers); got {steps!r}, "
                             f"{batch_size!r}, {seq_len!r}.")
        limit = model.cfg.context_limit
        if limit is not None and seq_len > limit:
            raise InputError(f"seq_len={seq_len} exceeds this model's context n_ctx={limit}.")
        harvested = None
        if is_harvest(data):  # a harvest folder streams
            harvested = lens_batches(model, data, batch_size * seq_len, seed)
        else:
            stream = inputs.token_stream(model, data)
        gen = torch.Generator().manual_seed(seed)
        layers = list(range(self.n_layers))
        params = list(self.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warmup_cosine(s, warmup, steps))
        losses = []
        start = time.perf_counter()
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="tuned lens")
        for step in iterator:
            with torch.no_grad():
                if harvested is not None:  # batch_size * seq_len harvested positions
                    resid, final = next(harvested)
                else:
                    batch = inputs.sample_windows(stream, batch_size, seq_len, gen).to(model.device)
                    resid, final = residual_streams(model, batch, layers)
                check_finite(final, f"the model's logits at tuned-lens step {step}", model)
                logp_final = F.log_softmax(final.float(), dim=-1)
            loss = sum(kl_divergence(logp_final, F.log_softmax(readout(model, self(resid[l], l)).float(), -1)).mean()
                       for l in layers)
            check_finite(loss, f"the tuned-lens loss at step {step} (the model's logits are finite: a smaller lr?)")
            grads = torch.autograd.grad(loss, params)  # the model's .grad stays untouched
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(loss.item() / len(layers))
        seconds = time.perf_counter() - start
        self.fingerprint = model_fingerprint(model)
        self.model_config = config_identity(model)
        self.train_info = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
                           "tokens": steps * batch_size * seq_len, "seconds": seconds,
                           "seconds_per_layer": seconds / self.n_layers, "loss_first": losses[0],
                           "loss_last": losses[-1], "losses": losses}
        return self

    # -- persistence ------------------------------------------------------------------
    @staticmethod
    def default_path(model) -> Path:
        path = getattr(model, "checkpoint_path", None)
        if not path:
            raise InputError("This model was not loaded from a checkpoint directory, so there is no place "
                             "'beside the model'; pass a directory: lens.save(path) / TunedLens.load(path, model).")
        return Path(path)

    def save(self, path: str | Path | None = None, model=None) -> Path:
        """Write ``tuned_lens.safetensors`` and ``tuned_lens.json`` into directory ``path``
        (default: the directory ``model`` was loaded from). Returns the directory.

        Crash-safe, as :mod:`probe.io.checkpoint` saves a model, under the folder's
        :func:`~probe.atomic.directory_lock`: the weights go to ``.tuned_lens.safetensors.<id>``,
        ``tuned_lens.json`` naming ``<id>`` replaces the old one atomically (the commit point), then the
        weights are renamed into place. Killed before the commit, the old lens stays; after it, the new
        one loads. Temporaries a killed save left are deleted by the next save or load; no other file
        in the folder (the model's checkpoint, notes) is touched."""
        import uuid

        from safetensors.torch import save as safetensors_bytes

        if path is None:
            if model is None:
                raise InputError("Give a directory (lens.save(path)) or the model to save beside (model=...).")
            path = self.default_path(model)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_id = uuid.uuid4().hex
        info = {k: v for k, v in self.train_info.items() if k != "losses"}
        payload = {"format": LENS_FORMAT, "version": 1, "d_model": self.d_model, "n_layers": self.n_layers,
                   "model_fingerprint": self.fingerprint, "model_config": self.model_config, "train": info,
                   "weights_id": save_id}
        tensors = {"weight": self.weight.detach().cpu().contiguous(),  # float32, or float64 for a float64 model
                   "bias": self.bias.detach().cpu().contiguous()}
        with directory_lock(path):
            _settle_lens(path)
            pending = write_new_file(_pending_weights(path, save_id), safetensors_bytes(tensors))
            write_atomically(path / LENS_CONFIG, lambda tmp: tmp.write_text(json.dumps(payload, indent=2,
                                                                                         sort_keys=True)))
            os.replace(pending, path / LENS_WEIGHTS)
            fsync_path(path)
        return path

    @classmethod
    def load(cls, path_or_model, model=None) -> "TunedLens":
        """Load a tuned lens: ``TunedLens.load(model)`` (beside the model's checkpoint) or
        ``TunedLens.load(path, model)``. Refuses a lens trained for another model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if model is None:
            if isinstance(path_or_model, (str, Path)):
                raise InputError("TunedLens.load(path, model) needs the model the lens is for.")
            model, path = path_or_model, cls.default_path(path_or_model)
        else:
            path = Path(path_or_model)
        _settle_lens_if_free(path)
        cfg_file, w_file = path / LENS_CONFIG, _committed_weights(path)
        if not cfg_file.is_file() or not w_file.is_file():
            raise CheckpointError(f"No tuned lens in {str(path)!r}: expected {LENS_CONFIG} and {LENS_WEIGHTS} "
                                  "(written by TunedLens.save). Train one with TunedLens(model).fit(data).")
        try:
            payload = json.loads(cfg_file.read_text())
            tensors = load_file(str(w_file))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
            raise CheckpointError(f"Unreadable tuned lens in {str(path)!r}: {exc}") from exc
        if payload.get("format") != LENS_FORMAT:
            raise CheckpointError(f"{cfg_file} is not a tuned lens file (format {payload.get('format')!r}).")
        lens = cls(model)
        shapes = {"weight": tuple(lens.weight.shape), "bias": tuple(lens.bias.shape)}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if (payload.get("d_model"), payload.get("n_layers")) != (lens.d_model, lens.n_layers) or got != shapes:
            raise InputError(f"The tuned lens in {str(path)!r} was trained for a model with "
                             f"d_model={payload.get('d_model')}, n_layers={payload.get('n_layers')}; this model has "
                             f"d_model={lens.d_model}, n_layers={lens.n_layers}. Train one for this model.")
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        lens.fingerprint = payload.get("model_fingerprint")
        lens.model_config = payload.get("model_config", lens.model_config)
        lens.train_info = payload.get("train", {})
        lens.check_model(model)
        return lens


def _pending_weights(path: Path, save_id: str) -> Path:
    """Where save ``save_id`` writes its weights before its commit point: ``.tuned_lens.safetensors.<id>``."""
    return path / f"{temp_prefix(LENS_WEIGHTS)}{save_id}"


def _committed_weights(path: Path) -> Path:
    """The weights ``tuned_lens.json`` commits to: the pending file it names when a save was killed
    (or is running) between its commit and the rename, else ``tuned_lens.safetensors``."""
    try:
        wid = json.loads((path / LENS_CONFIG).read_text()).get("weights_id")
    except (OSError, ValueError, AttributeError):
        wid = None
    pending = _pending_weights(path, wid) if isinstance(wid, str) and wid.isalnum() else None
    return pending if pending is not None and pending.is_file() else path / LENS_WEIGHTS


def _settle_lens(path: Path) -> None:
    """Finish or discard what a killed :meth:`TunedLens.save` left in ``path``: the committed pending
    weights renamed into place, every other ``.tuned_lens.*`` temporary deleted (nothing else).
    Hold the folder's :func:`~probe.atomic.directory_lock`."""
    committed = _committed_weights(path)
    if committed != path / LENS_WEIGHTS:
        os.replace(committed, path / LENS_WEIGHTS)
        fsync_path(path)
    for name in os.listdir(path):
        if _is_lens_temporary(name) and (path / name).is_file():
            os.remove(path / name)


def _is_lens_temporary(name: str) -> bool:
    return name.startswith((temp_prefix(LENS_WEIGHTS), temp_prefix(LENS_CONFIG)))


def _settle_lens_if_free(path: Path) -> None:
    """:func:`_settle_lens` before a load when nobody is saving (a busy lock or a read-only folder
    leaves it to the next save; the load reads the committed weights either way)."""
    try:
        if path.is_dir() and any(_is_lens_temporary(n) for n in os.listdir(path)):
            with directory_lock(path, wait=False) as locked:
                if locked:
                    _settle_lens(path)
    except OSError:
        pass


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    import math

    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -- held-out comparison -----------------------------------------------------------------
def compare_lenses(model, lens: TunedLens, data, seq_len: int = 128, max_windows: int = 32,
                   batch_size: int = 8):
    """Held-out per-layer mean ``KL(final || lens)`` of the logit lens and the tuned lens.

    ``data`` is a held-out corpus (not the one ``lens`` was fitted on); ``max_windows`` windows of
    ``seq_len`` tokens are read at evenly spaced offsets across it (all of it when it holds fewer). Returns a DataFrame
    with one row per lens layer ``0 .. n_layers - 1``: ``kl_logit``, ``kl_tuned``,
    ``tuned_better`` and the relative reduction.

    Example::

        from probe.data.code_corpus import stdlib_stream
        lens = TunedLens(model).fit(model, stdlib_stream("val"), steps=250)
        compare_lenses(model, lens, stdlib_stream("test"))   # label, kl_logit, kl_tuned, tuned_better, ...
    """
    import pandas as pd

    model = inputs.as_model(model)
    lens.check_model(model)
    windows = inputs.spread_windows(inputs.token_stream(model, data), seq_len, max_windows).to(model.device)
    layers = list(range(model.cfg.n_layers))
    sums = torch.zeros(2, len(layers), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for chunk in windows.split(batch_size):
            resid, final = residual_streams(model, chunk, layers)
            check_finite(final, "the model's logits", model)
            logp_final = F.log_softmax(final.float(), dim=-1)
            for i, l in enumerate(layers):
                for j, translate in enumerate((lambda x, _: x, lens.forward)):
                    logp = F.log_softmax(readout(model, translate(resid[l], l)).float(), -1)
                    sums[j, i] += kl_divergence(logp_final, logp).double().sum()
            count += chunk.numel()
    kl = sums / count
    df = pd.DataFrame({"layer": layers, "label": [layer_label(model, l) for l in layers],
                       "kl_logit": kl[0].numpy(), "kl_tuned": kl[1].numpy()})
    df["tuned_better"] = df["kl_tuned"] < df["kl_logit"]
    df["reduction"] = 1 - df["kl_tuned"] / df["kl_logit"]
    df.attrs["tokens"] = count
    return df


def lens_table(models, train_data, eval_data, steps: int = 250, batch_size: int = 8, seq_len: int = 128,
               max_windows: int = 32, lr: float = 1e-3, seed: int = 0, save: bool = False, progress: bool = False):
    """Train a tuned lens per model and tabulate held-out KL of the logit lens and the tuned lens.

    ``models``: ``{name: model}``. The lens of each is fitted on ``train_data`` and evaluated on
    ``eval_data`` (a different corpus or split: held out from the lens and, ideally, from the
    model). With ``save=True`` each lens is written beside its model's checkpoint. Returns the
    concatenated :func:`compare_lenses` frames with ``model``, ``layout``, ``train_seconds`` and
    ``seconds_per_layer`` columns (Paulo et al. 2024: the tuned lens beats the logit lens on
    recurrent models as on transformers).
    """
    import pandas as pd

    frames = []
    for name, model in models.items():
        lens = TunedLens(model).fit(model, train_data, steps=steps, batch_size=batch_size, seq_len=seq_len,
                                    lr=lr, seed=seed, progress=progress)
        if save:
            lens.save(model=model)
        df = compare_lenses(model, lens, eval_data, seq_len=seq_len, max_windows=max_windows, batch_size=batch_size)
        df.insert(0, "model", name)
        df["layout"] = "+".join(model.cfg.layout)
        df["train_seconds"] = lens.train_info["seconds"]
        df["seconds_per_layer"] = lens.train_info["seconds_per_layer"]
        df["eval_tokens"] = df.attrs.get("tokens")
        frames.append(df)
    if not frames:
        raise InputError("lens_table got no models.")
    return pd.concat(frames, ignore_index=True)


def lens_keys(model) -> list[str]:
    """Feature keys of lens layers ``0 .. n_layers`` (``0-resid_pre``, then each block's ``resid_post``)."""
    return ["0-resid_pre"] + [f"{l}-resid_post" for l in range(model.cfg.n_layers)]


def lens_batches(model, data, rows: int, seed: int = 0):
    """Endless ``({lens layer: resid [rows, d_model]}, final logits [rows, vocab])`` batches: shards in a
    seeded random order (a new order each pass), rows shuffled within a shard."""
    h = open_harvest(data)
    check_harvest_model(h, model)
    keys = lens_keys(model)
    missing = [k for k in keys if k not in h.features or h.features[k].dim != model.cfg.d_model]
    if missing:
        raise InputError(f"A tuned lens trains on the whole residual stream at every layer; the harvest lacks "
                         f"{', '.join(missing)} (harvest sites resid_pre and resid_post at every layer, max_dim=None).")
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(h.shards)):
            cols = h.read_shard(int(i), keys)
            order = rng.permutation(len(cols[keys[0]]))
            for first in range(0, len(order), rows):
                pick = order[first : first + rows]
                resid = {l: torch.from_numpy(cols[k][pick]).to(model.device, model.dtype) for l, k in enumerate(keys)}
                with torch.no_grad():
                    final = readout(model, resid.pop(len(keys) - 1))
                yield resid, final
