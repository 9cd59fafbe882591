r"""Input checks shared by the methods: tokens, layers, positions and target tokens.

Every method accepts what the model accepts (text, a list of texts, token ids
``[batch, pos]`` or ``[pos]``) and refers to layers, positions and target tokens by
index; these helpers turn those arguments into tensors or raise a
:class:`probe.errors.InputError` that names the valid range.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from probe.errors import InputError
from probe.interface import LanguageModel
from probe.io.transformer_lens import as_probe_model


def as_model(model) -> LanguageModel:
    """``model`` when it implements :class:`probe.interface.LanguageModel` (a :class:`probe.HookedLM`,
    probe's TransformerLens adapter), else probe's adapter around a TransformerLens 4 ``TransformerBridge``
    (anything else is returned as it is and fails where it lacks the interface)."""
    return model if isinstance(model, LanguageModel) else as_probe_model(model)


def as_tokens(model, input, prepend_bos: bool | None = None) -> Tensor:
    """Token ids ``[batch, pos]`` on the model's device, validated against its vocabulary and context."""
    tokens = model.as_tokens(input, prepend_bos)
    limit = model.cfg.context_limit
    if limit is not None and tokens.shape[1] > limit:
        raise InputError(f"Input of {tokens.shape[1]} tokens is longer than this model's context "
                         f"n_ctx={limit}; truncate it.")
    return tokens


def text_lengths(model, input, prepend_bos: bool | None = None) -> list[int] | None:
    """Tokens of each text before padding when ``input`` is a list of texts (``to_tokens`` right-pads
    the shorter ones with the pad token), else ``None`` (token ids are taken as given)."""
    if not isinstance(input, (list, tuple)) or len(input) < 2 or not all(isinstance(t, str) for t in input):
        return None
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    extra = 1 if bos and model.tokenizer.bos_token_id is not None else 0
    return [len(model.tokenizer.encode(t)) + extra for t in input]


def check_not_padding(model, input, positions, prepend_bos: bool | None = None, what: str = "position") -> None:
    """Raise an :class:`InputError` when a position read for a sequence (an int for all, or one per
    sequence, non-negative) lies in the padding of a shorter text of a list of texts: the answer
    there would silently be about the pad token, not the text."""
    lengths = text_lengths(model, input, prepend_bos)
    if lengths is None:
        return
    if isinstance(positions, int):
        positions = [positions] * len(lengths)
    for b, (p, n) in enumerate(zip([int(p) for p in positions], lengths)):
        if p >= n:
            raise InputError(f"{what} {p} is padding for text {b} ({input[b][:30]!r} is {n} tokens; the texts are "
                             f"{min(lengths)}..{max(lengths)} tokens, right-padded to {max(lengths)}). Pass texts of "
                             "equal length, one text at a time, or a position inside every text.")


def check_layer(model, layer: int, what: str = "layer", allow_end: bool = False) -> int:
    """``layer`` as a non-negative index ``0 .. n_layers - 1`` (``.. n_layers`` with ``allow_end``);
    negative indices count from the end."""
    n = model.cfg.n_layers + (1 if allow_end else 0)
    if isinstance(layer, Tensor) and layer.dim() == 0 and not layer.is_floating_point():
        layer = int(layer)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InputError(f"{what} must be an integer, got {type(layer).__name__}.")
    layer = int(layer)
    if not -n <= layer < n:
        raise InputError(f"{what} {layer} is out of range: this model has {model.cfg.n_layers} layers "
                         f"(valid {what}s 0..{n - 1}, or negative from the end).")
    return layer % n


def check_layers(model, layers: Sequence[int] | int | None, allow_end: bool = False) -> list[int]:
    """A list of valid layer indices (all layers for ``None``), duplicates removed, order kept."""
    n = model.cfg.n_layers + (1 if allow_end else 0)
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    out: list[int] = []
    for layer in layers:
        i = check_layer(model, layer, allow_end=allow_end)
        if i not in out:
            out.append(i)
    if not out:
        raise InputError("layers is empty: give at least one layer index (or None for all).")
    return out


def check_position(position: int, n_pos: int, what: str = "position") -> int:
    """``position`` as an index ``0 .. n_pos - 1`` (negative counts from the end)."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"{what} must be an integer, got {type(position).__name__}.")
    if not -n_pos <= position < n_pos:
        size = {"position": f"an input of {n_pos} tokens", "batch": f"a batch of {n_pos} sequences"}.get(
            what, f"{n_pos} entries")
        raise InputError(f"{what} {position} is out of range for {size} "
                         f"(valid 0..{n_pos - 1}, or -{n_pos}..-1 from the end).")
    return position % n_pos


def resolve_target(model, target, batch: int, name: str = "target") -> Tensor:
    """One token id per sequence, ``[batch]`` long.

    ``target`` may be an id, a one-token string, or a sequence / tensor of ``batch`` ids.
    """
    vocab = model.cfg.vocab_size
    if isinstance(target, str):
        ids = model.tokenizer.encode(target)
        if len(ids) != 1:
            raise InputError(f"{name} {target!r} is {len(ids)} tokens, not one; give a single token "
                             "(or its id).")
        target = ids[0]
    if isinstance(target, bool):
        raise InputError(f"{name} must be a token id or a one-token string, got a bool.")
    if isinstance(target, int):
        ids = torch.full((batch,), target, dtype=torch.long)
    else:
        try:
            ids = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name} must be a token id, a one-token string or {batch} ids; "
                             f"got {type(target).__name__}.") from exc
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise InputError(f"{name} ids must be integers, got dtype {ids.dtype}.")
        ids = ids.long().flatten()
        if ids.numel() == 1:
            ids = ids.expand(batch).clone()
        if ids.numel() != batch:
            raise InputError(f"{name} has {ids.numel()} ids for a batch of {batch} sequences; give one id "
                             "or one per sequence.")
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise InputError(f"{name} token id {int(bad[0])} is not in the vocabulary "
                         f"(valid ids 0..{vocab - 1}).")
    return ids.to(model.device)


def token_str(model, token: int) -> str:
    """The text of one token id: ``model.token_str`` (which shows ids of a vocabulary padded past the
    tokenizer's as ``"<|id|>"``), or the tokenizer's for a model without it (a TransformerLens adapter)."""
    fn = getattr(model, "token_str", None)
    return fn(int(token)) if callable(fn) else model.tokenizer.token_str(int(token))


def str_tokens(model, tokens: Tensor) -> list[list[str]]:
    """Display strings of every token, ``[batch][pos]`` (made printable for figure axes)."""
    out = []
    for row in tokens.tolist():
        out.append([printable(token_str(model, t)) for t in row])
    return out


def printable(s: str) -> str:
    """A token string readable on a figure axis: whitespace and control bytes made visible."""
    table = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}
    return "".join(table.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in s) or "∅"


def axis_labels(strs: Sequence[str]) -> list[str]:
    """Unique category labels for a plotly axis: ``"3:x"`` (position, token)."""
    return [f"{i}:{s}" for i, s in enumerate(strs)]


def token_stream(model, data) -> Tensor:
    """A corpus as one 1-D long tensor of token ids, validated against the model's vocabulary.

    ``data`` may be a text, a list of texts (joined with the end-of-text token), token ids
    (``[n]`` or ``[rows, pos]``, rows joined), a numpy array, or an object with a ``tokens``
    array (a :class:`probe.data.corpus.TokenStream`).
    """
    import numpy as np

    if hasattr(data, "tokens") and not isinstance(data, Tensor):
        data = data.tokens
    if isinstance(data, str):
        data = [data]
    if isinstance(data, (list, tuple)) and not data:
        raise InputError("data is empty: give some text or token ids.")
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        sep = model.tokenizer.eos_token_id
        ids: list[int] = []
        for text in data:
            ids.extend(model.tokenizer.encode(text))
            if sep is not None:
                ids.append(sep)
        data = ids
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    try:
        stream = torch.as_tensor(data)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError("data must be text, a list of texts, token ids or a TokenStream; got "
                         f"{type(data).__name__}.") from exc
    if stream.is_floating_point() or stream.is_complex() or stream.dtype == torch.bool:
        raise InputError(f"data token ids must be integers, got dtype {stream.dtype}.")
    stream = stream.long().flatten()
    if stream.numel() == 0:
        raise InputError("data is empty: give some text or token ids.")
    lo, hi = int(stream.min()), int(stream.max())
    if lo < 0 or hi >= model.cfg.vocab_size:
        raise InputError(f"data holds token id {lo if lo < 0 else hi}, outside this model's vocabulary "
                         f"0..{model.cfg.vocab_size - 1}; was it tokenised for another model?")
    return stream


def sample_windows(stream: Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """``[batch, seq_len]`` windows of ``stream`` at uniformly random offsets."""
    if stream.numel() < seq_len:
        raise InputError(f"data has only {stream.numel()} tokens, fewer than one window of seq_len={seq_len}; "
                         "give more text or a smaller seq_len.")
    starts = torch.randint(0, stream.numel() - seq_len + 1, (batch,), generator=generator)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def spread_windows(stream: Tensor, seq_len: int, n_windows: int | None = None) -> Tensor:
    """``[n, seq_len]`` windows at evenly spaced offsets covering the whole ``stream`` (deterministic;
    for held-out evaluation that samples a whole corpus, not just its first documents). With
    ``n_windows=None`` (or more than fit), the non-overlapping windows from the start."""
    fit = stream.numel() // seq_len
    if fit == 0:
        raise InputError(f"data has only {stream.numel()} tokens, fewer than one window of seq_len={seq_len}; "
                         "give more text or a smaller seq_len.")
    if n_windows is None or n_windows >= fit:
        return stream[: fit * seq_len].view(fit, seq_len)
    starts = torch.linspace(0, stream.numel() - seq_len, n_windows).long()
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
