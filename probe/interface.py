r"""The model interface every method takes: what :class:`probe.HookedLM` and the TransformerLens
adapter (:class:`probe.io.transformer_lens.BridgeAdapter`) both provide.

Methods talk to a model only through these names (and the hook vocabulary of :mod:`probe.hooks`),
never through private attributes or the model's type::

    tokens  = model.as_tokens(input, prepend_bos)       # [batch, pos] ids on model.device, checked
    names   = model.hook_dict                           # every hook name the model fires
    model.layer_carries_state(layer)                    # a recurrent memory (hook_state*) at layer?
    model.carries_state                                 # forward takes states= / return_states=True?
    W_O, b_O = model.attention_output(layer)            # [head, d_head, d_model], [d_model] or None
    next_ids = model.sample(logits, temperature, top_k, generator)   # [batch] from [batch, vocab]

plus the TransformerLens conventions every hooked model has: ``cfg``, ``tokenizer``, ``device``,
``dtype``, ``unembed_matrix`` ``[d_model, vocab]``, ``b_U``, ``ln_final``, ``forward`` / ``__call__``,
``hooks``, ``run_with_hooks``, ``run_with_cache``, ``check_hook_names``, ``to_tokens``, ``to_string``,
``to_str_tokens``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class LanguageModel(Protocol):
    """A hooked language model probe's methods can run on (see the module docstring)."""

    cfg: Any
    tokenizer: Any
    hook_dict: dict
    #: True when ``forward`` carries memory between calls (``states=``, ``return_states=True``)
    carries_state: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def unembed_matrix(self) -> Tensor: ...

    def __call__(self, *args, **kwargs) -> Any: ...

    def as_tokens(self, input, prepend_bos: bool | None = None) -> Tensor:
        """Token ids ``[batch, pos]`` on the model's device for text, texts or ids (checked)."""

    def to_tokens(self, text, prepend_bos: bool | None = None) -> Tensor: ...

    def to_string(self, tokens) -> str | list[str]: ...

    def to_str_tokens(self, input, prepend_bos: bool | None = None) -> list[str]: ...

    def check_hook_names(self, names) -> None:
        """Raise :class:`probe.errors.UnknownHookError` for a name the model lacks."""

    def layer_carries_state(self, layer: int) -> bool:
        """True when layer ``layer``'s mixer is a recurrence (its memory is its ``hook_state*``)."""

    def attention_output(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """``(W_O [head, d_head, d_model], b_O [d_model] or None)`` of attention layer ``layer``."""

    def sample(self, logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> Tensor:
        """Next token ids ``[batch]`` from last-position logits ``[batch, vocab]`` (greedy at temperature 0)."""

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
              clear_contexts: bool = False) -> AbstractContextManager: ...

    def run_with_hooks(self, *args, fwd_hooks=(), bwd_hooks=(), **kwargs) -> Any: ...

    def run_with_cache(self, *args, names_filter=None, **kwargs) -> tuple[Any, Any]: ...
