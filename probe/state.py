r"""The carried memory of a whole model, for running in segments and generating.

``ModelState.layers[i]`` is block i's ``{"mixer": {...}, "mlp": {...}}`` (parallel mixers: one entry per
part, ``"mixer.attn"``, ``"mixer.mamba2"``: the module path in the block) with tensors
``[batch, ...]`` keyed by hook suffix (``"state"``, ``"state_conv"``, ...; attention:
``"k"``, ``"v"``); ``position`` counts the tokens consumed so far (for positional
embeddings and context limits).

``logits, st = model(prefix, return_states=True); model(suffix, states=st)`` equals
running ``prefix + suffix`` at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probe.errors import InputError


#: the entry that marks a state part as a KV cache (its dimension 1 counts the cached positions):
#: attention's keys, multi-head latent attention's latents (:mod:`probe.mixers.mla`)
CACHE_ENTRIES = ("k", "kv_latent")


def _cache_length(part: dict) -> int | None:
    """The number of cached positions of a state part that is a KV cache, else ``None``."""
    key = next((k for k in CACHE_ENTRIES if k in part), None)
    return None if key is None else part[key].shape[1]


@dataclass
class ModelState:
    """The memory of every layer after the tokens read so far: what a continuation starts from.

    Attributes:
        layers: per block ``{"mixer": {suffix: [batch, ...]}, "mlp": {...}}`` (and ``"shared"``, the KV
            cache of a layer's shared block, :mod:`probe.shared_block`): recurrent states keyed
            like their hooks (``"state"``, ``"state_conv"``, ...), shaped like one position of
            the hook; attention's KV cache as ``"k"`` / ``"v"`` ``[batch, cached_pos, ...]``.
        position: the number of tokens consumed (for learned positions and context limits).

    Example::

        logits, st = model("def f(", return_states=True)
        more = model("x):", states=st)        # == model("def f(x):")[:, -3:]
        st.hook_items()                       # {"blocks.0.mixer.hook_state": [batch, ...], ...}
    """

    layers: list[dict[str, dict[str, Tensor]]]
    position: int = 0

    @property
    def batch_size(self) -> int:
        for layer in self.layers:
            for part in layer.values():
                for t in part.values():
                    return t.shape[0]
        return 0

    def map(self, fn) -> "ModelState":
        """A new state with ``fn`` applied to every tensor."""
        return ModelState([{part: {k: fn(v) for k, v in d.items()} for part, d in layer.items()}
                           for layer in self.layers], self.position)

    def detach(self) -> "ModelState":
        """The state with every tensor detached from the autograd graph."""
        return self.map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> "ModelState":
        """The state moved / cast like ``Tensor.to`` (device, dtype)."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def hook_items(self) -> dict[str, Tensor]:
        """The state as ``{hook name: [batch, ...]}``, e.g. ``blocks.0.mixer.hook_state``.

        For attention layers the entries are the KV cache (``blocks.i.mixer.cache_k/v``),
        which has no single per-position hook.
        """
        out = {}
        for i, layer in enumerate(self.layers):
            for part, tensors in layer.items():
                for key, t in tensors.items():
                    name = f"hook_{key}" if key.startswith("state") else f"cache_{key}"
                    out[f"blocks.{i}.{part}.{name}"] = t
        return out

    def kv_length(self) -> int:
        """Number of cached positions in the longest attention KV cache (0 without attention)."""
        lengths = (_cache_length(part) for layer in self.layers for part in layer.values())
        return max((n for n in lengths if n is not None), default=0)

    def keep_last(self, window: int) -> "ModelState":
        """The state with every attention KV cache cut to its last ``window`` positions (a sliding
        window); recurrent states are unchanged. ``position`` keeps counting absolute tokens."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InputError(f"keep_last needs a window of at least 1 position, got {window!r}.")
        layers = [{part: ({k: v[:, -window:] for k, v in d.items()} if _cache_length(d) is not None else dict(d))
                   for part, d in layer.items()} for layer in self.layers]
        return ModelState(layers, self.position)

    def num_elements(self) -> int:
        """Total number of numbers in the state (per batch element)."""
        return sum(t[0].numel() for t in self.hook_items().values()) if self.batch_size else 0

    def equal(self, other: "ModelState", atol: float = 0.0) -> bool:
        a, b = self.hook_items(), other.hook_items()
        return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)
