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
                    (``mixer.hook_k``, ``mixer.hook_v``), the per-position entry of the KV cache
``state_conv`` ...  any other name: ``blocks.{l}.mixer.hook_<name>`` (``state_h``, ``forget``,
                    ``k``...) or, failing that, ``blocks.{l}.mlp.hook_<name>``
full hook names     ``blocks.2.mixer.hook_state`` is taken as is, at its own layer (2)
==================  ======================================================================

A site that a layer lacks (``mlp_out`` without an MLP, ``state`` of an ``ff`` layer) gives
no hooks; methods report NaN there rather than failing.

Because state edits propagate (``probe.mixers.edits``), writing ``state`` at position t
changes every later position exactly as if the recurrence had carried the written value.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from probe.errors import InputError, suggest

BLOCK_SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_in", "mixer_out", "attn_out", "mlp_in", "mlp_out")
#: the sites an activation-patching sweep covers by default
DEFAULT_PATCH_SITES = ("resid_pre", "mixer_out", "mlp_out", "state")
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def is_hook_name(site: str) -> bool:
    """True for a full hook name (``blocks.0.hook_resid_pre``, ``hook_embed``) rather than a short site."""
    return "." in site or site.startswith("hook_")


def layer_of(name: str) -> int | None:
    """The block index in a hook name (``None`` for model-level hooks such as ``hook_embed``)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def memory_hooks(model, layer: int) -> list[str]:
    """Every hook holding layer ``layer``'s memory at a position: its ``hook_state*`` hooks, or,
    for a layer with no recurrent state but with keys/values (attention), ``hook_k`` and ``hook_v``."""
    from probe.mixers import MIXERS

    prefix = f"blocks.{layer}."
    names = [n for n in model.hook_dict if n.startswith(prefix) and "hook_state" in n]
    mixer = MIXERS.get(model.cfg.layout[layer])
    if not getattr(mixer, "recurrent", False):
        kv = [f"{prefix}mixer.hook_k", f"{prefix}mixer.hook_v"]
        if all(n in model.hook_dict for n in kv):
            names += kv
    return names


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
        name = f"blocks.{layer}.hook_{site}"
        return [name] if name in model.hook_dict else []
    for part in ("mixer", "mlp"):
        name = f"blocks.{layer}.{part}.hook_{site}"
        if name in model.hook_dict:
            return [name]
    return []


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
    if "hook_state" in name:
        return True
    from probe.mixers.base import RecurrentMixer

    parent = getattr(model, "mod_dict", {}).get(name.rsplit(".", 1)[0]) if "." in name else None
    return isinstance(parent, RecurrentMixer)


def site_label(site: str) -> str:
    """A short display name for a site (a full hook name keeps its part after the layer)."""
    if is_hook_name(site):
        m = _LAYER.match(site)
        return site[m.end():] if m else site
    return site
