r"""The hook vocabulary: short site names and the hook names they stand for, in one place.

Every model probe runs (a :class:`probe.HookedLM` or the TransformerLens adapter) names its hook
points this way (TransformerLens 4 names wherever they exist)::

    hook_embed                                     [batch, pos, d_model]
    blocks.{l}.hook_resid_pre / resid_mid / resid_post
    blocks.{l}.hook_mixer_in / hook_mixer_out      (hook_attn_out aliases mixer_out for attention)
    blocks.{l}.hook_mlp_in / hook_mlp_out          (blocks with an MLP)
    blocks.{l}.mixer.hook_state[_<part>]           the carried memory after each position
    blocks.{l}.mixer.hook_<gate>                   gates, decays, q/k/v/pattern/z ...
    ln_final.hook_normalized, hook_logits

A *block site* (``resid_pre`` ...) lives on the block: ``blocks.{l}.hook_<site>``; any other short
name (``state``, ``forget``, ``pattern``) on the layer's mixer: ``blocks.{l}.mixer.hook_<site>``.
Every hook whose name contains ``hook_state`` is part of the memory, and together they are all of it.

Block variants keep these names meaningful (:mod:`probe.block`):

- parallel mixers (a layout entry ``"attn+mamba2"``): part ``p`` is the module
  ``blocks.{l}.mixer.{p}`` with its own hooks one level down (``blocks.{l}.mixer.mamba2.hook_state``,
  ``blocks.{l}.mixer.attn.hook_pattern``); ``blocks.{l}.mixer.hook_{p}_out`` is part ``p``'s output
  and ``hook_mixer_out`` their sum, what the residual stream receives.
- post-norm layers (``norm_placement[l] == "post"``): ``hook_mixer_in`` is ``resid_pre`` itself and
  ``hook_mixer_out`` the *normalised* mixer output (likewise ``mlp_in`` / ``mlp_out``), so
  ``resid_mid = resid_pre + mixer_out`` holds for every block.
"""
from __future__ import annotations

import re

#: hooks every block has, in the order its forward fires them
RESIDUAL_SITES = ("resid_pre", "mixer_in", "mixer_out", "resid_mid", "resid_post")
#: hooks of the MLP slot (blocks with an MLP)
MLP_SITES = ("mlp_in", "mlp_out")
#: TransformerLens's name of ``mixer_out`` on an attention block (both fire with the same tensor)
ATTENTION_ALIAS = "attn_out"
#: every site that lives on the block itself (``blocks.{l}.hook_<site>``)
BLOCK_SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_in", "mixer_out", ATTENTION_ALIAS) + MLP_SITES
#: the substring that marks a hook of the carried memory
STATE = "hook_state"

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def block_hook(layer: int, site: str) -> str:
    """``blocks.{layer}.hook_{site}`` for a block site (``resid_pre``, ``mlp_out`` ...)."""
    return f"blocks.{layer}.hook_{site}"


def mixer_hook(layer: int, site: str) -> str:
    """``blocks.{layer}.mixer.hook_{site}`` (``state``, ``state_c``, ``forget``, ``pattern`` ...)."""
    return f"blocks.{layer}.mixer.hook_{site}"


def mlp_hook(layer: int, site: str) -> str:
    """``blocks.{layer}.mlp.hook_{site}`` (the MLP slot's own hooks, e.g. RWKV's ``state_shift``)."""
    return f"blocks.{layer}.mlp.hook_{site}"


def act_name(site: str, layer: int | None = None) -> str:
    """Full hook name for a short site name: ``act_name("resid_post", 2)`` -> ``blocks.2.hook_resid_post``.

    Block sites live on the block; anything else (``state``, ``state_conv``, ``forget``, ``pattern``...)
    on its mixer. With ``layer=None`` the name is returned unchanged (a full name or ``hook_embed``).
    """
    if layer is None:
        return site
    site = site.removeprefix("hook_")
    return block_hook(layer, site) if site in BLOCK_SITES else mixer_hook(layer, site)


def residual_before(layer: int) -> str:
    """The residual stream entering layer ``layer`` (``0 .. n_layers``): ``blocks.0.hook_resid_pre`` for 0
    (the embedding), else ``blocks.{layer - 1}.hook_resid_post``."""
    return block_hook(0, "resid_pre") if layer == 0 else block_hook(layer - 1, "resid_post")


def is_hook_name(site: str) -> bool:
    """True for a full hook name (``blocks.0.hook_resid_pre``, ``hook_embed``) rather than a short site."""
    return "." in site or site.startswith("hook_")


def is_state_hook(name: str) -> bool:
    """True for a hook of the carried memory (every ``hook_state*``)."""
    return STATE in name


def layer_of(name: str) -> int | None:
    """The block index in a hook name (``None`` for model-level hooks such as ``hook_embed``)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def site_label(site: str) -> str:
    """A short display name for a site (a full hook name keeps its part after the layer)."""
    if is_hook_name(site):
        m = _LAYER.match(site)
        return site[m.end():] if m else site
    return site
