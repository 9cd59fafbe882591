r"""Sites: what a short site name means at a layer, as hook names.

Patching, probing and steering take *sites* (where to read or write) and *layers*; a site
at a layer is one or more hook points, every one ``[batch, pos, ...]``:

==================  ======================================================================
``resid_pre`` ...   block hooks: ``resid_pre``, ``resid_mid``, ``resid_post``, ``mixer_in``,
                    ``mixer_out``, ``attn_out``, ``mlp_in``, ``mlp_out`` ->
                    ``blocks.{l}.hook_<site>``
``state``           the layer's whole memory at a position: every ``hook_state*`` of block
                    ``l`` (mixer and MLP slot, e.g. LSTM c and h, a conv window, RWKV's
                    token shifts); for attention the key and value written at that position
                    (``mixer.hook_k``, ``mixer.hook_v``; a parallel layer's attention part:
                    ``mixer.attn.hook_k``, ...), the per-position entry of the KV cache
                    (multi-head latent attention: ``mixer.hook_kv_latent``, ``mixer.hook_k_rot``);
                    a layer reading a shared block adds that use's ``shared.hook_k``, ``shared.hook_v``
``state_conv`` ...  any other name: ``blocks.{l}.mixer.hook_<name>`` (``state_h``, ``forget``,
                    ``k``...) or, failing that, ``blocks.{l}.mlp.hook_<name>``, or in a parallel
                    layer every part's ``blocks.{l}.mixer.<part>.hook_<name>``
full hook names     ``blocks.2.mixer.hook_state`` is taken as is, at its own layer (2)
==================  ======================================================================

A site that a layer lacks (``mlp_out`` without an MLP, ``state`` of an ``ff`` layer) gives
no hooks; methods report NaN there rather than failing.

Because state edits propagate (``probe.mixers.edits``), writing ``state`` at position t
changes every later position exactly as if the recurrence had carried the written value.
"""
from __future__ import annotations

from collections.abc import Sequence

from probe.errors import InputError, suggest
from probe.hooks import BLOCK_SITES, block_hook, is_hook_name, is_state_hook, layer_of, mixer_hook, mlp_hook, site_label
from probe.mixers import MIXERS
from probe.mixers.parallel import part_names

__all__ = ["BLOCK_SITES", "DEFAULT_PATCH_SITES", "check_sites", "is_hook_name", "layer_of", "memory_hooks",
           "needs_forcing", "site_hooks", "site_label"]

#: the sites an activation-patching sweep covers by default
DEFAULT_PATCH_SITES = ("resid_pre", "mixer_out", "mlp_out", "state")


#: the per-position entries of a KV cache: attention's keys and values, multi-head latent attention's
#: latent and shared rotary key part (:mod:`probe.mixers.mla`)
KV_CACHE_ENTRIES = (("k", "v"), ("kv_latent", "k_rot"))


def memory_hooks(model, layer: int) -> list[str]:
    """Every hook holding layer ``layer``'s memory at a position: its ``hook_state*`` hooks, or,
    for a layer with no recurrent state but with a KV cache, the hooks of its per-position entries
    (:data:`KV_CACHE_ENTRIES`: attention's ``hook_k`` and ``hook_v``)."""
    prefix = f"blocks.{layer}."
    names = [n for n in model.hook_dict if n.startswith(prefix) and is_state_hook(n)]
    for path, recurrent in _mixer_paths(model, layer):
        if recurrent:
            continue
        for entries in KV_CACHE_ENTRIES:
            kv = [f"{prefix}{path}.hook_{e}" for e in entries]
            if all(n in model.hook_dict for n in kv):
                names += kv
    shared = [f"blocks.{layer}.shared.hook_k", f"blocks.{layer}.shared.hook_v"]  # a shared block's KV cache
    if all(n in model.hook_dict for n in shared):
        names += shared
    return names


def _mixer_paths(model, layer: int) -> list[tuple[str, bool]]:
    """``(module path in the block, carries recurrent state)`` of layer ``layer``'s mixer, or of each
    part of a parallel layer (``"mixer.attn"``, ``"mixer.mamba2"``, :mod:`probe.mixers.parallel`)."""
    parts = part_names(model.cfg.layout[layer])
    if len(parts) == 1:
        return [("mixer", model.layer_carries_state(layer))]
    return [(f"mixer.{p}", MIXERS[p].recurrent) for p in parts]


def site_hooks(model, site: str, layer: int | None) -> list[str]:
    """The hook names of ``site`` at ``layer`` (empty when the layer lacks it).

    ``site`` is a short name (see the module docstring) or a full hook name, which belongs to
    its own layer only (model-level hooks such as ``hook_embed`` to layer 0); ``layer=None``
    accepts it anywhere.
    """
    if is_hook_name(site):
        model.check_hook_names([site])
        own = layer_of(site)
        return [site] if layer is None or layer == (own if own is not None else 0) else []
    if layer is None:
        raise InputError(f"Site {site!r} needs a layer; give layers or a full hook name.")
    site = site.removeprefix("hook_")
    if site == "state":
        return memory_hooks(model, layer)
    if site in BLOCK_SITES:
        name = block_hook(layer, site)
        return [name] if name in model.hook_dict else []
    for name in (mixer_hook(layer, site), mlp_hook(layer, site)):
        if name in model.hook_dict:
            return [name]
    # a parallel layer: the site in each of its parts (``pattern`` -> ``blocks.{l}.mixer.attn.hook_pattern``)
    return [n for n in (f"blocks.{layer}.{path}.hook_{site}" for path, _ in _mixer_paths(model, layer))
            if n in model.hook_dict]


def check_sites(model, sites: str | Sequence[str], layers: Sequence[int]) -> list[str]:
    """``sites`` as a list, each present at one of ``layers`` at least (else a clear error)."""
    if isinstance(sites, str):
        sites = [sites]
    sites = list(dict.fromkeys(sites))
    if not sites:
        raise InputError("sites is empty: give at least one site, e.g. 'resid_pre' or 'state'.")
    for site in sites:
        if not isinstance(site, str):
            raise InputError(f"Sites are names such as 'resid_pre' or 'state', got {type(site).__name__}.")
        if is_hook_name(site):
            model.check_hook_names([site])
            continue
        if not any(site_hooks(model, site, layer) for layer in layers):
            short = set(BLOCK_SITES) | {"state"}
            for name in model.hook_dict:
                if name.startswith("blocks.") and ".hook_" in name:
                    short.add(name.rsplit(".hook_", 1)[1])
            raise InputError(f"Site {site!r} exists at none of layers {list(layers)}.{suggest(site, short)} "
                             f"Known sites: {', '.join(sorted(short))}.")
    return sites


def needs_forcing(model, name: str) -> bool:
    """True when hook ``name`` sits inside a recurrence driven by :func:`probe.mixers.edits.run_hooked`
    (every ``hook_state*``, and the gates of a recurrent mixer): a value written there only acts
    through the mixer's forcing, so gradients with respect to it need
    :func:`probe.mixers.edits.mark_forced`."""
    if is_state_hook(name):
        return True
    from probe.mixers.base import RecurrentMixer

    parent = getattr(model, "mod_dict", {}).get(name.rsplit(".", 1)[0]) if "." in name else None
    return isinstance(parent, RecurrentMixer)
