r"""Inputs longer than one forward pass: run in segments with the state carried.

Recurrent models process any length with memory bounded by the segment length (the state
is a fixed size); attention models either refuse beyond ``n_ctx`` or, with
``sliding_window=W``, keep only the last ``W`` cached keys/values (RoPE models only; learned
positions cannot slide).

    losses = segmented_loss(model, tokens, segment_length=2048)        # [batch, pos-1]
    for start, logits in iter_segments(model, tokens, 2048): ...
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.errors import InputError


def iter_segments(model, tokens: Tensor, segment_length: int = 1024, sliding_window: int | None = None,
                  ) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, logits [batch, seg, vocab])`` for consecutive segments, state carried."""
    if segment_length < 1:
        raise InputError(f"segment_length must be >= 1, got {segment_length}.")
    tokens = model.as_tokens(tokens, False)
    if sliding_window is not None:
        if model.cfg.positional == "learned":
            raise InputError("A sliding window needs relative positions (rope/none); this model has learned positions.")
        if sliding_window + segment_length > model.cfg.n_ctx:
            raise InputError(f"sliding_window + segment_length = {sliding_window + segment_length} exceeds "
                             f"n_ctx={model.cfg.n_ctx}; make one of them smaller.")
    states = None
    for start in range(0, tokens.shape[1], segment_length):
        with torch.no_grad():
            logits, states = model(tokens[:, start : start + segment_length], states=states, return_states=True)
        if sliding_window is not None:
            states = states.keep_last(sliding_window)
        yield start, logits


def segmented_loss(model, tokens: Tensor, segment_length: int = 1024, sliding_window: int | None = None) -> Tensor:
    """Per-token next-token cross-entropy ``[batch, pos-1]`` over an arbitrarily long input,
    keeping only one segment's logits in memory at a time."""
    tokens = model.as_tokens(tokens, False)
    losses, previous_last = [], None
    for start, logits in iter_segments(model, tokens, segment_length, sliding_window):
        seg = tokens[:, start : start + logits.shape[1]]
        if previous_last is not None:  # the previous segment's last position predicts this one's first token
            losses.append(F.cross_entropy(previous_last.float(), seg[:, 0], reduction="none")[:, None])
        if seg.shape[1] > 1:
            losses.append(F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), seg[:, 1:], reduction="none"))
        previous_last = logits[:, -1]
    return torch.cat(losses, dim=1) if losses else tokens.new_zeros(tokens.shape[0], 0, dtype=torch.float32)
