r"""The activation cache returned by :meth:`probe.HookedLM.run_with_cache`.

A dict of ``{hook name: tensor}`` with TransformerLens conveniences: tuple keys
(``cache["resid_post", 2]`` is ``cache["blocks.2.hook_resid_post"]``; ``cache["state", 0]``
is ``cache["blocks.0.mixer.hook_state"]``), unknown keys answered with near matches, and
helpers to pull out the recurrent state.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from probe.errors import unknown_hook
from probe.hooks import act_name, is_state_hook


class ActivationCache:
    """Cached activations of one forward pass (``[batch, pos, ...]`` tensors, detached).

    Keys are full hook names or ``(site, layer)`` tuples (see :func:`probe.hooks.act_name`); a key that was
    not cached raises a :class:`probe.errors.UnknownHookError` naming the nearest matches.

    Example::

        logits, cache = model.run_with_cache("def f(x):")
        cache["blocks.0.hook_resid_post"]     # [batch, pos, d_model]
        cache["resid_post", 0]                # the same tensor
        cache["state", 0]                     # blocks.0.mixer.hook_state: [batch, pos, *state shape]
    """

    def __init__(self, cache: dict[str, Tensor], model=None):
        self.cache_dict = cache
        self.model = model

    def _resolve(self, key) -> str:
        if isinstance(key, tuple):
            site, layer = (key + (None,))[:2]
            key = act_name(site, layer)
        if key in self.cache_dict:
            return key
        if not isinstance(key, str):
            raise TypeError(f"Cache keys are hook names or (site, layer) tuples, got {type(key).__name__}.")
        if not key.startswith(("blocks.", "hook_", "ln_final")) and f"hook_{key}" in self.cache_dict:
            return f"hook_{key}"
        alias = getattr(self.model, "hook_aliases", {}).get(key)  # a TransformerLens 4 name (probe.hooks)
        if alias in self.cache_dict:
            return alias
        known = list(self.cache_dict)
        err = unknown_hook(key, known)
        if self.model is not None and (alias or key) in self.model.hook_dict:
            err.args = (f"{key!r} is a hook of the model but was not cached (names_filter / state_positions "
                        "left it out). Run run_with_cache again with it included.",)
        raise err

    def __getitem__(self, key) -> Tensor:
        return self.cache_dict[self._resolve(key)]

    def __contains__(self, key) -> bool:
        try:
            self._resolve(key)
            return True
        except (KeyError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def to(self, device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model)

    def state_names(self, layer: int | None = None) -> list[str]:
        """Cached ``hook_state*`` names (optionally of one layer): the recurrent memory."""
        prefix = f"blocks.{layer}." if layer is not None else ""
        return [k for k in self.cache_dict if is_state_hook(k) and k.startswith(prefix)]

    def states(self, position: int | None = None) -> dict[str, Tensor]:
        """Every cached state tensor, optionally at one position: ``{name: [batch, ...]}``."""
        return {k: (v if position is None else v[:, position]) for k, v in self.cache_dict.items()
                if is_state_hook(k)}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.cache_dict.values())

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} entries, {self.nbytes() / 2**20:.1f} MiB)"


def stack_layers(cache: ActivationCache, site: str, n_layers: int) -> Tensor:
    """``[layer, batch, pos, ...]`` stack of one site over all layers."""
    return torch.stack([cache[site, i] for i in range(n_layers)])
