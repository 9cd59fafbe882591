r"""Ragged token sequences with per-token labels, and their padded batches.

Methods that read a labelled dataset (probing) or several texts of different lengths
(steering) take any of:

* a text, or a list of texts (tokenised with the model's tokenizer and BOS rule);
* token ids ``[n_seq, pos]`` (tensor or array), or a list of 1-D id sequences of any lengths;
* one long 1-D stream of ids (a tensor, an array or a :class:`probe.data.corpus.TokenStream`),
  cut into consecutive windows of ``seq_len`` tokens (the last one may be shorter);
* an iterable of ``(tokens, {label name: values})`` pairs (``CodeCorpus.labelled()``), each
  sequence cut into windows of ``seq_len``.

Labels follow the same layout: per token (``[n_seq, pos]``, a list of per-sequence arrays,
one stream aligned with the token stream) or one value per sequence (``[n_seq]``).

Models are causal, so right padding never changes the positions before it: a batch of
ragged sequences is padded on the right and only the real positions are read.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from probe.errors import InputError


@dataclass
class Sequences:
    """``tokens[i]``: int64 ids ``[len_i]``; ``labels[name][i]``: ``[len_i]`` values."""

    tokens: list[np.ndarray]
    labels: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> np.ndarray:
        """``[n_sequences]`` int64: tokens per sequence."""
        return np.array([len(t) for t in self.tokens], dtype=np.int64)

    @property
    def n_tokens(self) -> int:
        """Tokens over all sequences."""
        return int(self.lengths.sum())


def _is_text_list(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, str) for t in x)


def _windows(array: np.ndarray, seq_len: int | None) -> list[np.ndarray]:
    if seq_len is None or len(array) <= seq_len:
        return [array]
    return [array[i : i + seq_len] for i in range(0, len(array), seq_len)]


def _check_seq_len(seq_len) -> int | None:
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1):
        raise InputError(f"seq_len must be a positive integer or None, got {seq_len!r}.")
    return seq_len


def as_sequences(model, data, labels=None, seq_len: int | None = 256, prepend_bos: bool | None = None) -> Sequences:
    """Normalise ``data`` (and ``labels``) as described in the module docstring."""
    seq_len = _check_seq_len(seq_len)
    if labels is not None and not isinstance(labels, Mapping):
        labels = {"label": labels}
    labels = dict(labels or {})
    if hasattr(data, "tokens") and not isinstance(data, (Tensor, np.ndarray)):
        data = data.tokens  # TokenStream
    stream = False
    if isinstance(data, str):
        data = [data]
    if _is_text_list(data):
        tokens = [model.to_tokens(t, prepend_bos)[0].cpu().numpy() for t in data]
    elif isinstance(data, (Tensor, np.ndarray)):
        arr = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
        if arr.dtype.kind not in "iu":
            raise InputError(f"Token ids must be integers, got dtype {arr.dtype}.")
        if arr.ndim == 1:
            stream = True
            tokens = _windows(arr.astype(np.int64), seq_len)
        elif arr.ndim == 2:
            tokens = list(arr.astype(np.int64))
        else:
            raise InputError(f"Token ids must be [pos] (a stream) or [n_seq, pos], got shape {arr.shape}.")
    elif isinstance(data, Iterable):
        items = list(data)
        if items and all(isinstance(it, tuple) and len(it) == 2 and isinstance(it[1], Mapping) for it in items):
            if labels:
                raise InputError("data already carries labels ((tokens, labels) pairs); do not pass labels= too.")
            tokens, labels = [], {}
            for k, (toks, labs) in enumerate(items):
                toks = np.asarray(toks, dtype=np.int64)
                for name, values in labs.items():
                    values = np.asarray(values)
                    if values.shape != toks.shape:
                        raise InputError(f"Sequence {k}: label {name!r} has shape {values.shape}, tokens {toks.shape}.")
                    labels.setdefault(name, []).extend(_windows(values, seq_len))
                    if len(labels[name]) != len(tokens) + len(_windows(toks, seq_len)):
                        raise InputError(f"Label {name!r} is missing for some sequences; every pair needs the same "
                                         "label names.")
                tokens.extend(_windows(toks, seq_len))
            labels = {k: v for k, v in labels.items()}
            return _validated(model, Sequences(tokens, labels))
        tokens = []
        for k, seq in enumerate(items):
            arr = np.asarray(seq.detach().cpu() if isinstance(seq, Tensor) else seq)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise InputError(f"Sequence {k} is not a 1-D list of integer token ids (shape {arr.shape}, "
                                 f"dtype {arr.dtype}).")
            tokens.append(arr.astype(np.int64))
    else:
        raise InputError(f"data must be text, token ids, a token stream or (tokens, labels) pairs; got "
                         f"{type(data).__name__}.")
    out = Sequences(tokens)
    for name, values in labels.items():
        out.labels[name] = _labels_like(name, values, out, stream, seq_len)
    return _validated(model, out)


def _labels_like(name: str, values, seqs: Sequences, stream: bool, seq_len: int | None) -> list[np.ndarray]:
    lengths = seqs.lengths
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) or (isinstance(values, (list, tuple)) and all(np.isscalar(v) for v in values)):
        arr = np.asarray(values)
        if stream and arr.ndim == 1:
            if len(arr) != seqs.n_tokens:
                raise InputError(f"Label {name!r} has {len(arr)} values for a stream of {seqs.n_tokens} tokens; "
                                 "give one label per token.")
            return _windows(arr, seq_len)
        if arr.ndim == 1 and len(arr) == len(seqs):  # one label per sequence
            return [np.full(n, v, dtype=arr.dtype) for n, v in zip(lengths, arr)]
        if arr.ndim == 2 and arr.shape[0] == len(seqs) and (lengths == arr.shape[1]).all():
            return list(arr)
        raise InputError(f"Label {name!r} has shape {arr.shape}; expected one value per sequence ({len(seqs)}) "
                         f"or per token ({len(seqs)} sequences of lengths {sorted(set(lengths.tolist()))[:5]}).")
    values = [np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v) for v in values]
    if len(values) != len(seqs):
        raise InputError(f"Label {name!r} has {len(values)} sequences, the data {len(seqs)}.")
    for k, (v, n) in enumerate(zip(values, lengths)):
        if v.shape != (n,):
            raise InputError(f"Label {name!r} of sequence {k} has shape {v.shape}; its tokens have length {n}.")
    return values


def _validated(model, seqs: Sequences) -> Sequences:
    if not len(seqs) or seqs.n_tokens == 0:
        raise InputError("The dataset is empty: give at least one non-empty sequence.")
    vocab = model.cfg.vocab_size
    for k, t in enumerate(seqs.tokens):
        if t.size and (t.min() < 0 or t.max() >= vocab):
            bad = int(t.min()) if t.min() < 0 else int(t.max())
            raise InputError(f"Sequence {k} holds token id {bad}, outside this model's vocabulary 0..{vocab - 1}.")
    limit = model.cfg.context_limit
    if limit is not None and int(seqs.lengths.max()) > limit:
        raise InputError(f"A sequence has {int(seqs.lengths.max())} tokens, more than this model's context "
                         f"n_ctx={limit}; use a smaller seq_len.")
    return seqs


def select_positions(seqs: Sequences, positions) -> list[np.ndarray]:
    """Per sequence, the sorted positions to read: ``None`` (all), an int or list of ints (same for
    every sequence, negative from the end; out-of-range ones skipped for shorter sequences), a
    boolean mask in the token layout, or a list of per-sequence position lists."""
    lengths = seqs.lengths
    if positions is None:
        return [np.arange(n) for n in lengths]
    if isinstance(positions, Tensor):
        positions = positions.detach().cpu().numpy()
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        positions = [int(positions)]
    if isinstance(positions, np.ndarray) and positions.dtype == bool:
        if positions.ndim != 2 or positions.shape[0] != len(seqs) or (lengths > positions.shape[1]).any():
            raise InputError(f"A position mask must be [n_seq, pos] covering every token; got {positions.shape}.")
        return [np.flatnonzero(positions[i, :n]) for i, n in enumerate(lengths)]
    items = list(positions)
    if all(isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)) for p in items):
        if not items:
            raise InputError("positions is empty: give at least one position (or None for all).")
        return [np.asarray(sorted({int(p) % n for p in items if -n <= int(p) < n}), dtype=np.int64) for n in lengths]
    if len(items) != len(seqs):
        raise InputError(f"positions has {len(items)} entries for {len(seqs)} sequences; give one list per "
                         "sequence, one list of ints for all, or a boolean mask.")
    out = []
    for k, (ps, n) in enumerate(zip(items, lengths)):
        ps = np.atleast_1d(np.asarray(ps.detach().cpu() if isinstance(ps, Tensor) else ps))
        if ps.size and (ps.dtype.kind not in "iu" or ps.min() < -n or ps.max() >= n):
            raise InputError(f"positions for sequence {k} ({ps.tolist()[:5]}) must be integers in 0..{n - 1} "
                             "(or negative from the end).")
        out.append(np.unique(ps.astype(np.int64) % n) if ps.size else np.zeros(0, dtype=np.int64))
    return out


def padded_batch(tokens: list[np.ndarray], pad: int = 0, device=None) -> tuple[Tensor, Tensor]:
    """``(ids [b, max_len], lengths [b])`` with right padding (harmless: models are causal)."""
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
    out = torch.full((len(tokens), int(lengths.max())), pad, dtype=torch.long)
    for i, t in enumerate(tokens):
        out[i, : len(t)] = torch.from_numpy(np.asarray(t, dtype=np.int64))
    return out.to(device), lengths
