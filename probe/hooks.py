r"""The hook vocabulary: short site names and the hook names they stand for, in one place.

Every model probe runs (a :class:`probe.HookedLM` or the TransformerLens adapter) names its hook
points this way (TransformerLens 4 names wherever they exist)::

    hook_embed                                     [batch, pos, d_model]
    blocks.{l}.hook_resid_pre / resid_mid / resid_post
    blocks.{l}.hook_mixer_in / hook_mixer_out      (hook_attn_out aliases mixer_out for attention)
    blocks.{l}.hook_mlp_in / hook_mlp_out          (blocks with an MLP)
    blocks.{l}.mixer.hook_state[_<part>]           the carried memory after each position
    blocks.{l}.mixer.hook_<gate>                   gates, decays, q/k/v/pattern/z ...
    blocks.{l}.shared.hook_<site>                  a layer's use of a shared block (probe.shared_block)
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

TransformerLens 4 aliases (:data:`TL_ALIASES`). TransformerLens 4 (4.3) names its recurrent mixers'
hooks after its bridges (``SSMMixerBridge`` for Mamba-1, ``SSM2MixerBridge`` for Mamba-2 and the Mamba-2
layers of its hybrids, ``GatedDeltaNetBridge`` in the ``linear_attn`` slot of Qwen3-Next and OLMo
hybrid). A :class:`probe.HookedLM` answers to those names wherever one names the same tensor as a probe
hook: in its caches (``cache[alias]``), in ``hooks()`` / ``run_with_hooks`` / ``add_hook`` and in
``names_filter`` lists. A hook registered under an alias is attached to probe's hook point
(``hook.name`` is probe's name); a predicate ``names_filter`` sees probe's names only. The
correspondence (``l`` the layer)::

    TransformerLens 4                               probe
    Mamba-1, Mamba-2 (mixer slot)
      blocks.l.mixer.hook_in                        blocks.l.hook_mixer_in
      blocks.l.mixer.hook_out, .hook_ssm_out        blocks.l.hook_mixer_out
      blocks.l.mixer.hook_ssm_state                 blocks.l.mixer.hook_state             (1)
    Gated DeltaNet (gdn; TL's linear_attn slot, and probe's mixer slot)
      blocks.l.linear_attn.hook_q / k / v / beta / log_decay / gate_input / recurrence_out
                                                    blocks.l.mixer.hook_<same>
      blocks.l.{linear_attn,mixer}.hook_ssm_state   blocks.l.mixer.hook_state             (1)
      blocks.l.{linear_attn,mixer}.hook_ssm_C / _B / _decay / _write
                                                    blocks.l.mixer.hook_q / k / log_decay / beta
      blocks.l.linear_attn.hook_in, .hook_linear_attn_in          blocks.l.hook_mixer_in
      blocks.l.linear_attn.hook_out, .hook_linear_attn_out,
        blocks.l.{linear_attn,mixer}.hook_ssm_out                 blocks.l.hook_mixer_out
    Falcon-H1 (attn+mamba2 parallel layers; TL's mamba slot)
      blocks.l.mamba.hook_ssm_state                 blocks.l.mixer.mamba2.hook_state      (1)

(1) TL fills ``hook_ssm_state`` only on its opt-in ``eager_scan`` path, and an edit there changes only
that position's readout; probe's is always available and an edit propagates to every later position.
Layout: probe puts the position on axis 1 in every hook, so Mamba-1's state is ``[b, pos, d_inner, N]``
where TL's is ``[b, d_inner, pos, N]``; Mamba-2 (``[b, pos, H, P, N]``) and Gated DeltaNet
(``[b, pos, Hv, K, V]``) match TL's.

Not aliased, because probe holds no such tensor: ``hook_in_proj`` (the projection before its split),
``hook_conv`` (the convolution before its SiLU: probe's ``hook_input``, ``hook_B``, ``hook_C`` are after
it), ``hook_x_proj`` (``[dt; B; C]`` unsplit: ``hook_B``, ``hook_C``), ``hook_dt_proj`` / ``hook_ssm_dt``
(before the softplus; probe's ``hook_dt`` is after it), ``hook_ssm_write`` of Mamba (``dt x B^T``, never
materialised), Mamba-2's ``inner_norm.hook_in`` (probe's ``hook_y`` with the heads unflattened,
``[b, pos, H, P]``), Falcon-H1's ``mamba.hook_out`` / ``attn.hook_out`` (probe's
``mixer.hook_mamba2_out`` / ``mixer.hook_attn_out`` include the folded output multipliers, TL's do not:
:mod:`probe.io.convert_falcon_h1`), Gated DeltaNet's ``hook_{q,k,v}_pre_conv`` and ``hook_beta_logit``.
The attention and block names (``hook_resid_pre``, ``attn.hook_pattern`` ...) are TransformerLens's already; TL has
no hooks inside RWKV, xLSTM, LSTM, QRNN, LMU, HGRN2 or RG-LRU (its RecurrentGemma bridge hooks blocks
only).
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
    """``blocks.{layer}.mixer.hook_{site}`` (``state``, ``state_c``, ``forget``, ``pattern`` ...); a site
    ``"{part}.{name}"`` of parallel mixers is ``blocks.{layer}.mixer.{part}.hook_{name}``
    (``"mamba2.state"`` -> ``blocks.3.mixer.mamba2.hook_state``)."""
    part, _, name = site.rpartition(".")
    return f"blocks.{layer}.mixer.{part}{'.' if part else ''}hook_{name}"


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


# -- TransformerLens 4 aliases (module docstring) ----------------------------------------------------
_SSM_ALIASES = {"mixer.hook_in": "hook_mixer_in", "mixer.hook_out": "hook_mixer_out",
                "mixer.hook_ssm_out": "hook_mixer_out", "mixer.hook_ssm_state": "mixer.hook_state"}
_GDN_SSM = {"hook_ssm_state": "state", "hook_ssm_C": "q", "hook_ssm_B": "k", "hook_ssm_decay": "log_decay",
            "hook_ssm_write": "beta"}
_GDN_ALIASES = {
    **{f"linear_attn.hook_{n}": f"mixer.hook_{n}"
       for n in ("q", "k", "v", "beta", "log_decay", "gate_input", "recurrence_out")},
    **{f"{slot}.{tl}": f"mixer.hook_{ours}" for slot in ("linear_attn", "mixer") for tl, ours in _GDN_SSM.items()},
    **{f"linear_attn.{n}": "hook_mixer_in" for n in ("hook_in", "hook_linear_attn_in")},
    **{f"linear_attn.{n}": "hook_mixer_out" for n in ("hook_out", "hook_linear_attn_out", "hook_ssm_out")},
    "mixer.hook_ssm_out": "hook_mixer_out",
}
#: TransformerLens 4's hook names -> probe's, relative to ``blocks.{l}.``, per layout entry (the table above)
TL_ALIASES: dict[str, dict[str, str]] = {"mamba": _SSM_ALIASES, "mamba2": _SSM_ALIASES, "gdn": _GDN_ALIASES,
                                         "attn+mamba2": {"mamba.hook_ssm_state": "mixer.mamba2.hook_state"}}


def tl_aliases(layout, hook_names) -> dict[str, str]:
    """``{TransformerLens 4 name: probe hook name}`` for a model of ``layout`` (one mixer name per layer)
    whose hooks are ``hook_names``; an alias is offered only where its target hook exists."""
    names = set(hook_names)
    return {f"blocks.{layer}.{alias}": f"blocks.{layer}.{target}"
            for layer, mixer in enumerate(layout) for alias, target in TL_ALIASES.get(mixer, {}).items()
            if f"blocks.{layer}.{target}" in names}
