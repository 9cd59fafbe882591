r"""Next-token sampling shared by :meth:`probe.HookedLM.generate`, the TransformerLens adapter and
:func:`probe.methods.steer`: greedy at temperature 0, else a draw from ``softmax(logits / T)``
restricted to the ``top_k`` largest logits."""
from __future__ import annotations

from numbers import Integral, Real

import torch
from torch import Tensor

from probe.errors import InputError

GENERATE_RETURN_TYPES = ("auto", "str", "tokens")


def check_sampling(max_new_tokens, temperature, top_k, return_type) -> None:
    """An :class:`InputError` naming the first sampling argument out of its range."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not 0 <= temperature < float("inf"):
        raise InputError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}.")
    if return_type not in GENERATE_RETURN_TYPES:
        raise InputError(f"generate's return_type must be one of {GENERATE_RETURN_TYPES}, got {return_type!r}.")


def sample(logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> Tensor:
    """Next token ids ``[batch]`` from logits ``[batch, vocab]``."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
